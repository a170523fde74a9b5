"""The room model: its declared interface, and the in-memory registry.

A *room* is one source's messages fanned out to its subscribers under a code.
Who may call what:

- the **TCP side** (``ingest``): :meth:`RoomModel.open` with a source object
  (:class:`Source`), then on the room :meth:`~Room.publish`,
  :meth:`~Room.read_budget`, :meth:`~Room.source_must_wait` /
  :meth:`~Room.wait_for_readers` (flow control) and, when its connection
  ends, :meth:`~Room.source_left`;
- the **HTTP side** (``web``): :meth:`RoomModel.subscribe`, then on the
  subscriber (:class:`Subscriber`) :meth:`~Subscriber.attach` its delivery
  hooks, :meth:`~Subscriber.take` / :meth:`~Subscriber.commit` /
  :meth:`~Subscriber.wait` to write, :meth:`~Subscriber.kick` to cut it and
  :meth:`~Subscriber.leave` when its connection is gone;
- the **API and metrics**: :meth:`RoomModel.rooms`, :meth:`RoomModel.get`,
  ``len()``, :attr:`RoomModel.subscriber_count`, :attr:`RoomModel.stats` and,
  on a room, the read-only figures listed in :data:`ROOM_FIGURES`;
- the **server**: :meth:`RoomModel.sweep` every :attr:`RoomModel.sweep_interval`
  seconds, :meth:`RoomModel.close_all` at shutdown.

A room tells a :class:`RoomEvents` listener what happens to it: subscriber
joined/left, source attached/detached, closed. The room model owns the room
lifecycle (``live`` → ``closed``); the TCP and HTTP sides only call it and
react. :class:`RoomRegistry` keeps rooms in this process; a shared (Redis)
registry implements :class:`RoomModel` the same way without changes to
``web`` or ``ingest``.
"""

import time

from .backlog import CLOSED, CUT, LIVE, SKIP, SLOW_CLOSE, SOURCE_CLOSED, Room, RoomLimits, Subscriber
from .errors import RoomLimitError, RoomNotFound, ShuttingDown
from .roomcode import make_code, normalize
from .stats import Stats

__all__ = ["RoomModel", "RoomEvents", "Source", "RoomRegistry", "Room", "RoomLimits", "Subscriber",
           "ROOM_FIGURES", "LIVE", "CLOSED", "CUT", "SKIP", "SLOW_CLOSE", "SOURCE_CLOSED"]

#: what the API and metrics may read on a room (attributes; ``paused_for()`` and ``lag_max()``
#: are methods)
ROOM_FIGURES = ("code", "state", "peer", "opened_at", "subscribers", "peak_subscribers", "messages",
                "bytes", "backlog_bytes", "slow_cutoffs", "skipped", "source_paused", "source_pauses",
                "paused_seconds")


class Source:
    """What a room holds of its source: its address, and a way to write to it.

    The TCP side implements it (``ingest.TcpSource``); a room never touches a
    socket. This base class is a source that cannot be written to."""

    def __init__(self, peer=""):
        #: the source's address as text, for logs and the API
        self.peer = peer

    def send(self, data):
        """Write ``data`` to the source; False if it could not be written."""
        return False


class RoomEvents:
    """What a room tells its listener; every method is a no-op here (subclass what you need).

    Called synchronously from the room (often from the event loop): they must
    not block."""

    def subscriber_joined(self, room, sub):
        pass

    def subscriber_left(self, room, sub):
        pass

    def source_attached(self, room, source):
        pass

    def source_detached(self, room, source):
        pass

    def room_closed(self, room):
        pass


class RoomModel:
    """The interface of a room registry. :class:`RoomRegistry` is the in-memory one."""

    #: process-wide counters (:class:`~sphincter_lib.stats.Stats`)
    stats = None
    #: subscribers in every room now
    subscriber_count = 0
    #: True once :meth:`close_all` ran: no new rooms nor subscribers
    shutting_down = False

    def __len__(self):
        raise NotImplementedError

    def rooms(self):
        """Every open room (a list; a snapshot)."""
        raise NotImplementedError

    def open(self, source):
        """A new live room fed by ``source``, with a fresh code; RoomLimitError / ShuttingDown."""
        raise NotImplementedError

    def get(self, code):
        """The open room for a code typed by a person (case-insensitive), or RoomNotFound."""
        raise NotImplementedError

    def subscribe(self, code, peer):
        """A :class:`Subscriber` of that room; RoomNotFound / RoomFullError / ShuttingDown."""
        raise NotImplementedError

    #: how often :meth:`sweep` should run (seconds), None: never
    sweep_interval = None

    def sweep(self, now=None):
        """Periodic work: cut stalled subscribers."""
        raise NotImplementedError

    def close_all(self, code, reason):
        """Refuse new rooms and subscribers; close every room (subscribers drain, then ``code``)."""
        raise NotImplementedError


class RoomRegistry(RoomModel, RoomEvents):
    """Rooms of this process by code: the in-memory :class:`RoomModel`.

    It is its rooms' events listener (to count subscribers and forget closed
    rooms) and passes every event on to ``listener``."""

    def __init__(self, encode, max_rooms=1000, max_subscribers_per_room=10000,
                 buffer_bytes=4 << 20, stats=None, new_code=make_code, clock=time.time,
                 flow_control=True, high_water=None, slow_policy=CUT, stall_timeout=30.0,
                 monotonic=time.monotonic, listener=None):
        self.encode = encode
        self.max_rooms = max_rooms
        self.limits = RoomLimits(buffer_bytes=buffer_bytes, max_subscribers=max_subscribers_per_room,
                                 flow_control=flow_control, high_water=high_water,
                                 slow_policy=slow_policy)
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

    def __len__(self):
        return len(self._rooms)

    def rooms(self):
        return list(self._rooms.values())

    def open(self, source):
        if self.shutting_down:
            raise ShuttingDown()
        if len(self._rooms) >= self.max_rooms:
            raise RoomLimitError()
        code = self._new_code(self._rooms)
        room = Room(code, source, self.limits, self.encode, self, self.stats,
                    clock=self._clock, monotonic=self._monotonic)
        self._rooms[code] = room
        self.stats.rooms_opened += 1
        self.source_attached(room, source)
        return room

    def get(self, code):
        if self.shutting_down:
            raise ShuttingDown()
        room = self._rooms.get(normalize(code))
        if room is None:
            raise RoomNotFound()
        return room

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
        if self._rooms.get(room.code) is room:
            del self._rooms[room.code]
            self.stats.rooms_closed += 1
        self.listener.room_closed(room)
