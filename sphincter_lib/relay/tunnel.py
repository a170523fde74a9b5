"""Session rooms, the relay's TCP side and the opening of a session (issue 20).

:class:`TunnelHub` owns the relay's session rooms (:class:`~sphincter_lib.rooms.sessions.SessionRooms`):

- ``ingest`` hands it a source connection whose first line was ``SESSIONS`` (the *control
  link*, :meth:`serve_control`: banner, then ``OPEN``/``REFUSED`` lines) or ``SESSION <SID>``
  (a *data link*, :meth:`serve_data`: handed to the waiting client, held until the session ends);
- ``web`` asks it to :meth:`open` a session for a WebSocket client: limits, ``OPEN <SID>`` on
  the control link, then wait for the agent's data link (or its ``REFUSED`` line, or the
  timeout). The splice itself is :mod:`.splice`.

Close codes: 4429 (too many sessions in the sroom, or opens from the client's address), 4503
(relay-wide cap), 4502 (refused by the agent, or no agent), 4504 (no answer in time).
"""

import logging
import secrets

import gevent
from gevent.event import AsyncResult, Event

from ..closecodes import CloseCode
from ..proto import sessionwire
from ..rooms.sessions import PER_ROOM
from ..tcp import keepalive
from .security import RateLimiter

logger = logging.getLogger("sphincter.relay.tunnel")


class Refused(Exception):
    """A session could not be opened: ``code`` and ``reason`` for the client's close frame,
    ``outcome`` for the log and metrics."""

    def __init__(self, code, reason, outcome):
        Exception.__init__(self, reason)
        self.code, self.reason, self.outcome = code, reason, outcome


class DataLink:
    """What a session's data link brings: its socket, the bytes after its ``SESSION`` line, who
    opened it; :meth:`release` ends the data link's handler (which closes the socket)."""

    def __init__(self, sock, rest, peer):
        self.sock, self.rest, self.peer = sock, rest, peer
        self.done = Event()

    def release(self):
        self.done.set()


class TunnelHub:
    #: longest control line accepted from an agent (bytes)
    max_line = 1024
    #: control lines handled before the control link's reader yields
    yield_lines = 64

    def __init__(self, rooms, stats, open_timeout=10.0, open_rate=2.0, open_burst=20, ephemeral=True):
        self.rooms = rooms
        #: False: only named session rooms (``sessions=on`` in the rooms file; ``--sessions off``)
        self.ephemeral = ephemeral
        self.stats = stats
        self.open_timeout = open_timeout
        self.opens = RateLimiter(open_rate, open_burst)
        self._pending = {}           # sid -> (sroom, AsyncResult)
        self.splices = set()         # sessions being spliced (for shutdown)

    # -- the TCP side --------------------------------------------------------------------
    def serve_control(self, sock, source, who, sroom=None, how="opened"):
        """A control link, until it ends. ``source`` writes to it (``greeting.TcpSource``);
        ``sroom``: the named session room it claimed (else a room with a new code)."""
        if sroom is None:
            sroom = self.rooms.open(source)
        keepalive(sock, idle=60, interval=10, probes=6)
        logger.info("session room %s %s by %s%s", sroom.code, how, who, " (named)" if sroom.named else "")
        end = "agent closed"
        try:
            source.send(b"ROOM %s\nWRITE %s\n%s\n" % (sroom.code.encode(), sroom.write_key.encode(),
                                                     sessionwire.SESSIONS))
            reader = sessionwire.LineReader(self.max_line)
            while sroom.source is source:
                data = sock.recv(4096)
                if not data:
                    break
                for n, line in enumerate(reader.feed(data)):
                    self._control_line(sroom, line)
                    if n % self.yield_lines == self.yield_lines - 1:
                        gevent.sleep(0)
                gevent.sleep(0)
        except sessionwire.LineTooLong as exc:
            end = "agent broke the protocol (%s)" % exc
            source.send(b"ERROR line too long\n")
        except OSError as exc:
            end = "agent broke (%s)" % (exc.strerror or exc)
        finally:
            if not self.rooms.leave(sroom, source):
                end = "replaced by a newer agent"
            else:
                for sid, (r, result) in list(self._pending.items()):
                    if r is sroom and not result.ready():
                        result.set(("refused", "agent gone"))
            state = "waiting for its agent" if sroom.named else "closed"
            logger.info("session room %s %s: %s; peer=%s sessions_opened=%d sessions_open=%d",
                        sroom.code, state, end, source.peer, sroom.opened, len(sroom.sessions))

    def _control_line(self, sroom, line):
        event = sessionwire.parse_agent_line(line)
        if event[0] == "refused":
            pending = self._pending.get(event[1])
            if pending is not None and pending[0] is sroom and not pending[1].ready():
                pending[1].set(("refused", event[2]))
        elif event[0] == "unknown":
            logger.debug("session room %s: unexpected line from the agent: %r", sroom.code, event[1][:80])

    def serve_data(self, sock, who, sid, rest):
        """A data link: hand it to its session's client and hold it until the session ends."""
        pending = self._pending.get(sid)
        if pending is None or pending[1].ready():
            logger.info("data link from %s for an unknown or expired session: closed", who)
            return
        link = DataLink(sock, rest, who)
        pending[1].set(("data", link))
        link.done.wait()

    # -- the web side ----------------------------------------------------------------------
    def open(self, sroom, ip):
        """A session of ``sroom`` for a client at ``ip``: returns ``(sid, DataLink)`` once the
        agent's data link is there; raises :class:`Refused`. The caller must :meth:`end` it."""
        if not self.opens.allow(ip):
            raise Refused(CloseCode.ROOM_FULL, "too many session opens", "rate_limited")
        refusal = self.rooms.refusal(sroom)
        if refusal is not None:
            code = CloseCode.ROOM_FULL if refusal[0] == PER_ROOM else CloseCode.RELAY_FULL
            raise Refused(code, refusal[1], "room_full" if refusal[0] == PER_ROOM else "relay_full")
        sid = secrets.token_urlsafe(16)
        result = AsyncResult()
        self._pending[sid] = (sroom, result)
        self.rooms.add(sroom, sid, result)
        try:
            control = sroom.source
            if control is None or not control.send(sessionwire.open_line(sid)):
                raise Refused(CloseCode.SERVICE_UNREACHABLE, "agent unreachable", "no_agent")
            answer = result.get(timeout=self.open_timeout)
        except gevent.Timeout:
            answer = None
        except Refused:
            self.end(sroom, sid)
            raise
        finally:
            self._pending.pop(sid, None)
        if answer is None:
            self.end(sroom, sid)
            raise Refused(CloseCode.AGENT_TIMEOUT, "agent did not answer", "timeout")
        if answer[0] == "refused":
            self.end(sroom, sid)
            raise Refused(CloseCode.SERVICE_UNREACHABLE, answer[1], "refused")
        return sid, answer[1]

    def close_all(self, code, reason):
        """Shutdown: every session's client gets ``code`` (after what was read), its data link
        is cut; every control link gets ``ERROR <reason>`` (``ingest`` does that)."""
        for splice in list(self.splices):
            splice.stop(code, reason)

    def end(self, sroom, sid, link=None):
        self.rooms.remove(sroom, sid)
        if link is not None:
            link.release()


def serve_client(hub, sroom, conn, peer, ip, settings, refuse):
    """A WebSocket client of session room ``sroom``, after its key was checked: open its session,
    splice it, log one line. ``refuse(code, reason, key)`` closes a client that gets no session."""
    from .splice import Splice, session_log
    import time
    started = time.monotonic()
    try:
        sid, link = hub.open(sroom, ip)
    except Refused as exc:
        hub.stats.sessions_ended[exc.outcome] += 1
        logger.info("session of room %s for %s refused: %d %s", sroom.code, peer, exc.code, exc.reason)
        refuse(conn, peer, exc.code, exc.reason, "session_" + exc.outcome)
        return
    hub.stats.sessions_opened += 1
    splice = Splice(conn, link, max_message_bytes=max(1 << 20, settings.max_message_bytes),
                    close_timeout=settings.close_timeout)
    how = "crashed"
    hub.splices.add(splice)
    try:
        how = splice.run()
    finally:
        hub.splices.discard(splice)
        hub.end(sroom, sid, link)
        sroom.bytes_to_clients += splice.to_client
        sroom.bytes_from_clients += splice.from_client
        hub.stats.session_bytes_to_clients += splice.to_client
        hub.stats.session_bytes_from_clients += splice.from_client
        outcome = how.split(" (")[0].replace(" ", "_")
        hub.stats.sessions_ended[outcome] += 1
        if splice.ws.close_sent and splice.ws.close_code is not None:
            hub.stats.close_codes[splice.ws.close_code] += 1
        session_log(sroom, sid, peer, splice, started, how)
