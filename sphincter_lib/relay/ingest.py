"""TCP sources: a ``StreamServer`` handler that feeds one room from one connection.

Per connection: the opening (:mod:`.greeting`: TLS, with ``--source-proxy-protocol`` the PROXY
header a trusted proxy sends first — from then on the source *is* the client it names, for the
per-address cap, the logs and ``/api/rooms`` — and the preamble lines ``AUTH <TOKEN>``,
``RESUME <CODE> <KEY>``, ``SESSIONS``, ``SESSION <SID>``), then claim the named room of that
token, resume the room of that code, or open a new room — or answer ``ERROR <reason>`` and
close; session rooms' links go to ``tunnel.TunnelHub``. Send the banner ``ROOM <CODE>`` (and
``RESUME <CODE> <KEY>`` when the room can be resumed), then read → frame → publish until the
source closes or a newer source replaces it. The room decides what its source's leaving means
(:meth:`Room.source_left`). The handler owns its socket and closes it in ``finally``.
"""

import logging
import socket
import time

import gevent

from ..proto.addresses import format_peer, is_trusted
from ..errors import RoomError
from ..logformat import log_crash
from .security import ConnectionCaps, check_auth_line
from ..proto.framing import is_text, make_framer
from ..proto.proxyproto import HeaderReader
from ..tcp import keepalive
from .greeting import Greeter, TcpSource

logger = logging.getLogger("sphincter.relay.ingest")
_crashed = log_crash(logger, "source greenlet")


class SourceHandler:
    """Callable for ``gevent.server.StreamServer``: ``handler(sock, address)``."""

    #: bytes asked of each ``recv``; large reads keep per-byte work low in raw mode
    read_size = 256 * 1024

    #: bytes of short reads after which the reader yields (``sleep(0)``) all the same
    yield_bytes = 64 * 1024
    #: most write-back bytes written to a source at once (whole messages; one bigger goes alone)
    write_batch = 64 * 1024


    def __init__(self, registry, framing="lines", max_message_bytes=1 << 20, banner=True,
                 tokens=(), max_per_ip=0, handshake_timeout=10.0, idle_timeout=0, tls=False,
                 proxy_protocol=False, trusted_proxies=()):
        self.registry = registry
        self.stats = registry.stats
        self.framing = framing
        self.max_message_bytes = max_message_bytes
        self.banner = banner
        self.tokens = tuple(tokens)         # non-empty: sources must send 'AUTH <token>' first
        self.caps = ConnectionCaps(max_per_ip)
        self.idle_timeout = idle_timeout    # 0: a source may stay silent forever
        #: read a PROXY protocol header from peers in ``trusted_proxies`` (they must send one;
        #: other peers must not)
        self.proxy_protocol = proxy_protocol
        self.trusted_proxies = tuple(trusted_proxies)
        self._live = {}          # source -> room, for shutdown
        #: TLS, the PROXY header, the preamble lines (relay.greeting)
        self.greeter = Greeter(registry, tokens, handshake_timeout, tls, proxy_protocol)
        self._tunnels = None

    @property
    def tunnels(self):
        """Session rooms (``tunnel.TunnelHub``), None with ``--sessions off``."""
        return self._tunnels

    @tunnels.setter
    def tunnels(self, hub):
        self._tunnels = hub
        self.greeter.sessions = hub is not None
        self.greeter.named_sessions = hub is not None and hub.rooms.named_count > 0

    @property
    def active(self):
        return len(self._live)

    def __call__(self, sock, address, forwarded=False):
        """``forwarded``: a source link over WebSocket (``wssource``), ``address`` from a trusted
        proxy's ``X-Forwarded-For``: it sends no PROXY header."""
        peer = who = format_peer(address)
        host = address[0] if isinstance(address, tuple) else str(address)
        slot, first = None, None
        try:
            if self.proxy_protocol and not forwarded and is_trusted(host, self.trusted_proxies):
                header = self.greeter.read_start(sock, HeaderReader(expect=True), time.monotonic())
                if header.error:
                    self.greeter.refuse(sock, peer, header.error, detail=header.detail)
                    return
                first = header.rest
                if header.source is not None:       # else LOCAL/UNKNOWN: the proxy itself
                    host, peer = header.source[0], format_peer(header.source)
                    who = "%s via %s" % (peer, who)
            over = self.tunnels is not None and self.caps.full(host)   # (data links are exempt)
            slot = self.caps.acquire(host, force=over)
            if slot is None:
                self.stats.rejected["source", "too many connections"] += 1
                logger.warning("source %s refused: too many connections from its address", who)
                self.greeter.send_line(sock, b"ERROR too many connections\n")
            elif self._serve(sock, peer, who, first, slot, over):
                slot = None            # a session's data link gave its slot back (see _session)
        except OSError as exc:           # the connection broke (reset, TLS garbage): not a bug
            logger.info("source %s: connection broke: %s", who, exc.strerror or exc)
        except Exception:
            logger.error("source %s: handler crashed", who, exc_info=True)
        finally:
            self.caps.release(slot)
            sock.close()

    def _join(self, source, greeting):
        """The room ``source`` feeds, from its preamble: a named room (AUTH with its token), its old
        room (RESUME), or a new one. Returns (room, how) or raises RoomError."""
        replaced, how = None, "opened"
        room = None
        if greeting.token is not None:
            claimed = self.registry.claim(greeting.token, source)
            if claimed is not None:
                (room, replaced), how = claimed, "claimed"
            elif not (self.tokens and check_auth_line(b"AUTH " + greeting.token, self.tokens)):
                raise RoomError("unauthorized")
        if room is None and greeting.resume is not None:
            room, replaced = self.registry.resume(greeting.resume[0], greeting.resume[1], source)
            how = "resumed"
        if room is None:
            room = self.registry.open(source)
        if replaced is not None:
            how += ", replacing %s" % replaced.peer
            replaced.hang_up("replaced by a newer source")
        return room, how

    def _serve(self, sock, peer, who, first=None, slot=None, over=False):
        """Serve one source; True if it released its per-address ``slot`` (a data link).
        ``over``: its address is at ``--max-sources-per-ip`` (only a data link may go on)."""
        greeting = self.greeter.greet(sock, who, first)
        if greeting is None:
            return False
        if over and not greeting.sid:
            self.stats.rejected["source", "too many connections"] += 1
            logger.warning("source %s refused: too many connections from its address", who)
            self.greeter.send_line(sock, b"ERROR too many connections\n")
            return False
        if greeting.sessions or greeting.sid:
            return self._session(sock, peer, who, greeting, slot)
        source = TcpSource(sock, peer, self.greeter.write_timeout)
        try:
            room, how = self._join(source, greeting)
        except RoomError as exc:
            self.greeter.refuse(sock, who, exc.reason)
            return
        self._live[source] = room
        keepalive(sock, idle=60, interval=10, probes=6)   # a vanished source: ~2 min
        logger.info("room %s %s by %s%s", room.code, how, who, " (named)" if room.named else "")
        end = "source closed"
        writer = None
        try:
            if self.banner:
                lines = b"ROOM %s\n" % room.code.encode()
                if room.resume_key:
                    lines += b"RESUME %s %s\n" % (room.code.encode(), room.resume_key.encode())
                if room.write_key:
                    lines += b"WRITE %s\n" % room.write_key.encode()
                source.send(lines)
            if room.write_key:
                writer = gevent.spawn(self._write_back, sock, room, source, peer)
                writer.link_exception(_crashed)
            if self.idle_timeout:
                sock.settimeout(self.idle_timeout)
            rest = greeting.rest
            if self.tunnels is None and not rest:     # (no preamble was read: look at the start)
                rest = sock.recv(room.read_budget(self.read_size))     # (flow control: as _pump)
                if rest.startswith(b"SESSION"):
                    end = "refused: sessions are off"
                    source.send(b"ERROR sessions are off\n")
                    return False
            if not self._pump(sock, room, source, rest):
                end = "replaced by a newer source"
                source.hung_up()
        except socket.timeout:
            end = "idle for %ss" % self.idle_timeout
            source.send(b"ERROR idle timeout\n")
        except OSError as exc:
            end = "source broke (%s)" % (exc.strerror or exc)
        finally:
            if writer is not None:
                writer.kill(block=False)
            self._live.pop(source, None)
            if self.registry.shutting_down:
                end = "server shutting down"
            room.source_left(source)
            after = {"waiting": "waiting for its source", "closed": "closed"}.get(room.state, room.state)
            logger.info("room %s %s: %s; peer=%s messages=%d bytes=%d peak_subscribers=%d slow_cutoffs=%d",
                        room.code, after, end, peer, room.messages, room.bytes,
                        room.peak_subscribers, room.slow_cutoffs)

    def _session(self, sock, peer, who, greeting, slot):
        """A session room's control link (``SESSIONS``) or a session's data link
        (``SESSION <SID>``): ``tunnel.TunnelHub`` serves it. A data link does not count against
        ``--max-sources-per-ip`` (it carries a 128-bit session id the relay just drew)."""
        if self.tunnels is None:
            self.greeter.refuse(sock, who, "sessions are off")
            return False
        if greeting.sid:
            self.caps.release(slot)
            self.tunnels.serve_data(sock, who, greeting.sid, greeting.rest)
            return True
        source = TcpSource(sock, peer, self.greeter.write_timeout)
        sroom, how = None, "opened"
        if greeting.token is not None:
            claimed = self.tunnels.rooms.claim(greeting.token, source)
            if claimed is not None:
                (sroom, replaced), how = claimed, "claimed"
                if replaced is not None:
                    how += ", replacing %s" % replaced.peer
                    replaced.hang_up("replaced by a newer source")
            elif not (self.tokens and check_auth_line(b"AUTH " + greeting.token, self.tokens)):
                self.greeter.refuse(sock, who, "unauthorized")
                return False
        if sroom is None and not self.tunnels.ephemeral:
            self.greeter.refuse(sock, who, "sessions are off")
            return False
        self._live[source] = None
        try:
            self.tunnels.serve_control(sock, source, who, sroom, how)
        finally:
            self._live.pop(source, None)
        return False

    def _pump(self, sock, room, source, first=b""):
        """Read → frame → publish until the source closes (True) or is replaced (False).

        The reader yields to the event loop after a bounded amount of work (a
        gevent socket's ``recv`` only yields when it would block, so a source
        that keeps its socket readable would otherwise hold the loop), or,
        while its room's fastest subscriber is far behind, waits for it: the
        source is then not read and TCP flow control slows it down. After a
        full read (more is surely waiting) it yields until the loop is idle —
        every other connection's pending I/O first: a blasting source then
        costs its neighbours about one read's work of latency (1 ms for 256 KiB
        of lines), where ``sleep(0)`` let it run again for up to the switch
        interval before the loop polled. Short reads yield every
        ``yield_bytes`` (a paced source's next ``recv`` blocks, and yields, anyway).
        """
        framer = make_framer(self.framing, self.max_message_bytes)
        raw = self.framing == "raw"
        publish = room.publish
        recv = sock.recv
        size = room.read_budget(self.read_size)
        must_wait, wait, idle, sleep = room.source_must_wait, room.wait_for_readers, gevent.idle, gevent.sleep
        budget = self.yield_bytes
        data = first
        while True:
            if data:
                if room.source is not source:
                    return False
                for message in framer.feed(data):
                    publish(message, False if raw else is_text(message))
                budget -= len(data)
                if must_wait():
                    wait()
                    budget = self.yield_bytes
                elif len(data) >= size:
                    idle()
                    budget = self.yield_bytes
                elif budget <= 0:
                    sleep(0)
                    budget = self.yield_bytes
            data = recv(size)
            if not data:
                break
        if room.source is not source:
            return False
        for message in framer.eof():
            publish(message, False if raw else is_text(message))
        return True

    def _write_back(self, sock, room, source, peer):
        """Write the room's write-back messages to its source, whole, in order, while it is the
        room's source. A source that does not read blocks this greenlet (not the relay): the queue
        fills and the room's writers are paused."""
        outbox, stats = room.outbox, self.stats
        try:
            while room.source is source and not outbox.closed:
                data = outbox.take(self.write_batch)
                if data is None:
                    outbox.wait()
                    continue
                sock.sendall(data)
                if room.source is not source:
                    return                     # replaced meanwhile: the next source gets them
                stats.writes_out += outbox.done()
                gevent.sleep(0)                # a source that reads fast must not hold the loop
        except OSError as exc:                 # incl. socket.timeout (--source-idle-timeout)
            logger.info("source %s: write-back stopped: %s", peer, exc)

    def shutdown(self, reason="server shutting down"):
        """Tell every live source ``ERROR <reason>`` and end its connection."""
        for source in list(self._live):
            source.hang_up(reason)
