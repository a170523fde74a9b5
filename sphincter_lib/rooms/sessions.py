"""Session rooms: the bookkeeping of ``connect --sessions`` rooms (pure: no socket, no gevent).

A session room is not a broadcast room: it has no backlog and no subscribers. Each WebSocket
client with the room's key gets a *session* of its own, a TCP connection the agent opens for it
(``relay/tunnel.py`` does the I/O). This module owns the rooms' codes and keys, the sessions
they hold, and the limits: ``max_per_room`` sessions in one room and ``max_total`` on the
relay (0: no limit).
"""

import time

from ..errors import RoomNotFound
from ..proto.roomcode import make_code, resume_key, room_key

#: how a session room refuses a new session: (kind, reason); the relay maps kinds to close codes
PER_ROOM, RELAY_WIDE = "room", "relay"


class SessionRoom:
    """One session room: ``code``, ``write_key`` (the key clients present), ``peer`` (the agent's
    control link), ``source`` (writes control lines), its ``sessions`` (sid -> whatever the relay
    keeps) and totals."""

    kind = "sessions"
    named = False

    def __init__(self, code, write_key, source, opened_at):
        self.code = code
        self.write_key = write_key
        self.source = source
        self.peer = source.peer
        self.opened_at = opened_at
        self.sessions = {}
        self.pending = {}            # sid -> what waits for the agent's data link
        self.closed = False
        self.opened = 0              # sessions opened in all
        self.bytes_to_clients = 0
        self.bytes_from_clients = 0


class SessionRooms:
    """Every session room of this process."""

    def __init__(self, max_per_room=0, max_total=0, taken=None, clock=time.time):
        self.max_per_room = max_per_room
        self.max_total = max_total
        self.taken = taken or (lambda code: False)   # codes of the broadcast rooms
        self.clock = clock
        self.rooms = {}
        self.total = 0               # sessions open now, every room

    def __len__(self):
        return len(self.rooms)

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
        """The room's control link ended: its code is unknown from now on (sessions in
        progress go on over their own connections)."""
        room.closed = True
        if self.rooms.get(room.code) is room:
            del self.rooms[room.code]

    def find(self, text):
        """The session room for a code typed by a person, or None."""
        try:
            return self.rooms.get(room_key(text))
        except RoomNotFound:
            return None

    def refusal(self, room):
        """None if ``room`` may open one more session, else (:data:`PER_ROOM` or
        :data:`RELAY_WIDE`, reason)."""
        if self.max_per_room and len(room.sessions) >= self.max_per_room:
            return PER_ROOM, "too many sessions"
        if self.max_total and self.total >= self.max_total:
            return RELAY_WIDE, "too many sessions"
        return None

    def add(self, room, sid, session):
        room.sessions[sid] = session
        room.opened += 1
        self.total += 1

    def remove(self, room, sid):
        if room.sessions.pop(sid, None) is not None:
            self.total -= 1
