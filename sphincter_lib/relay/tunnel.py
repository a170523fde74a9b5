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

Redis mode (``cluster``: a :class:`~sphincter_lib.cluster.sessions.ClusterSessions`): a room's
agent may be on another node. The client's node draws a session id naming itself and asks the
room's node over Redis to send ``OPEN`` (:meth:`TunnelHub.signal` answers such requests); the
agent's data link comes to the client's node, or to any node that forwards it (``nodehop``).
"""

import logging
import secrets

import gevent
from gevent.event import AsyncResult, Event

from ..closecodes import CloseCode
from ..errors import RelayUnavailable
from ..proto import sessionsignal, sessionwire
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

    def __init__(self, rooms, stats, open_timeout=10.0, open_rate=2.0, open_burst=20, ephemeral=True,
                 cluster=None):
        self.rooms = rooms
        #: False: only named session rooms (``sessions=on`` in the rooms file; ``--sessions off``)
        self.ephemeral = ephemeral
        self.stats = stats
        self.open_timeout = open_timeout
        self.opens = RateLimiter(open_rate, open_burst)
        self._pending = {}           # sid -> (sroom, AsyncResult)
        self.splices = set()         # sessions being spliced (for shutdown)
        #: Redis mode: this node's part in the relay's session rooms (``cluster.sessions``)
        self.cluster = cluster
        self._remote = {}            # sid -> (sroom, node tag): sessions here for clients elsewhere
        if cluster is not None:
            cluster.on_message, cluster.on_beat = self.signal, self._beat

    def start(self, address):
        """Redis mode: tell the other nodes this node's source port is at ``address``."""
        if self.cluster is not None:
            self.cluster.start(address)

    def stop(self):
        if self.cluster is not None:
            self.cluster.stop()

    def find(self, code):
        """The session room ``code``: this node's, or (Redis mode) another node's; else None."""
        sroom = self.rooms.find(code)
        if self.cluster is None or (sroom is not None and sroom.source is not None):
            return sroom
        try:                    # (a named room whose agent is on another node, or is away)
            return self.cluster.find(code) or sroom
        except RelayUnavailable:
            return sroom

    def _new_sid(self):
        random = secrets.token_urlsafe(16)
        return random if self.cluster is None else sessionsignal.make_sid(random, self.cluster.tag)

    # -- the TCP side --------------------------------------------------------------------
    def serve_control(self, sock, source, who, sroom=None, how="opened"):
        """A control link, until it ends. ``source`` writes to it (``greeting.TcpSource``);
        ``sroom``: the named session room it claimed (else a room with a new code)."""
        sroom = self._room_for(source, who, sroom)
        if sroom is None:
            return
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
                if self.cluster is not None:
                    self.cluster.unregister(sroom)
                self._agent_gone(sroom)
            state = "waiting for its agent" if sroom.named else "closed"
            logger.info("session room %s %s: %s; peer=%s sessions_opened=%d sessions_open=%d",
                        sroom.code, state, end, source.peer, sroom.opened, len(sroom.sessions))

    def _room_for(self, source, who, sroom):
        """The room a control link serves: the named one it claimed (in Redis mode, taken from
        whichever node had it), else a new one; None (and ``ERROR``) when Redis is unreachable."""
        if sroom is not None:
            if self.cluster is not None:
                self.cluster.take(sroom)
            return sroom
        try:
            return self._open_room(source)
        except RelayUnavailable:
            logger.warning("session room for %s refused: relay unavailable", who)
            source.send(b"ERROR relay unavailable\n")
            return None

    def _open_room(self, source):
        """A new session room for ``source``; in Redis mode, recorded for the other nodes (a code
        another node's room has is drawn again)."""
        for _ in range(8):
            sroom = self.rooms.open(source)
            if self.cluster is None or self.cluster.register(sroom):
                return sroom
            self.rooms.close(sroom)
        raise RelayUnavailable()

    def _agent_gone(self, sroom):
        """The room's agent left: sessions still opening, here or for other nodes, will not open."""
        for sid, (r, result) in list(self._pending.items()):
            if r is sroom and not result.ready():
                result.set(("refused", "agent gone"))
        for sid, (r, tag) in list(self._remote.items()):
            if r is sroom:
                del self._remote[sid]
                self.cluster.tell(tag, sessionsignal.refused_message(sid, sessionsignal.AGENT, "agent gone"))

    def _replaced(self, code):
        """Another node took the record of this node's room ``code`` (a named room's newer agent
        connected there): this node's agent of it is hung up."""
        self.cluster.disown(code)
        sroom = self.rooms.find(code)
        if sroom is None or sroom.source is None:
            return
        old = sroom.source
        self.rooms.leave(sroom, old)
        self._agent_gone(sroom)
        old.hang_up("replaced by a newer source")

    def _beat(self, lost):
        """After each heartbeat: rooms another node took; sessions counted here for clients on
        nodes that are gone (no ``ended`` will come)."""
        for code in lost:
            self._replaced(code)
        if self._remote:
            gone = self.cluster.gone({tag for _, tag in self._remote.values()})
            for sid, (sroom, tag) in list(self._remote.items()):
                if tag in gone:
                    del self._remote[sid]
                    self.rooms.remove(sroom, sid)

    def _control_line(self, sroom, line):
        event = sessionwire.parse_agent_line(line)
        if event[0] == "refused" and event[1] in self._remote:
            r, tag = self._remote.pop(event[1])
            self.rooms.remove(r, event[1])
            self.cluster.tell(tag, sessionsignal.refused_message(event[1], sessionsignal.AGENT, event[2]))
        elif event[0] == "refused":
            pending = self._pending.get(event[1])
            if pending is not None and pending[0] is sroom and not pending[1].ready():
                pending[1].set(("refused", event[2]))
        elif event[0] == "unknown":
            logger.debug("session room %s: unexpected line from the agent: %r", sroom.code, event[1][:80])

    def serve_data(self, sock, who, sid, rest):
        """A data link: hand it to its session's client and hold it until the session ends (in
        Redis mode, a data link for another node's session is forwarded there: ``nodehop``)."""
        tag = sessionsignal.sid_tag(sid) if self.cluster is not None else ""
        if tag and tag != self.cluster.tag:
            from .nodehop import forward
            forward(self.cluster, sock, who, sid, rest)
            return
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
        sid = self._new_sid()
        result = AsyncResult()
        self._pending[sid] = (sroom, result)
        self.rooms.add(sroom, sid, result)
        try:
            if not self._ask_open(sroom, sid):
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
        if answer[0] == "full":
            self.end(sroom, sid)
            raise Refused(CloseCode.ROOM_FULL, answer[1], "room_full")
        return sid, answer[1]

    def _ask_open(self, sroom, sid):
        """``OPEN <SID>`` to the room's agent: on its control link, or (the agent is on another
        node) through that node. False if it cannot be sent."""
        owner = sroom.owner
        if owner is None:
            control = sroom.source
            return control is not None and control.send(sessionwire.open_line(sid))
        try:
            return self.cluster.ask(owner, sessionsignal.open_message(sroom.code, sid, self.cluster.tag))
        except RelayUnavailable:
            return False

    def signal(self, event):
        """A message from another node (``cluster.sessions``), in the order Redis delivered them."""
        if event[0] == "open":
            self._open_for(event[1], event[2], event[3])
        elif event[0] == "refused":
            pending = self._pending.get(event[1])
            if pending is not None and not pending[1].ready():
                pending[1].set(("full" if event[2] == sessionsignal.ROOM else "refused", event[3]))
        elif event[0] == "ended":
            entry = self._remote.pop(event[2], None)
            if entry is not None:
                self.rooms.remove(entry[0], event[2])
        elif event[0] == "replaced":
            self._replaced(event[1])

    def _open_for(self, code, sid, tag):
        """The node ``tag`` has a client for this node's room ``code``: ``OPEN`` to its agent."""
        sroom = self.rooms.find(code)
        refusal = (None if sroom is None or sroom.source is None
                   else self.rooms.refusal(sroom, remote=True))
        if sroom is None or sroom.source is None:
            kind, reason = sessionsignal.AGENT, "agent unreachable"
        elif refusal is not None:
            kind, reason = sessionsignal.ROOM, refusal[1]
        else:
            self.rooms.add(sroom, sid, tag, remote=True)
            self._remote[sid] = (sroom, tag)
            if sroom.source.send(sessionwire.open_line(sid)):
                return
            self._remote.pop(sid, None)
            self.rooms.remove(sroom, sid)
            kind, reason = sessionsignal.AGENT, "agent unreachable"
        self.cluster.tell(tag, sessionsignal.refused_message(sid, kind, reason))

    def close_all(self, code, reason):
        """Shutdown: every session's client gets ``code`` (after what was read), its data link
        is cut; every control link gets ``ERROR <reason>`` (``ingest`` does that)."""
        for splice in list(self.splices):
            splice.stop(code, reason)

    def end(self, sroom, sid, link=None):
        self.rooms.remove(sroom, sid)
        owner = sroom.owner
        if owner is not None:
            self.cluster.tell(owner, sessionsignal.ended_message(sroom.code, sid))
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
                    close_timeout=settings.close_timeout, ping_interval=settings.ping_interval)
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
