"""TCP sources: a ``StreamServer`` handler that turns one connection into one room.

Per connection: open a room (or answer ``ERROR <reason>`` and close), send the
banner ``ROOM <CODE>``, then read → frame → publish until the source closes.
The handler owns its socket and closes it in ``finally``.
"""

import logging
import socket

import gevent

from .errors import RoomError
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

    def __init__(self, registry, framing="lines", max_message_bytes=1 << 20, banner=True):
        self.registry = registry
        self.stats = registry.stats
        self.framing = framing
        self.max_message_bytes = max_message_bytes
        self.banner = banner
        self._live = {}          # room -> socket, for shutdown

    @property
    def active(self):
        return len(self._live)

    def __call__(self, sock, address):
        peer = format_peer(address)
        try:
            self._serve(sock, peer)
        except Exception:
            logger.error("source %s: handler crashed", peer, exc_info=True)
        finally:
            sock.close()

    def _serve(self, sock, peer):
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
            self._pump(sock, room)
        except OSError as exc:
            how = "source broke (%s)" % (exc.strerror or exc)
        finally:
            self._live.pop(room, None)
            room.close(SOURCE_CLOSED, "source closed")
            logger.info("room %s closed: %s; peer=%s messages=%d bytes=%d peak_subscribers=%d slow_cutoffs=%d",
                        room.code, how, peer, room.messages, room.bytes,
                        room.peak_subscribers, room.slow_cutoffs)

    def _pump(self, sock, room):
        framer = make_framer(self.framing, self.max_message_bytes)
        publish = room.publish
        recv = sock.recv
        size = self.read_size
        if self.framing == "raw":
            while True:
                data = recv(size)
                if not data:
                    return
                for message in framer.feed(data):
                    publish(message, False)
        while True:
            data = recv(size)
            if not data:
                break
            for message in framer.feed(data):
                publish(message, is_text(message))
        for message in framer.eof():
            publish(message, is_text(message))

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
