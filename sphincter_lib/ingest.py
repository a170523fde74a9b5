"""TCP sources: a ``StreamServer`` handler that turns one connection into one room.

Per connection: open a room (or answer ``ERROR <reason>`` and close), send the
banner ``ROOM <CODE>``, then read → frame → publish until the source closes.
The handler owns its socket and closes it in ``finally``.
"""

import logging
import socket

import gevent

from .errors import RoomError
from .security import ConnectionCaps, check_auth_line
from .framing import is_text, make_framer
from .rooms import SOURCE_CLOSED

logger = logging.getLogger(__name__)


def format_peer(address):
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return ("[%s]:%d" if ":" in host else "%s:%d") % (host, address[1])
    return str(address)


def _keepalive(sock, idle=60, interval=10, probes=6):
    """Detect sources that vanish without a FIN (about idle + interval * probes seconds)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    except (OSError, AttributeError):
        pass


class SourceHandler:
    """Callable for ``gevent.server.StreamServer``: ``handler(sock, address)``."""

    #: bytes asked of each ``recv``; large reads keep per-byte work low in raw mode
    read_size = 256 * 1024
    #: seconds allowed for writing a banner or an ERROR line to a source
    write_timeout = 5.0

    #: longest AUTH line accepted (bytes, newline included)
    max_auth_line = 1024

    def __init__(self, registry, framing="lines", max_message_bytes=1 << 20, banner=True,
                 tokens=(), max_per_ip=0, handshake_timeout=10.0, idle_timeout=0, tls=False):
        self.registry = registry
        self.stats = registry.stats
        self.framing = framing
        self.max_message_bytes = max_message_bytes
        self.banner = banner
        self.tokens = tuple(tokens)         # non-empty: sources must send 'AUTH <token>' first
        self.caps = ConnectionCaps(max_per_ip)
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout    # 0: a source may stay silent forever
        self.tls = tls
        self._live = {}          # room -> socket, for shutdown

    @property
    def active(self):
        return len(self._live)

    def __call__(self, sock, address):
        peer = format_peer(address)
        slot = self.caps.acquire(address[0] if isinstance(address, tuple) else str(address))
        try:
            if slot is None:
                self.stats.rejected["source", "too many connections"] += 1
                logger.warning("source %s refused: too many connections from its address", peer)
                self._send(sock, b"ERROR too many connections\n")
            else:
                self._serve(sock, peer)
        except Exception:
            logger.error("source %s: handler crashed", peer, exc_info=True)
        finally:
            self.caps.release(slot)
            sock.close()

    def _greet(self, sock, peer):
        """TLS handshake and AUTH line, within ``handshake_timeout``.

        Returns the bytes the source sent after its AUTH line (the start of its
        stream), or None if the source is to be dropped."""
        timer = gevent.Timeout.start_new(self.handshake_timeout) if self.handshake_timeout else None
        secured = not self.tls
        try:
            if self.tls:
                sock.do_handshake()
                secured = True
            if not self.tokens:
                return b""
            buf = b""
            while b"\n" not in buf and len(buf) < self.max_auth_line:
                data = sock.recv(self.max_auth_line - len(buf))
                if not data:
                    break
                buf += data
            line, nl, rest = buf.partition(b"\n")
            if nl and check_auth_line(line, self.tokens):
                return rest
            why = "unauthorized"
        except gevent.Timeout as t:
            if t is not timer:
                raise
            why = "auth timeout" if self.tokens else "handshake timeout"
        except OSError as exc:       # includes ssl.SSLError
            logger.info("source %s: handshake failed: %s", peer, exc)
            return None
        finally:
            if timer is not None:
                timer.close()
        self.stats.rejected["source", why] += 1
        logger.warning("source %s refused: %s", peer, why)
        if secured:                  # no ERROR line into a half-done TLS handshake
            self._send(sock, b"ERROR %s\n" % why.encode())
        return None

    def _serve(self, sock, peer):
        first = self._greet(sock, peer)
        if first is None:
            return
        try:
            room = self.registry.open(peer)
        except RoomError as exc:
            self.stats.rejected["source", exc.reason] += 1
            logger.warning("source %s refused: %s", peer, exc.reason)
            self._send(sock, b"ERROR %s\n" % exc.reason.encode())
            return
        self._live[room] = sock
        _keepalive(sock)
        logger.info("room %s opened by %s", room.code, peer)
        how = "source closed"
        try:
            if self.banner:
                self._send(sock, b"ROOM %s\n" % room.code.encode())
            if self.idle_timeout:
                sock.settimeout(self.idle_timeout)
            self._pump(sock, room, first)
        except socket.timeout:
            how = "idle for %ss" % self.idle_timeout
            self._send(sock, b"ERROR idle timeout\n")
        except OSError as exc:
            how = "source broke (%s)" % (exc.strerror or exc)
        finally:
            self._live.pop(room, None)
            if self.registry.shutting_down:
                how = "server shutting down"
            room.close(SOURCE_CLOSED, "source closed")
            logger.info("room %s closed: %s; peer=%s messages=%d bytes=%d peak_subscribers=%d slow_cutoffs=%d",
                        room.code, how, peer, room.messages, room.bytes,
                        room.peak_subscribers, room.slow_cutoffs)

    def _pump(self, sock, room, first=b""):
        """Read → frame → publish until the source closes.

        After each read the reader yields to the event loop (a gevent socket's
        ``recv`` only yields when it would block, so a source that keeps its
        socket readable would otherwise hold the loop), or, while its room's
        fastest subscriber is far behind, waits for it: the source is then not
        read and TCP flow control slows it down. After a full read (more is
        surely waiting) it yields until the loop is idle — every other
        connection's pending I/O first: a blasting source then costs its
        neighbours about one read's work of latency (1 ms for 256 KiB of
        lines), where ``sleep(0)`` let it run again for up to the switch
        interval before the loop polled.
        """
        framer = make_framer(self.framing, self.max_message_bytes)
        raw = self.framing == "raw"
        publish = room.publish
        recv = sock.recv
        size = self.read_size
        if room.flow_control:
            # one read must not carry the lead from just under high water past the budget;
            # framing may grow bytes by half (a 1-byte line: 2 bytes read, a 3-byte frame)
            size = max(1, min(size, (room.buffer_bytes - room.high_water) * 2 // 3))
        must_wait, wait, idle, sleep = room.source_must_wait, room.wait_for_readers, gevent.idle, gevent.sleep
        data = first
        while True:
            if data:
                for message in framer.feed(data):
                    publish(message, False if raw else is_text(message))
                if must_wait():
                    wait()
                elif len(data) >= size:
                    idle()
                else:
                    sleep(0)
            data = recv(size)
            if not data:
                break
        for message in framer.eof():
            publish(message, False if raw else is_text(message))

    def _send(self, sock, data):
        with gevent.Timeout(self.write_timeout, False):
            try:
                sock.sendall(data)
            except OSError:
                pass

    def shutdown(self, reason="server shutting down"):
        """Tell every live source ``ERROR <reason>`` and end its connection."""
        line = b"ERROR %s\n" % reason.encode()
        for room, sock in list(self._live.items()):
            gevent.spawn(self._say_goodbye, sock, line)

    def _say_goodbye(self, sock, line):
        self._send(sock, line)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
