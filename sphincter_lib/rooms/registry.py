"""The in-memory room registry: :class:`RoomRegistry`, the :class:`RoomModel` of one process.

The interface it implements (and the only part of the rooms ``relay/`` may
use) is declared in :mod:`sphincter_lib.rooms.interface`; its names are
re-exported here.
"""

import hmac
import time

from .interface import (CLOSED, CUT, LIVE, ROOM_FIGURES, SKIP, SLOW_CLOSE, SOURCE_CLOSED, WAITING,
                        RoomEvents, RoomModel, Source)
from .cursor import Subscriber
from .limits import RoomLimits
from .room import Room
from ..errors import CannotResume, RoomLimitError, RoomNotFound, ShuttingDown
from ..proto.roomcode import make_code, resume_key, room_key
from .stats import Stats

__all__ = ["RoomModel", "RoomEvents", "Source", "RoomRegistry", "Room", "RoomLimits", "Subscriber",
           "ROOM_FIGURES", "LIVE", "WAITING", "CLOSED", "CUT", "SKIP", "SLOW_CLOSE", "SOURCE_CLOSED"]


class RoomRegistry(RoomModel, RoomEvents):
    """Rooms of this process by code: the in-memory :class:`RoomModel`.

    It is its rooms' events listener (to count subscribers and forget closed
    rooms) and passes every event on to ``listener``."""

    #: the class of its rooms (the Redis model's rooms extend it)
    room_class = Room

    def __init__(self, encode, max_rooms=1000, max_subscribers_per_room=10000,
                 buffer_bytes=4 << 20, stats=None, new_code=make_code, clock=time.time,
                 flow_control=True, high_water=None, slow_policy=CUT, stall_timeout=30.0,
                 monotonic=time.monotonic, listener=None, grace=0.0, replay=0, named=(),
                 write_back=False, write_queue_bytes=1 << 20):
        self.encode = encode
        #: most ephemeral rooms (live or waiting for their source); named rooms are not counted
        self.max_rooms = max_rooms
        self.limits = RoomLimits(buffer_bytes=buffer_bytes, max_subscribers=max_subscribers_per_room,
                                 flow_control=flow_control, high_water=high_water,
                                 slow_policy=slow_policy, replay=replay, grace=grace,
                                 write_queue_bytes=write_queue_bytes)
        #: rooms accept writers (subscribers with the room's write key)
        self.write_back = write_back
        self._ephemeral = 0
        self._named = {}                      # key -> (RoomSpec, Room)
        #: seconds a subscriber with data waiting may make no progress (0: forever)
        self.stall_timeout = stall_timeout
        self.stats = stats if stats is not None else Stats()
        self.listener = listener if listener is not None else RoomEvents()
        self._new_code = new_code
        self._clock = clock
        self._monotonic = monotonic
        self._rooms = {}
        self.subscriber_count = 0
        self.shutting_down = False
        self.reload(named)

    @property
    def ephemeral_count(self):
        return self._ephemeral

    @property
    def named_count(self):
        return len(self._named)

    def __len__(self):
        return len(self._rooms)

    def rooms(self):
        return list(self._rooms.values())

    def open(self, source):
        if self.shutting_down:
            raise ShuttingDown()
        if self._ephemeral >= self.max_rooms:
            raise RoomLimitError()
        code = self._new_code(self._rooms)
        room = self.room_class(code, source, self.limits, self.encode, self, self.stats,
                               clock=self._clock, monotonic=self._monotonic)
        if self.limits.grace:
            room.resume_key = resume_key()
        if self.write_back:
            room.write_key = resume_key()
        self._rooms[code] = room
        self._ephemeral += 1
        self.stats.rooms_opened += 1
        self.source_attached(room, source)
        return room

    def claim(self, token, source):
        if self.shutting_down:
            raise ShuttingDown()
        found = self.named_room(token)
        if found is None:
            return None
        return found, found.attach(source)

    def named_room(self, token):
        """The named room whose token is ``token`` (bytes), or None."""
        found = None
        for spec, room in self._named.values():     # every token compared: no early exit
            if hmac.compare_digest(token, spec.token) and found is None:
                found = room
        return found

    def resume(self, code, key, source):
        if self.shutting_down:
            raise ShuttingDown()
        try:
            room = self._rooms.get(room_key(code))
        except RoomNotFound:
            room = None
        expected = room.resume_key if room is not None and not room.named else None
        if not hmac.compare_digest((expected or "-").encode(), key.encode("utf-8", "replace")) or not expected:
            raise CannotResume()
        replaced = room.attach(source)
        room.resume_key = resume_key()
        return room, replaced

    def get(self, code):
        if self.shutting_down:
            raise ShuttingDown()
        room = self._rooms.get(room_key(code))
        if room is None:
            raise RoomNotFound()
        return room

    def reload(self, specs):
        """Make the named rooms those of ``specs`` (:class:`~sphincter_lib.proto.roomsfile.RoomSpec`).

        New rooms appear (waiting for a source); changed ones take their new
        token and options (subscribers stay); removed ones close with 4410
        once their subscribers drained. Returns (added, changed, removed) names."""
        added, changed, removed = [], [], []
        wanted = {spec.key: spec for spec in specs}
        for key, (spec, room) in list(self._named.items()):
            if key not in wanted:
                del self._named[key]
                if room.source is not None:
                    room.source.hang_up("room removed")
                room.close(SOURCE_CLOSED, "room removed")
                removed.append(spec.name)
        for key, spec in wanted.items():
            limits = self.limits.but(replay=spec.replay, max_subscribers=spec.max_subscribers,
                                     slow_policy=spec.slow_policy)
            if key in self._named:
                old, room = self._named[key]
                if old != spec:
                    room.configure(limits)
                    if spec.write or not self.write_back:
                        room.write_key = spec.write
                    changed.append(spec.name)
                self._named[key] = (spec, room)
                continue
            clash = self._rooms.get(key)
            if clash is not None:               # an ephemeral code that happens to be the name
                clash.close(SOURCE_CLOSED, "room closed")
            room = self.room_class(spec.name, None, limits, self.encode, self, self.stats,
                                   clock=self._clock, monotonic=self._monotonic, named=True)
            room.write_key = spec.write or (resume_key() if self.write_back else None)
            self._rooms[key] = room
            self._named[key] = (spec, room)
            added.append(spec.name)
        return added, changed, removed

    def subscribe(self, code, peer):
        return self.get(code).subscribe(peer)

    @property
    def sweep_interval(self):
        """A quarter of the stall timeout, at most 1 s; None without a stall timeout."""
        return min(1.0, self.stall_timeout / 4.0) if self.stall_timeout else None

    def sweep(self, now=None):
        if not self.stall_timeout:
            return
        now = self._monotonic() if now is None else now
        for room in list(self._rooms.values()):
            if room.backlog_bytes:           # nothing waiting: nobody can be stalled
                room.sweep(now, self.stall_timeout)

    def close_all(self, code, reason):
        self.shutting_down = True
        for room in list(self._rooms.values()):
            room.close(code, reason)

    # -- RoomEvents: what the rooms tell the registry -----------------------------------
    def subscriber_joined(self, room, sub):
        self.subscriber_count += 1
        self.stats.subscribers_joined += 1
        self.listener.subscriber_joined(room, sub)

    def subscriber_left(self, room, sub):
        self.subscriber_count -= 1
        self.stats.subscribers_left += 1
        self.listener.subscriber_left(room, sub)

    def source_attached(self, room, source):
        self.listener.source_attached(room, source)

    def source_detached(self, room, source):
        self.listener.source_detached(room, source)

    def room_closed(self, room):
        if self._rooms.get(room.key) is room:
            del self._rooms[room.key]
            if not room.named:
                self._ephemeral -= 1
            self.stats.rooms_closed += 1
        self.listener.room_closed(room)
