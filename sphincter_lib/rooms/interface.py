"""The declared room interface: everything ``relay/`` uses of the rooms, and nothing else.

A *room* is one source's messages fanned out to its subscribers under a code.
Who may call what (the names are listed, for the seam test, in
:data:`MODEL_NAMES`, :data:`ROOM_NAMES`, :data:`SUBSCRIBER_NAMES` and
:data:`OUTBOX_NAMES`):

- the **TCP side** (``relay/ingest``): :meth:`RoomModel.open` with a source object
  (:class:`Source`), :meth:`RoomModel.claim` (a named room's token) or
  :meth:`RoomModel.resume` (a ``RESUME`` line); then on the room its
  ``code``, ``resume_key`` and ``write_key`` (the banner lines),
  ``publish``, ``read_budget``, ``source_must_wait`` / ``wait_for_readers``
  (flow control), ``room.source is source`` (not replaced), the write-back
  ``outbox`` (``take``/``done``/``wait``/``closed``) and, when its connection
  ends, ``source_left``;
- the **HTTP side** (``relay/web``): :meth:`RoomModel.subscribe`, then on the
  subscriber its ``room`` and ``peer``, ``attach`` its delivery hooks,
  ``take`` / ``commit`` / ``wait`` to write (or ``park``, with a ``waker``
  hook: no greenlet waits), ``wake`` (something to send:
  a parked writer wakes up), ``caught_up`` (nothing left to send), ``kick``
  to cut it, ``leave`` when its connection is gone, and its closing state
  (``closing``, ``close_code``, ``close_reason``, ``close_now``: close without
  draining); for writers, the room's ``write_key``, ``write`` and
  ``outbox.when_writable``; ``presence`` routes read ``state``,
  ``presence``, ``named`` and call ``presence_changed``;
- the **API and metrics**: :meth:`RoomModel.rooms`, :meth:`RoomModel.listing`,
  :meth:`RoomModel.get`, ``len()``, :attr:`RoomModel.subscriber_count`,
  :attr:`RoomModel.stats` and, on a room, the read-only figures listed in
  :data:`ROOM_FIGURES` (``source_node`` and ``relay_subscribers`` are None on
  a room of this process only);
- **session rooms** (``relay/tunnel``, ``relay/web``; :mod:`~sphincter_lib.rooms.sessions`,
  known as ``sroom`` in relay/): the names in :data:`SESSION_ROOM_NAMES`;
- the **server**: :meth:`RoomModel.start`, :meth:`RoomModel.reload`,
  :meth:`RoomModel.sweep` every :attr:`RoomModel.sweep_interval` seconds,
  :meth:`RoomModel.close_all` at shutdown, :meth:`RoomModel.stop`.

A room tells a :class:`RoomEvents` listener what happens to it: subscriber
joined/left, source attached/detached, closed. The room model owns the room
lifecycle (``live`` → ``waiting`` for its source → ``closed``; named rooms
never close unless removed); the TCP and HTTP sides only call it and react.
:class:`~sphincter_lib.rooms.registry.RoomRegistry` keeps rooms in this
process (its rooms are :class:`~sphincter_lib.rooms.room.Room`); the Redis
model (:mod:`sphincter_lib.cluster.model`) implements :class:`RoomModel` the
same way without changes to ``relay/``.

This module imports no implementation (tests/unit/rooms/test_room_seam.py).
"""

from ..closecodes import CloseCode

__all__ = ["RoomModel", "RoomEvents", "Source", "ROOM_FIGURES", "MODEL_NAMES", "ROOM_NAMES",
           "SUBSCRIBER_NAMES", "OUTBOX_NAMES", "SESSION_ROOM_NAMES", "LIVE", "WAITING", "CLOSED", "CUT", "SKIP",
           "SLOW_CLOSE", "SOURCE_CLOSED"]

#: room states: a source feeds it; no source (named room, or grace period); closed for good
LIVE, WAITING, CLOSED = "live", "waiting", "closed"
#: slow-subscriber policies: close it (4408), or jump it to the newest whole message
CUT, SKIP = "cut", "skip"

#: close code for a subscriber cut off because it fell too far behind (or stalled)
SLOW_CLOSE = CloseCode.TOO_SLOW
#: close code for subscribers of a room whose source closed (or that was removed)
SOURCE_CLOSED = CloseCode.SOURCE_CLOSED

#: what the API and metrics may read on a room (attributes; ``paused_for()`` and ``lag_max()``
#: are methods); ``source_node`` (the node its source is on, "" if none) and
#: ``relay_subscribers`` (every node's) are None on a room of this process only
ROOM_FIGURES = ("code", "state", "named", "presence", "peer", "opened_at", "subscribers",
                "peak_subscribers", "messages", "bytes", "backlog_bytes", "slow_cutoffs", "skipped",
                "source_paused", "source_pauses", "paused_seconds", "resumes", "takeovers", "replayed",
                "source_node", "relay_subscribers")

#: what relay/ may use of a room model (:class:`RoomModel`)
MODEL_NAMES = ("stats", "subscriber_count", "shutting_down", "node", "redis_state", "limits",
               "named_count", "start", "stop", "listing", "reload", "rooms", "open", "claim",
               "resume", "get", "subscribe", "sweep_interval", "sweep", "close_all")
#: what relay/ may use of a room, besides :data:`ROOM_FIGURES`
ROOM_NAMES = ROOM_FIGURES + ("paused_for", "lag_max", "resume_key", "write_key", "source",
                             "publish", "read_budget", "source_must_wait", "wait_for_readers",
                             "outbox", "source_left", "write", "presence_changed")
#: what relay/ may use of a subscriber
SUBSCRIBER_NAMES = ("room", "peer", "attach", "take", "commit", "wait", "park", "wake", "caught_up",
                    "kick", "leave", "closing", "close_code", "close_reason", "close_now")
#: what relay/ may use of a session room (``rooms/sessions.SessionRoom``)
SESSION_ROOM_NAMES = ("code", "kind", "named", "write_key", "source", "peer", "opened_at", "sessions",
                      "closed", "opened", "bytes_to_clients", "bytes_from_clients", "key_ok", "owner")
#: what relay/ may use of a room's write-back outbox
OUTBOX_NAMES = ("take", "done", "wait", "closed", "when_writable")


class Source:
    """What a room holds of its source: its address, and a way to write to it.

    The TCP side implements it (``relay.greeting.TcpSource``); a room never touches a
    socket. This base class is a source that cannot be written to."""

    def __init__(self, peer=""):
        #: the source's address as text, for logs and the API
        self.peer = peer

    def send(self, data):
        """Write ``data`` to the source; False if it could not be written."""
        return False

    def hang_up(self, reason):
        """Tell the source ``ERROR <reason>`` and end its connection; must not block."""


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

    #: process-wide counters (:class:`~sphincter_lib.rooms.stats.Stats`)
    stats = None
    #: subscribers in every room now
    subscriber_count = 0
    #: True once :meth:`close_all` ran: no new rooms nor subscribers
    shutting_down = False
    #: this process's name among the nodes of a relay (None: rooms live in this process only)
    node = None
    #: "ok" or "down" when rooms are shared through Redis; None otherwise
    redis_state = None
    #: the rooms' limits and policies (:class:`RoomLimits`)
    limits = None
    #: named rooms configured
    named_count = 0

    def start(self):
        """Called once the relay listens (a shared model connects here)."""

    def stop(self):
        """Called last at shutdown, after :meth:`close_all` and the drain."""

    def listing(self):
        """Every room of the relay, for the admin API (in-process: :meth:`rooms`)."""
        return self.rooms()

    def reload(self, specs):
        """Make the named rooms those of ``specs``; returns (added, changed, removed) names."""
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError

    def rooms(self):
        """Every open room (a list; a snapshot)."""
        raise NotImplementedError

    def open(self, source):
        """A new live room fed by ``source``, with a fresh code; RoomLimitError / ShuttingDown."""
        raise NotImplementedError

    def claim(self, token, source):
        """Feed the named room whose token is ``token`` (bytes) with ``source``.

        Returns ``(room, replaced_source_or_None)``, or None when no named room
        has that token."""
        raise NotImplementedError

    def resume(self, code, key, source):
        """Feed room ``code`` again from ``source`` if ``key`` is its resume key.

        Returns ``(room, replaced_source_or_None)``; CannotResume otherwise."""
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
