"""The in-memory room: one source's messages fanned out to its subscribers, and its lifecycle.

Data path: ``Room.publish(payload, text)`` encodes the message as a frame **once** and appends
it to the room's shared :class:`~sphincter_lib.rooms.backlog.Backlog` (``rooms/backlog.py``:
the frames, the per-subscriber budget, the replay window, the parked writers); every
subscriber is a cursor into it (:class:`~sphincter_lib.rooms.cursor.Subscriber`). A
subscriber's writer (``relay/session.py``) calls :meth:`Subscriber.take` for everything from
its cursor on as one buffer (bounded by a batch size), writes it, then
:meth:`Subscriber.commit`. Publishing costs O(1) however many subscribers there are, and never
blocks.

Flow control (:class:`~sphincter_lib.rooms.pace.Pace`, ``rooms/pace.py``): the room reads its
source only while its *lead*, the subscriber that has read furthest, is under ``high_water``
bytes behind (:meth:`Room.source_must_wait`, :meth:`Room.wait_for_readers`); it moves at the
speed of its fastest subscriber and never waits for the slowest: those more than
``buffer_bytes`` behind are cut (policy ``cut``) or jump to the newest whole message (``skip``),
by the backlog. A room without subscribers never makes its source wait; :meth:`Room.sweep`
cuts subscribers that made no progress for ``stall_timeout``.

The room holds both, keeps the lifecycle (source attached, waiting, closed; subscribers in and
out; write-back to the source) and shows their figures under its own names. It knows nothing
of its registry: it gets its limits (:class:`RoomLimits`) and an events listener
(:class:`~sphincter_lib.rooms.interface.RoomEvents`) when made, and tells the listener what
happens to it. The interface the rest of the relay uses is declared in
:mod:`sphincter_lib.rooms.interface`.
"""

import time
from operator import attrgetter

from gevent import get_hub
from gevent.event import Event

from ..errors import RoomFullError, RoomNotFound
# (CLOSED ... WAITING are imported from here too: cluster/room.py, cluster/model.py)
from .interface import CLOSED, LIVE, SKIP, SLOW_CLOSE, SOURCE_CLOSED, WAITING  # noqa: F401
from .limits import RoomLimits  # noqa: F401  (still importable from here)
from .backlog import Backlog
from .cursor import Subscriber
from .pace import Pace
from .outbox import Outbox


def _of(path, doc, settable=False):
    """A property reading ``self.<part>.<name>`` (``path``), and writing it if ``settable``."""
    part, name = path.split(".")
    fset = (lambda self, value: setattr(getattr(self, part), name, value)) if settable else None
    return property(attrgetter(path), fset, doc=doc)


class Room:
    """A code (or name), its subscribers, its source if any; its backlog and flow control.

    Lifecycle: ``live`` while a source feeds it; when the source leaves, a
    room with a grace period (or a named room, whose grace is endless) goes
    ``waiting`` — subscribers stay, new ones may join, a source may come back
    (:meth:`attach`) — else it closes. ``closed`` is final: subscribers drain,
    then get the close code.

    It holds its :class:`~sphincter_lib.rooms.backlog.Backlog` (``backlog``) and its
    :class:`~sphincter_lib.rooms.pace.Pace` (``pace``); their figures are read here under
    their old names (``head_seq``, ``lead``, ``source_pauses``...).
    """

    #: where its source is and every node's subscribers: None on a room of this process only
    #: (see ``interface.ROOM_FIGURES``; the Redis room sets them)
    source_node = None
    relay_subscribers = None

    def __init__(self, code, source, limits, encode, events, stats, clock=time.time,
                 monotonic=time.monotonic, named=False):
        #: the code (or a named room's name as written); ``key`` is its case-folded form
        self.code = code
        self.key = code.upper()
        self.named = named
        #: the source feeding the room (an object with ``peer`` and ``send(data)``), or None
        self.source = source
        #: the secret a source presents to resume this room (set by the registry)
        self.resume_key = None
        #: the secret a subscriber presents to write to the source (None: no writers)
        self.write_key = None
        self.outbox = Outbox(limits.write_queue_bytes)
        self.limits = limits
        self.events = events
        self.stats = stats
        self.buffer_bytes = limits.buffer_bytes
        self.max_subscribers = limits.max_subscribers
        self.flow_control = limits.flow_control
        self.high_water = limits.high_water
        self.low_water = limits.low_water
        self.skip = limits.slow_policy == SKIP
        self._encode = encode
        self._monotonic = monotonic
        self.opened_at = clock()
        self.state = LIVE if source is not None else WAITING
        self.resumes = 0                 # sources that came back (RESUME or a named room's AUTH)
        self.takeovers = 0               # sources replaced by a newer one
        self.replayed = 0                # messages replayed to joining subscribers
        self._fed = source is not None  # a source fed it once: the next one resumes it
        self._grace_timer = None
        self._presence = Event()         # set and replaced at each presence change
        self.messages = 0
        self.bytes = 0
        self.subscribers = set()
        self.peak_subscribers = 0
        self.slow_cutoffs = 0
        self.skipped = 0                 # messages skipped by 'skip' subscribers
        self.close_code = None
        self.close_reason = ""
        self._loop = get_hub().loop
        #: the shared frames, and the budget over them
        self.backlog = Backlog(self, limits.buffer_bytes, limits.replay, self._loop.run_callback)
        self._append = self.backlog.append
        #: the lead and the source's pauses
        self.pace = Pace(self.backlog, limits.high_water, limits.low_water, stats, monotonic)

    def __repr__(self):
        return "<Room %s %s subscribers=%d>" % (self.code, self.state, len(self.subscribers))

    # -- the backlog's and flow control's figures, under the room's names ----------------
    head_seq = _of("backlog.head_seq", "The next frame's number.")
    head_pos = _of("backlog.head_pos", "The byte offset where the next frame will start.")
    backlog_bytes = _of("backlog.bytes", "Bytes of frames kept.")
    replay = _of("backlog.replay", "Messages a joining subscriber gets first.", settable=True)
    lead = _of("pace.lead", "The subscriber that has read furthest (None without subscribers).")
    lead_unread = _of("pace.lead_unread", "Bytes the lead's cursor moved without reading them.")
    lead_watch = _of("pace.lead_watch", "A position whose passing by the lead calls "
                     ":meth:`lead_passed` (None: off).", settable=True)
    source_paused = _of("pace.paused", "True while the source's reader is told to wait.")
    source_pauses = _of("pace.pauses", "Times the source was paused.")
    paused_seconds = _of("pace.paused_seconds", "Seconds the source waited, finished pauses.")

    @property
    def lead_pos(self):
        """The lead's cursor, which flow control follows (the head when there is no lead)."""
        pace = self.pace
        return pace.lead_pos if pace.lead is not None else self.backlog.head_pos

    @property
    def peer(self):
        """The source's address as text ('' without a source)."""
        return self.source.peer if self.source is not None else ""

    def lag_max(self):
        """Bytes the furthest-behind subscriber still has to receive."""
        head = self.backlog.head_pos
        return max((head - s.pos for s in list(self.subscribers)), default=0)

    def read_budget(self, read_size):
        """Most bytes one read of the source may take: with flow control, one read must not carry
        the lead from just under high water past the budget (framing may grow bytes by half:
        a 1-byte line is 2 bytes read, a 3-byte frame)."""
        if not self.flow_control:
            return read_size
        return max(1, min(read_size, (self.buffer_bytes - self.high_water) * 2 // 3))

    # -- the data path ---------------------------------------------------------------
    def publish(self, payload, text):
        """Encode ``payload`` once and queue it for every subscriber. Never blocks."""
        if self.state is not LIVE:
            return
        self.count_in(payload)
        if not self.subscribers and not self.backlog.replay:
            self.backlog.pass_bytes(len(payload))   # nobody to deliver to: not even encoded
            return
        self._append(self._encode(payload, text))

    def count_in(self, payload):
        """Count a message from the source (messages/bytes in)."""
        self.messages += 1
        self.bytes += len(payload)
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += len(payload)

    # -- flow control ----------------------------------------------------------------
    def source_must_wait(self):
        """True while the source's reader should wait: its fastest subscriber is far behind."""
        return (self.flow_control and self.state is LIVE and bool(self.subscribers)
                and self.backlog.head_pos - self.pace.lead_pos >= self.high_water)

    def wait_for_readers(self):
        """Block the calling (source reader) greenlet until the room may read again.

        Returns at once if it need not wait. Ends when the fastest subscriber is
        back under ``low_water``, leaves or is cut, or the room closes."""
        if not self.source_must_wait():
            return
        self.pace.pause()
        self.pace.wait()

    def lead_passed(self):
        """The fastest subscriber passed ``lead_watch`` (for a room shared across processes)."""
        self.lead_watch = None

    def paused_for(self, now=None):
        """Seconds the source has waited in all, the current pause included."""
        return self.pace.paused_for(now)

    def sweep(self, now, stall_timeout):
        """Cut subscribers with data waiting that made no progress for ``stall_timeout`` s."""
        self.backlog.sweep(now, stall_timeout)

    # -- subscribers -----------------------------------------------------------------
    def subscribe(self, peer):
        if self.state is CLOSED:
            raise RoomNotFound()
        if len(self.subscribers) >= self.max_subscribers:
            raise RoomFullError()
        sub = Subscriber(self, peer)
        n = self.backlog.replay_to(sub)
        if n:
            self.replayed += n
            self.stats.replayed_messages += n
        self.subscribers.add(sub)
        self.pace.joined(sub)
        if len(self.subscribers) > self.peak_subscribers:
            self.peak_subscribers = len(self.subscribers)
        self.events.subscriber_joined(self, sub)
        return sub

    def drop_subscriber(self, sub):
        """``sub`` leaves the room (kicked, or its connection is gone); a second time is a no-op."""
        if not sub.active:
            return
        sub.active = False
        self.subscribers.discard(sub)
        self.events.subscriber_left(self, sub)
        if not self.subscribers:
            self.backlog.trim_to(self.backlog.head_seq)
        if sub is self.pace.lead:
            self.pace.recompute(self.subscribers)

    # -- lifecycle -----------------------------------------------------------------
    def configure(self, limits):
        """New limits for a named room whose options changed (subscribers stay)."""
        self.limits = limits
        self.max_subscribers = limits.max_subscribers
        self.skip = limits.slow_policy == SKIP
        self.replay = limits.replay

    @property
    def presence(self):
        """``online`` while a source feeds the room, ``offline`` otherwise."""
        return "online" if self.source is not None else "offline"

    def presence_changed(self):
        """An Event set at the next presence change (for long-polls)."""
        return self._presence

    def write(self, data):
        """A writer's message for the source (whole, never interleaved with another). Never blocks.

        Returns False when the queue toward the source is full: the writer
        should stop reading until :meth:`Outbox.when_writable` calls it back."""
        if self.state is CLOSED:
            return True                            # dropped: nobody will ever read it
        self.stats.writes_in += 1
        self.stats.write_bytes += len(data)
        return self.outbox.put(data)

    def attach(self, source):
        """``source`` feeds the room from now on; returns the source it replaced, if any."""
        if self.state is CLOSED:
            raise RoomNotFound()
        old, self.source = self.source, source
        self.cancel_grace()
        self.state = LIVE
        if old is not None:
            self.takeovers += 1
            self.stats.takeovers += 1
            self.events.source_detached(self, old)
        elif self._fed:
            self.resumes += 1
            self.stats.resumes += 1
        self._fed = True
        self.pace.resume()                    # the old reader stops; the new one decides afresh
        self.events.source_attached(self, source)
        self.announce_presence()
        self.outbox.wake()                       # the old drainer stops, the new one starts
        return old

    def source_left(self, source):
        """``source`` stopped feeding the room (its connection ended).

        A named room waits for a source forever; a room with a grace period
        waits that long, then closes (4410); any other room closes now:
        subscribers drain, then get 4410."""
        if source is not self.source:
            return                               # a replaced source: the room moved on
        self.source = None
        self.events.source_detached(self, source)
        grace = self.limits.grace
        if self.state is not LIVE or not (self.named or grace):
            self.close(SOURCE_CLOSED, "source closed")
            return
        self.state = WAITING
        self.pace.resume()
        if not self.named:
            self._grace_timer = self._loop.timer(grace)
            self._grace_timer.start(self._grace_over)
        self.announce_presence()
        self.outbox.wake()                       # its drainer stops; writes wait for the next source

    def _grace_over(self):
        self._grace_timer = None
        if self.state is WAITING:
            self.close(SOURCE_CLOSED, "source closed")

    def close(self, code=SOURCE_CLOSED, reason="source closed"):
        """No more messages: subscribers drain their backlog, then get ``code``."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self.close_code, self.close_reason = code, reason
        self.cancel_grace()
        self.pace.resume()
        self.announce_presence()
        self.outbox.close()
        self.events.room_closed(self)
        for sub in list(self.subscribers):
            sub.close_after_drain(code, reason)

    # -- for a room that builds on this one (cluster.room.RedisRoom): the parts of the core it
    # -- uses, so that nothing outside this class touches its underscore names ---------------
    def encode_frame(self, payload, text):
        """``payload`` as the frame subscribers are sent (encoded once)."""
        return self._encode(payload, text)

    def append_frame(self, frame):
        """Append an encoded frame to the backlog (and serve the subscribers)."""
        self._append(frame)

    def pass_bytes(self, size):
        """A frame of ``size`` bytes went by with nobody to keep it for: offsets move on."""
        backlog = self.backlog
        backlog.pass_bytes(size)
        self.pace.lead_pos = backlog.head_pos

    def forget_backlog(self):
        """Drop the whole backlog: what follows starts at the head."""
        backlog = self.backlog
        backlog.forget()
        self.pace.lead_pos = backlog.head_pos

    def announce_presence(self):
        """The room's presence may have changed: wake whoever waits on it."""
        event, self._presence = self._presence, Event()
        event.set()

    def cancel_grace(self):
        """Stop the grace period's timer, if one runs (someone else decides when it ends)."""
        if self._grace_timer is not None:
            self._grace_timer.close()
            self._grace_timer = None

    def mark_fed(self):
        """A source fed the room once (elsewhere): the next one here resumes it."""
        self._fed = True

    def call_soon(self, callback):
        """Run ``callback`` in the event loop, after this turn's callbacks."""
        self._loop.run_callback(callback)

    def now(self):
        """The room's monotonic clock."""
        return self._monotonic()
