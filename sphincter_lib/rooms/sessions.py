"""Session rooms: the bookkeeping of ``connect --sessions`` rooms (pure: no socket, no gevent).

A session room is not a broadcast room: it has no backlog and no subscribers. Each WebSocket
client with the room's key gets a *session* of its own, a TCP connection the agent opens for it
(``relay/tunnel.py`` does the I/O). This module owns the rooms' codes and keys, the sessions
they hold, and the limits: ``max_per_room`` sessions in one room and ``max_total`` on the
relay (0: no limit).
"""

import hmac
import time

from ..errors import RoomNotFound
from ..proto.roomcode import make_code, resume_key, room_key
from ..proto.sessionsignal import key_digest

#: how a session room refuses a new session: (kind, reason); the relay maps kinds to close codes
PER_ROOM, RELAY_WIDE = "room", "relay"


class SessionRoom:
    """One session room: ``code``, ``write_key`` (the key clients present), ``peer`` (the agent's
    control link), ``source`` (writes control lines), its ``sessions`` (sid -> whatever the relay
    keeps) and totals."""

    kind = "sessions"
    #: the tag of the node holding the room's agent when it is another node (Redis mode)
    owner = None

    def __init__(self, code, write_key, source, opened_at, token=None):
        self.code = code
        self.write_key = write_key
        self.source = source                 # None: a named room whose agent is away
        self.peer = source.peer if source is not None else ""
        #: a named room's token (bytes); None for a room with a drawn code
        self.token = token
        self.named = token is not None
        self.opened_at = opened_at
        self.sessions = {}
        self.pending = {}            # sid -> what waits for the agent's data link
        self.closed = False
        self.opened = 0              # sessions opened in all
        self.bytes_to_clients = 0
        self.bytes_from_clients = 0
        #: sessions of this room whose client is on another node (Redis mode): counted in
        #: ``sessions`` for the room's limit, not in the relay's total
        self.remote = set()

    def key_ok(self, key):
        """``key`` (str, from a client) is this room's key."""
        return hmac.compare_digest(key.encode("utf-8"), self.write_key.encode())


class RemoteSessionRoom:
    """A session room whose agent is on another node (Redis mode), as a client's node sees it
    from the room's record (``proto.sessionsignal``): ``owner`` is that node's tag; only the
    SHA-256 of the key is known here."""

    kind = "sessions"
    named = False
    closed = False

    def __init__(self, code, owner, digest, node, opened_at):
        self.code, self.owner, self.digest, self.node = code, owner, digest, node
        self.peer = "node %s" % node
        self.source = None
        self.opened_at = opened_at
        self.sessions = {}
        self.remote = set()
        self.opened = 0
        self.bytes_to_clients = 0
        self.bytes_from_clients = 0

    def key_ok(self, key):
        return hmac.compare_digest(key_digest(key), self.digest)


class SessionRooms:
    """Every session room of this process."""

    def __init__(self, max_per_room=0, max_total=0, taken=None, clock=time.time):
        self.max_per_room = max_per_room
        self.max_total = max_total
        self.taken = taken or (lambda code: False)   # codes of the broadcast rooms
        self.clock = clock
        self.rooms = {}
        self.total = 0               # sessions open now, every room

    def add_named(self, specs, key=None):
        """The named session rooms of a rooms file (``sessions=on``), from start-up on; their
        key is the spec's ``write=KEY``, else ``key(spec)`` (Redis mode: the same on every node),
        else one drawn now."""
        for spec in specs:
            if spec.sessions and spec.key not in self.rooms:
                write = spec.write or (key(spec) if key is not None else resume_key())
                self.rooms[spec.key] = SessionRoom(spec.name, write, None, self.clock(), token=spec.token)

    def claim(self, token, source):
        """The named session room of ``token`` (bytes) now controlled by ``source``:
        ``(room, replaced source or None)``; None if no named session room has that token."""
        for room in list(self.rooms.values()):
            if room.named and hmac.compare_digest(room.token, token):
                old, room.source, room.peer = room.source, source, source.peer
                room.closed = False
                return room, old
        return None

    def leave(self, room, source):
        """``source``'s control link ended: a room with a drawn code closes, a named one waits
        for its agent. False if ``source`` was no longer the room's (replaced)."""
        if room.source is not source:
            return False
        if room.named:
            room.source, room.closed = None, True
        else:
            self.close(room)
        return True

    def __len__(self):
        return len(self.rooms)

    @property
    def named_count(self):
        return sum(1 for room in self.rooms.values() if room.named)

    def open(self, source):
        """A new session room controlled by ``source`` (a :class:`~.interface.Source`)."""
        rooms, taken = self.rooms, self.taken

        class _Taken:
            def __contains__(self, code):
                return code in rooms or taken(code)

        room = SessionRoom(make_code(_Taken()), resume_key(), source, self.clock())
        rooms[room.code] = room
        return room

    def close(self, room):
        """A room with a drawn code lost its control link: its code is unknown from now on
        (sessions in progress go on over their own connections)."""
        room.closed = True
        if self.rooms.get(room.code) is room:
            del self.rooms[room.code]

    def find(self, text):
        """The session room for a code typed by a person, or None."""
        try:
            return self.rooms.get(room_key(text))
        except RoomNotFound:
            return None

    def refusal(self, room, remote=False):
        """None if ``room`` may open one more session, else (:data:`PER_ROOM` or
        :data:`RELAY_WIDE`, reason). ``remote``: for a client on another node (which applies
        its own relay-wide limit)."""
        if self.max_per_room and len(room.sessions) >= self.max_per_room:
            return PER_ROOM, "too many sessions"
        if not remote and self.max_total and self.total >= self.max_total:
            return RELAY_WIDE, "too many sessions"
        return None

    def add(self, room, sid, session, remote=False):
        """``remote``: the session's client is on another node (not in this relay's total)."""
        room.sessions[sid] = session
        room.opened += 1
        if remote:
            room.remote.add(sid)
        else:
            self.total += 1

    def remove(self, room, sid):
        if room.sessions.pop(sid, None) is not None:
            if sid in room.remote:
                room.remote.discard(sid)
            else:
                self.total -= 1
