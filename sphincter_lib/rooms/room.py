"""The in-memory room: one source's messages in a shared backlog, subscribers as cursors.

Data path: ``Room.publish(payload, text)`` encodes the message as a frame
**once** and appends it to the room's shared *backlog*; every subscriber has a
cursor into that backlog (:class:`~sphincter_lib.rooms.cursor.Subscriber`, in
``rooms/cursor.py``). A subscriber's writer (an adapter, see ``relay/session.py``)
calls :meth:`Subscriber.take` to get everything from its cursor on as one
buffer (bounded by a batch size), writes it, then :meth:`Subscriber.commit`.

Why a shared backlog and not a queue per subscriber: publishing costs O(1)
however many subscribers there are, frames are stored once, and the same
structure gives replay of recent messages later. The budget is per
subscriber: one whose cursor falls more than ``buffer_bytes`` behind the head
is cut off (close 4408); the backlog keeps only what the slowest remaining
subscriber still needs, so a room holds at most ``buffer_bytes`` plus one
message, whatever its subscribers do. Publishing never blocks.

Flow control: the room tracks its *lead* — its fastest subscriber: the one
that has *read* furthest (a ``skip`` jump is not reading: see
``Room._skip_behind``). While the lead is ``high_water`` bytes or more behind the head,
:meth:`Room.source_must_wait` is true and the source's reader waits in
:meth:`Room.wait_for_readers` (TCP backpressure slows the source down) until
the lead is back under ``low_water``. The room thus moves at the speed of its
fastest subscriber and never waits for the slowest: those more than
``buffer_bytes`` behind are cut (policy ``cut``) or jump to the newest whole
message (policy ``skip``). A room without subscribers never makes its source
wait. :meth:`Room.sweep` cuts subscribers that have data waiting and made no
progress for ``stall_timeout`` seconds, so a room whose every subscriber
froze lets its source go.

A room knows nothing of its registry: it gets its limits (:class:`RoomLimits`)
and an events listener (:class:`~sphincter_lib.rooms.interface.RoomEvents`) when made,
and tells the listener what happens to it. The interface the rest of the relay
uses is declared in :mod:`sphincter_lib.rooms.interface`.
"""

import logging
import time
from bisect import bisect_left

from gevent import get_hub
from gevent.event import Event

from ..errors import RoomFullError, RoomNotFound
from .interface import CLOSED, CUT, LIVE, SKIP, SLOW_CLOSE, SOURCE_CLOSED, WAITING
from .cursor import Subscriber
from .outbox import Outbox

logger = logging.getLogger("sphincter.rooms.room")


class RoomLimits:
    """A room's limits and policies, given to it when it is made (one shared instance)."""

    __slots__ = ("buffer_bytes", "max_subscribers", "flow_control", "high_water", "low_water",
                 "slow_policy", "replay", "grace", "write_queue_bytes")

    def __init__(self, buffer_bytes=4 << 20, max_subscribers=10000, flow_control=True,
                 high_water=None, slow_policy=CUT, replay=0, grace=0.0, write_queue_bytes=1 << 20):
        if slow_policy not in (CUT, SKIP):
            raise ValueError("slow_policy must be %r or %r" % (CUT, SKIP))
        #: how far a subscriber may fall behind the head (bytes) before it is cut or skips
        self.buffer_bytes = buffer_bytes
        #: most subscribers at once (more: RoomFullError, close 4429)
        self.max_subscribers = max_subscribers
        #: make the source wait while the fastest subscriber is ``high_water`` bytes behind
        self.flow_control = flow_control
        self.high_water = high_water if high_water else buffer_bytes // 2
        #: the source reads again once the fastest subscriber is back under this
        self.low_water = self.high_water // 2
        self.slow_policy = slow_policy
        #: a subscriber that joins first gets up to this many of the newest messages
        self.replay = replay
        #: seconds a room waits for its source to come back (``RESUME``); None: forever (named)
        self.grace = grace
        #: bytes of write-back messages queued toward the source before writers are paused
        self.write_queue_bytes = write_queue_bytes

    def but(self, **changes):
        """A copy with some limits changed (a named room's own options)."""
        copy = RoomLimits.__new__(RoomLimits)
        for name in self.__slots__:
            setattr(copy, name, changes[name] if changes.get(name) is not None else getattr(self, name))
        if "high_water" not in changes:
            copy.low_water = copy.high_water // 2
        return copy


class Room:
    """A code (or name), its backlog of encoded frames, its subscribers, its source if any.

    Lifecycle: ``live`` while a source feeds it; when the source leaves, a
    room with a grace period (or a named room, whose grace is endless) goes
    ``waiting`` — subscribers stay, new ones may join, a source may come back
    (:meth:`attach`) — else it closes. ``closed`` is final: subscribers drain,
    then get the close code.
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
        self.replay = limits.replay
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
        self.source_pauses = 0
        self.paused_seconds = 0.0        # time the source's reader spent waiting, finished pauses
        self._source_paused = False
        self._paused_since = 0.0
        self._readers = Event()          # set while the source may read
        self._readers.set()
        self.close_code = None
        self.close_reason = ""
        # the backlog: frames[k] ends at absolute byte offset ends[k]
        self._frames = []
        self._ends = []
        self._base_seq = 0
        self._base_pos = 0
        self.head_seq = 0
        self.head_pos = 0
        #: the subscriber that has read furthest (``pos - unread``), which flow control follows;
        #: ``lead_pos`` is its cursor (the head when there is none)
        self.lead = None
        self.lead_pos = 0
        self._parked = []
        self._flush_scheduled = False
        self._loop = get_hub().loop
        self._reclaim_at = self.buffer_bytes
        #: a position whose passing by the fastest subscriber calls :meth:`lead_passed` (None: off)
        self.lead_watch = None

    def __repr__(self):
        return "<Room %s %s subscribers=%d>" % (self.code, self.state, len(self.subscribers))

    @property
    def peer(self):
        """The source's address as text ('' without a source)."""
        return self.source.peer if self.source is not None else ""

    def lag_max(self):
        """Bytes the furthest-behind subscriber still has to receive."""
        return max((self.head_pos - s.pos for s in list(self.subscribers)), default=0)

    def read_budget(self, read_size):
        """Most bytes one read of the source may take: with flow control, one read must not carry
        the lead from just under high water past the budget (framing may grow bytes by half:
        a 1-byte line is 2 bytes read, a 3-byte frame)."""
        if not self.flow_control:
            return read_size
        return max(1, min(read_size, (self.buffer_bytes - self.high_water) * 2 // 3))
    @property
    def backlog_bytes(self):
        return self.head_pos - self._base_pos

    def publish(self, payload, text):
        """Encode ``payload`` once and queue it for every subscriber. Never blocks."""
        if self.state is not LIVE:
            return
        self._count_in(payload)
        if not self.subscribers and not self.replay:
            self._pass(len(payload))      # nobody to deliver to: not even encoded
            return
        self._append(self._encode(payload, text))

    def _count_in(self, payload):
        self.messages += 1
        self.bytes += len(payload)
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += len(payload)

    def _pass(self, size):
        """One message nobody will receive: only the offsets move (they need only grow)."""
        self.head_seq += 1
        self.head_pos += size
        self._base_seq, self._base_pos = self.head_seq, self.head_pos
        self.lead_pos = self.head_pos

    def _append(self, frame):
        """Append one encoded frame (``bytes`` or a ``(header, payload)`` pair) to the backlog."""
        self.head_seq += 1
        self.head_pos += len(frame) if frame.__class__ is not tuple else len(frame[0]) + len(frame[1])
        self._frames.append(frame)
        self._ends.append(self.head_pos)
        if not self.subscribers:              # a replay room with nobody in it: the window only
            self.lead_pos = self.head_pos
            if len(self._frames) >= 2 * self.replay or self.head_pos > self._reclaim_at:
                self._trim_to(self.head_seq)
            return
        if self.head_pos > self._reclaim_at:
            self._reclaim()
        if self._parked and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.run_callback(self._flush)

    def _flush(self):
        """From the event loop, after a burst of publishes: serve the parked subscribers.

        Each gets a chance to write its new frames directly (its ``direct``
        hook: a non-blocking send); only those that cannot — the send would
        block, a large frame, a close — have their writer greenlet woken. A
        caught-up subscriber thus costs no greenlet switch per batch.
        """
        self._flush_scheduled = False
        parked, self._parked = self._parked, []
        for sub in parked:
            direct = sub.direct
            if direct is not None and sub.active and direct():
                self._parked.append(sub)          # served: its writer stays asleep
            else:
                sub._parked = False
                sub._event.set()

    def _reclaim(self):
        """Cut subscribers over budget; drop frames nobody needs any more."""
        limit = self.head_pos - self.buffer_bytes
        min_seq, min_pos = self.head_seq, self.head_pos
        newest = None
        for sub in list(self.subscribers):
            if sub.pos < limit:
                if self.skip:
                    if newest is None:
                        newest = self.head_seq - 1, self._frame_start(self.head_seq - 1)
                    self._skip_behind(sub, *newest)
                    if sub.pos < min_pos:
                        min_seq, min_pos = sub.seq, sub.pos
                    continue
                self.slow_cutoffs += 1
                self.stats.slow_cutoffs += 1
                logger.debug("room %s: subscriber %s cut off, %d bytes behind",
                             self.code, sub.peer, sub.lag_bytes)
                sub.kick(SLOW_CLOSE, "too slow")
            elif sub.pos < min_pos:
                min_seq, min_pos = sub.seq, sub.pos
        if newest is not None and self.lead is not None and self.lead.unread:
            self._recompute_lead()           # the lead itself was skipped (no flow control)
        self._trim_to(min_seq)

    def _skip_behind(self, sub, seq, pos):
        """``skip``: ``sub`` fell a budget behind; it jumps to frame ``seq`` (at ``pos``).

        The jump carries ``sub`` past the lead without its having read that far. Were it then
        the lead (the furthest cursor), the source would read on for it, and the real fastest
        reader would fall a budget behind and be skipped in turn. So the bytes jumped over count
        as unread: the lead is the subscriber that has *read* furthest, and ``sub`` leads again
        only once it has read more than the lead since (it is the faster reader after all)."""
        start = sub._next[1] if sub._next is not None else sub.pos   # a batch in flight goes out
        n = sub.skip_to(seq, pos)
        sub.unread += max(0, pos - start)
        self.skipped += n
        self.stats.skipped_messages += n
        logger.debug("room %s: subscriber %s skipped %d messages", self.code, sub.peer, n)

    def _frame_start(self, seq):
        """Absolute byte offset where frame ``seq`` (still in the backlog) begins."""
        k = seq - self._base_seq
        return self._ends[k - 1] if k > 0 else self._base_pos

    # -- flow control ----------------------------------------------------------------
    def source_must_wait(self):
        """True while the source's reader should wait: its fastest subscriber is far behind."""
        return (self.flow_control and self.state is LIVE and bool(self.subscribers)
                and self.head_pos - self.lead_pos >= self.high_water)

    def wait_for_readers(self):
        """Block the calling (source reader) greenlet until the room may read again.

        Returns at once if it need not wait. Ends when the fastest subscriber is
        back under ``low_water``, leaves or is cut, or the room closes."""
        if not self.source_must_wait():
            return
        self._pause_source()
        self._readers.wait()

    def _pause_source(self):
        if not self._source_paused:
            self._source_paused = True
            self._paused_since = self._monotonic()
            self.source_pauses += 1
            self.stats.source_pauses += 1
            self._readers.clear()

    def _resume_source(self):
        if self._source_paused:
            self._source_paused = False
            paused = self._monotonic() - self._paused_since
            self.paused_seconds += paused
            self.stats.source_paused_seconds += paused
            self._readers.set()

    def lead_passed(self):
        """The fastest subscriber passed ``lead_watch`` (for a room shared across processes)."""
        self.lead_watch = None

    @property
    def lead_unread(self):
        """Bytes the lead's cursor moved without its reading them (0 without a lead)."""
        return self.lead.unread if self.lead is not None else 0

    @property
    def source_paused(self):
        return self._source_paused

    def paused_for(self, now=None):
        """Seconds the source has waited in all, the current pause included."""
        if not self._source_paused:
            return self.paused_seconds
        return self.paused_seconds + (self._monotonic() if now is None else now) - self._paused_since

    def _recompute_lead(self):
        """The lead: the subscriber that has read furthest (None without subscribers)."""
        self.lead = lead = max(self.subscribers, key=lambda s: s.pos - s.unread, default=None)
        self.lead_pos = lead.pos if lead is not None else self.head_pos
        if self._source_paused and self.head_pos - self.lead_pos <= self.low_water:
            self._resume_source()

    def sweep(self, now, stall_timeout):
        """Cut subscribers with data waiting that made no progress for ``stall_timeout`` s."""
        head = self.head_pos
        for sub in list(self.subscribers):
            if sub.pos != sub.swept_pos or sub.pos >= head or sub.progress_at is None:
                sub.swept_pos, sub.progress_at = sub.pos, now
            elif now - sub.progress_at >= stall_timeout and not sub.closing:
                self.slow_cutoffs += 1
                self.stats.slow_cutoffs += 1
                self.stats.stall_cutoffs += 1
                logger.debug("room %s: subscriber %s stalled for %.1fs, %d bytes behind: cut off",
                             self.code, sub.peer, now - sub.progress_at, head - sub.pos)
                sub.kick(SLOW_CLOSE, "stalled")

    def _trim_to(self, seq):
        """Drop frames before ``seq`` (the slowest subscriber's next frame, or the head), but keep
        the replay window; the next reclaim is due once the head is a budget past ``seq``."""
        reclaim_at = self._frame_start(seq) + self.buffer_bytes
        if self.replay:
            seq = min(seq, self._replay_start())
        k = seq - self._base_seq
        if k > 0:
            pos = self._ends[k - 1]
            del self._frames[:k]
            del self._ends[:k]
            self._base_seq, self._base_pos = seq, pos
        self._reclaim_at = reclaim_at

    def _replay_start(self):
        """The first frame a joining subscriber gets: the newest ``replay`` frames that fit in
        ``buffer_bytes`` (whole frames only)."""
        seq = max(self._base_seq, self.head_seq - self.replay)
        limit = self.head_pos - self.buffer_bytes
        if self._frame_start(seq) < limit:
            seq = self._base_seq + bisect_left(self._ends, limit) + 1
        return min(seq, self.head_seq)

    def subscribe(self, peer):
        if self.state is CLOSED:
            raise RoomNotFound()
        if len(self.subscribers) >= self.max_subscribers:
            raise RoomFullError()
        sub = Subscriber(self, peer)
        if self.replay and self.head_seq > self._base_seq:
            start = self._replay_start()
            sub.seq, sub.pos = start, self._frame_start(start)
            sub.swept_pos = sub.pos
            n = self.head_seq - start
            self.replayed += n
            self.stats.replayed_messages += n
        lead = self.lead
        if lead is None or sub.pos > lead.pos - lead.unread:
            self.lead, self.lead_pos = sub, sub.pos     # a newcomer at the head keeps up, so far
        self.subscribers.add(sub)
        if self._source_paused and self.head_pos - self.lead_pos <= self.low_water:
            self._resume_source()
        if len(self.subscribers) > self.peak_subscribers:
            self.peak_subscribers = len(self.subscribers)
        self.events.subscriber_joined(self, sub)
        return sub

    def _drop(self, sub):
        if not sub.active:
            return
        sub.active = False
        self.subscribers.discard(sub)
        self.events.subscriber_left(self, sub)
        if not self.subscribers:
            self._trim_to(self.head_seq)
        if sub is self.lead:
            self._recompute_lead()

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

    def _presence_change(self):
        event, self._presence = self._presence, Event()
        event.set()

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
        if self._grace_timer is not None:
            self._grace_timer.close()
            self._grace_timer = None
        self.state = LIVE
        if old is not None:
            self.takeovers += 1
            self.stats.takeovers += 1
            self.events.source_detached(self, old)
        elif self._fed:
            self.resumes += 1
            self.stats.resumes += 1
        self._fed = True
        self._resume_source()                    # the old reader stops; the new one decides afresh
        self.events.source_attached(self, source)
        self._presence_change()
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
        self._resume_source()
        if not self.named:
            self._grace_timer = self._loop.timer(grace)
            self._grace_timer.start(self._grace_over)
        self._presence_change()
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
        if self._grace_timer is not None:
            self._grace_timer.close()
            self._grace_timer = None
        self._resume_source()
        self._presence_change()
        self.outbox.close()
        self.events.room_closed(self)
        for sub in list(self.subscribers):
            sub.close_after_drain(code, reason)

    # -- for a room that builds on this one (cluster.room.RedisRoom): the parts of the core it
    # -- uses, so that nothing outside this class touches its underscore names ---------------
    def count_in(self, payload):
        """Count a message from the source (messages/bytes in)."""
        self._count_in(payload)

    def encode_frame(self, payload, text):
        """``payload`` as the frame subscribers are sent (encoded once)."""
        return self._encode(payload, text)

    def append_frame(self, frame):
        """Append an encoded frame to the backlog (and serve the subscribers)."""
        self._append(frame)

    def pass_bytes(self, size):
        """A frame of ``size`` bytes went by with nobody to keep it for: offsets move on."""
        self._pass(size)

    def forget_backlog(self):
        """Drop the whole backlog: what follows starts at the head."""
        del self._frames[:]
        del self._ends[:]
        self._base_seq, self._base_pos = self.head_seq, self.head_pos
        self.lead_pos = self.head_pos

    def trim_to(self, seq):
        self._trim_to(seq)

    def pause_source(self):
        self._pause_source()

    def resume_source(self):
        self._resume_source()

    def wait_readers(self, timeout):
        """Block until the source may read again (or ``timeout``)."""
        self._readers.wait(timeout)

    def announce_presence(self):
        """The room's presence may have changed: wake whoever waits on it."""
        self._presence_change()

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
