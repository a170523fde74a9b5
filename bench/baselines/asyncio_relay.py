"""Baseline: the relay a user would write instead of Sphincter, with asyncio + websockets.

Same contract as Sphincter, written the straightforward way: a TCP source gets the banner
``ROOM <CODE>\\n``; each line (``--framing lines``) or chunk (``--framing raw``) is put on every
subscriber's queue; one writer task per subscriber awaits ``ws.send()`` per message.  A subscriber
whose queued bytes exceed ``--subscriber-buffer-bytes`` is closed with 4408 (no silent loss).
``--broadcast`` uses websockets' ``broadcast()`` instead (no task per subscriber; the budget is
checked against each transport's write buffer).  Subscribers connect to ``ws://HOST:PORT/ws?room=CODE``; unknown room -> 4404, room full -> 4429,
source gone -> 4410 after the queue drains.

Run: python bench/baselines/asyncio_relay.py --tcp-port 0 --ws-port 0
Prints ``listening tcp=HOST:PORT ws=HOST:PORT`` on stderr once both are bound.
"""
import argparse
import asyncio
import logging
import secrets
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
_CLOSE = object()
log = logging.getLogger("asyncio_relay")


class Subscriber:
    def __init__(self, ws, budget):
        self.ws = ws
        self.queue = asyncio.Queue()
        self.queued_bytes = 0
        self.budget = budget
        self.cut = False

    def put(self, msg):
        if self.cut:
            return
        self.queued_bytes += len(msg)
        if self.queued_bytes > self.budget:
            self.cut = True
            self.queue.put_nowait((_CLOSE, 4408))
            return
        self.queue.put_nowait(msg)


class Room:
    def __init__(self, code):
        self.code = code
        self.subscribers = set()
        self.closed = False


class Relay:
    def __init__(self, args):
        self.args = args
        self.rooms = {}

    def new_code(self):
        while True:
            code = "".join(secrets.choice(ALPHABET) for _ in range(6))
            if code not in self.rooms:
                return code

    def publish(self, room, msg):
        if self.args.broadcast:
            # websockets' documented broadcast idiom: write now, no per-subscriber task;
            # the budget is checked on the transport's write buffer instead of a queue
            for sub in room.subscribers:
                if not sub.cut and sub.ws.transport.get_write_buffer_size() > sub.budget:
                    sub.cut = True
                    sub.queue.put_nowait((_CLOSE, 4408))
            broadcast([s.ws for s in room.subscribers if not s.cut], msg)
            return
        for sub in room.subscribers:
            sub.put(msg)

    async def handle_source(self, reader, writer):
        room = Room(self.new_code())
        self.rooms[room.code] = room
        writer.write(f"ROOM {room.code}\n".encode())
        await writer.drain()
        try:
            if self.args.framing == "raw":
                while chunk := await reader.read(65536):
                    self.publish(room, chunk)
            else:
                while line := await reader.readline():
                    line = line.rstrip(b"\r\n")
                    try:
                        self.publish(room, line.decode("utf-8"))
                    except UnicodeDecodeError:
                        self.publish(room, line)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            room.closed = True
            del self.rooms[room.code]
            for sub in room.subscribers:
                sub.queue.put_nowait((_CLOSE, 4410))
            writer.close()

    async def handle_ws(self, ws):
        query = parse_qs(urlsplit(ws.request.path).query)
        code = (query.get("room") or [""])[0].upper()
        room = self.rooms.get(code)
        if urlsplit(ws.request.path).path != "/ws" or room is None:
            await ws.close(4404, "unknown room")
            return
        if len(room.subscribers) >= self.args.max_subscribers_per_room:
            await ws.close(4429, "room full")
            return
        sub = Subscriber(ws, self.args.subscriber_buffer_bytes)
        room.subscribers.add(sub)
        try:
            while True:
                msg = await sub.queue.get()
                if type(msg) is tuple and msg[0] is _CLOSE:
                    await ws.close(msg[1])
                    return
                sub.queued_bytes -= len(msg)
                await ws.send(msg)
        except Exception:  # connection closed by the peer
            pass
        finally:
            room.subscribers.discard(sub)


async def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tcp-host", default="127.0.0.1")
    p.add_argument("--tcp-port", type=int, default=9000)
    p.add_argument("--ws-host", default="127.0.0.1")
    p.add_argument("--ws-port", type=int, default=8080)
    p.add_argument("--framing", choices=["lines", "raw"], default="lines")
    p.add_argument("--subscriber-buffer-bytes", type=int, default=1 << 20)
    p.add_argument("--max-subscribers-per-room", type=int, default=1000)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--broadcast", action="store_true",
                   help="publish with websockets.broadcast() instead of a queue+task per subscriber")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    relay = Relay(args)
    tcp = await asyncio.start_server(relay.handle_source, args.tcp_host, args.tcp_port,
                                     limit=1 << 20, backlog=1024)
    async with serve(relay.handle_ws, args.ws_host, args.ws_port, ping_interval=None,
                     compression=None, backlog=1024, max_size=1 << 16) as ws_server:
        t = tcp.sockets[0].getsockname()
        w = ws_server.sockets[0].getsockname()
        print(f"listening tcp={t[0]}:{t[1]} ws={w[0]}:{w[1]}", file=sys.stderr, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
