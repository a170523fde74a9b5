"""TCP sources: a ``StreamServer`` handler that feeds one room from one connection.

Per connection: with ``--source-proxy-protocol``, read the PROXY protocol header a trusted
proxy sends first (:mod:`.proxyproto`; from then on the source *is* the client it names, for
the per-address cap, the logs and ``/api/rooms``), or make sure a direct peer sends none. Read
the preamble (``AUTH <TOKEN>`` and/or ``RESUME <CODE>
<KEY>`` when the configuration expects them, see :mod:`.preamble`), then
claim the named room of that token, resume the room of that code, or open a
new room — or answer ``ERROR <reason>`` and close. Send the banner ``ROOM
<CODE>`` (and ``RESUME <CODE> <KEY>`` when the room can be resumed), then read
→ frame → publish until the source closes or a newer source replaces it. The
room decides what its source's leaving means (:meth:`Room.source_left`). The
handler owns its socket and closes it in ``finally``.
"""

import logging
import socket
import time

import gevent
from gevent.exceptions import ConcurrentObjectUseError

from ..proto.addresses import format_peer, is_trusted
from ..errors import RoomError
from ..logformat import log_crash
from .security import ConnectionCaps, check_auth_line
from ..proto.framing import is_text, make_framer
from ..proto.preamble import Preamble
from ..proto.proxyproto import HeaderReader
from ..rooms.interface import Source
from ..tcp import keepalive

logger = logging.getLogger("sphincter.relay.ingest")
_crashed = log_crash(logger, "source greenlet")


class TcpSource(Source):
    """A source connection as its room sees it: an address, and a way to write to it."""

    def __init__(self, sock, peer, write_timeout=5.0):
        Source.__init__(self, peer)
        self.sock = sock
        self.write_timeout = write_timeout
        self._hanging = None                 # the greenlet writing its ERROR line (hang_up)

    def send(self, data):
        """Write ``data`` within ``write_timeout`` seconds; False if it could not be written."""
        with gevent.Timeout(self.write_timeout, False):
            try:
                self.sock.sendall(data)
                return True
            except (OSError, ConcurrentObjectUseError):   # (the write-back greenlet is writing)
                pass
        return False

    def hang_up(self, reason):
        """In a greenlet of its own: ``ERROR <reason>``, then end the connection (wakes its reader)."""
        self._hanging = gevent.spawn(self._hang_up, b"ERROR %s\n" % reason.encode())
        self._hanging.link_exception(_crashed)

    def hung_up(self):
        """Wait (at most ``write_timeout``) until the ERROR line of :meth:`hang_up` is written: its
        reader, woken in the same loop turn, must not close the socket first."""
        if self._hanging is not None:
            self._hanging.join(self.write_timeout)

    def _hang_up(self, line):
        self.send(line)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class SourceHandler:
    """Callable for ``gevent.server.StreamServer``: ``handler(sock, address)``."""

    #: bytes asked of each ``recv``; large reads keep per-byte work low in raw mode
    read_size = 256 * 1024
    #: seconds allowed for writing a banner or an ERROR line to a source
    write_timeout = 5.0

    #: longest AUTH or RESUME line accepted (bytes, newline included)
    max_auth_line = 1024
    #: seconds to wait for an AUTH or RESUME line that may or may not come (named rooms, grace
    #: period) before a silent source gets a new room; lines sent right after connecting are
    #: there long before
    preamble_wait = 1.0
    #: bytes of short reads after which the reader yields (``sleep(0)``) all the same
    yield_bytes = 64 * 1024
    #: most write-back bytes written to a source at once (whole messages; one bigger goes alone)
    write_batch = 64 * 1024

    #: session rooms (``tunnel.TunnelHub``), None with ``--sessions off``
    tunnels = None

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
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout    # 0: a source may stay silent forever
        self.tls = tls
        #: read a PROXY protocol header from peers in ``trusted_proxies`` (they must send one;
        #: other peers must not)
        self.proxy_protocol = proxy_protocol
        self.trusted_proxies = tuple(trusted_proxies)
        self._live = {}          # source -> room, for shutdown

    @property
    def active(self):
        return len(self._live)

    def __call__(self, sock, address):
        peer = who = format_peer(address)
        host = address[0] if isinstance(address, tuple) else str(address)
        slot, first = None, None
        try:
            if self.proxy_protocol and is_trusted(host, self.trusted_proxies):
                header = self._read_start(sock, HeaderReader(expect=True), time.monotonic())
                if header.error:
                    self._refuse(sock, peer, header.error, detail=header.detail)
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
                self._send(sock, b"ERROR too many connections\n")
            elif self._serve(sock, peer, who, first, slot, over):
                slot = None            # a session's data link gave its slot back (see _session)
        except OSError as exc:           # the connection broke (reset, TLS garbage): not a bug
            logger.info("source %s: connection broke: %s", who, exc.strerror or exc)
        except Exception:
            logger.error("source %s: handler crashed", who, exc_info=True)
        finally:
            self.caps.release(slot)
            sock.close()

    def _greet(self, sock, peer, first=None):
        """TLS handshake, no PROXY header from a direct peer (``--source-proxy-protocol``; ``first``
        is None), and the preamble lines (``AUTH``, ``RESUME``), within ``handshake_timeout``.
        ``first``: what followed a trusted proxy's header.

        Returns a :class:`~sphincter_lib.proto.preamble.Result` (its ``rest`` is the
        start of the source's data), or None if the source is to be dropped."""
        timer = gevent.Timeout.start_new(self.handshake_timeout) if self.handshake_timeout else None
        secured = not self.tls
        try:
            if self.tls:
                sock.do_handshake()
                secured = True
        except gevent.Timeout as t:
            if t is not timer:
                raise
            return self._refuse(sock, peer, "handshake timeout", secured)
        except OSError as exc:       # includes ssl.SSLError
            logger.info("source %s: handshake failed: %s", peer, exc)
            return None
        finally:
            if timer is not None:
                timer.close()
        started = time.monotonic()
        preamble = Preamble(require_auth=bool(self.tokens), accept_auth=self.registry.named_count > 0,
                            accept_resume=self.registry.limits.grace > 0, max_line=self.max_auth_line,
                            accept_sessions=True)
        try:
            if first is None and self.proxy_protocol:     # a direct peer: its bytes are its own
                direct = self._read_start(sock, HeaderReader(expect=False), started)
                if direct.error:
                    return self._refuse(sock, peer, direct.error, detail=direct.detail)
                first = direct.rest
            if not (preamble.require_auth or preamble.accept_auth or preamble.accept_resume
                    or self.tunnels is not None):
                return (first and preamble.feed(first)) or preamble.timeout()   # all of it is data
            result = self._read_start(sock, preamble, started, first)
        except OSError as exc:
            logger.info("source %s: connection failed before its data: %s", peer, exc)
            return None
        if result.error:
            return self._refuse(sock, peer, result.error, secured)
        return result

    def _read_start(self, sock, parser, since, first=b""):
        """Feed ``parser`` (a :class:`Preamble`, a PROXY header's :class:`HeaderReader`) the
        connection's first bytes, ``first`` then what arrives, until it decides: what may or may
        not come is waited for until ``preamble_wait`` after ``since``, what must come
        (``parser.required_pending``) up to ``handshake_timeout`` after it."""
        if first:
            result = parser.feed(first)
            if result is not None:
                return result
        deadline = since + (self.handshake_timeout or 3600.0)
        soft = since + self.preamble_wait
        try:
            while True:
                now = time.monotonic()
                if parser.required_pending:
                    soft = now + self.preamble_wait     # optional lines may follow the AUTH line
                    limit = deadline
                else:
                    limit = min(deadline, soft)
                if limit <= now:
                    return parser.timeout()
                sock.settimeout(limit - now)
                try:
                    data = sock.recv(getattr(parser, "wanted", self.max_auth_line))
                except socket.timeout:
                    return parser.timeout()
                result = parser.feed(data)
                if result is not None:
                    return result
        finally:
            sock.settimeout(None)

    def _refuse(self, sock, peer, why, secured=True, detail=""):
        self.stats.rejected["source", why] += 1
        logger.warning("source %s refused: %s%s", peer, why, " (%s)" % detail if detail else "")
        if secured:                  # no ERROR line into a half-done TLS handshake
            self._send(sock, b"ERROR %s\n" % why.encode())
        return None

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
        greeting = self._greet(sock, who, first)
        if greeting is None:
            return False
        if over and not greeting.sid:
            self.stats.rejected["source", "too many connections"] += 1
            logger.warning("source %s refused: too many connections from its address", who)
            self._send(sock, b"ERROR too many connections\n")
            return False
        if greeting.sessions or greeting.sid:
            return self._session(sock, peer, who, greeting, slot)
        source = TcpSource(sock, peer, self.write_timeout)
        try:
            room, how = self._join(source, greeting)
        except RoomError as exc:
            self._refuse(sock, who, exc.reason)
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
            self._refuse(sock, who, "sessions are off")
            return False
        if greeting.sid:
            self.caps.release(slot)
            self.tunnels.serve_data(sock, who, greeting.sid, greeting.rest)
            return True
        source = TcpSource(sock, peer, self.write_timeout)
        sroom, how = None, "opened"
        if greeting.token is not None:
            claimed = self.tunnels.rooms.claim(greeting.token, source)
            if claimed is not None:
                (sroom, replaced), how = claimed, "claimed"
                if replaced is not None:
                    how += ", replacing %s" % replaced.peer
                    replaced.hang_up("replaced by a newer source")
            elif not (self.tokens and check_auth_line(b"AUTH " + greeting.token, self.tokens)):
                self._refuse(sock, who, "unauthorized")
                return False
        if sroom is None and not self.tunnels.ephemeral:
            self._refuse(sock, who, "sessions are off")
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

    def _send(self, sock, data):
        """An ``ERROR`` line to a connection that has no room (yet)."""
        TcpSource(sock, "", self.write_timeout).send(data)

    def shutdown(self, reason="server shutting down"):
        """Tell every live source ``ERROR <reason>`` and end its connection."""
        for source in list(self._live):
            source.hang_up(reason)
