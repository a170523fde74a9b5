"""Rooms: one source's messages fanned out to its subscribers.

Data path: ``Room.publish(payload, text)`` encodes the message as a frame
**once** and appends it to the room's shared *backlog*; every subscriber has a
cursor into that backlog. A subscriber's writer (an adapter, see ``web.py``)
calls :meth:`Subscriber.take` to get everything from its cursor on as one
buffer (bounded by a batch size), writes it, then :meth:`Subscriber.commit`.

Why a shared backlog and not a queue per subscriber: publishing costs O(1)
however many subscribers there are, frames are stored once, and the same
structure gives replay of recent messages later. The budget is per
subscriber: one whose cursor falls more than ``buffer_bytes`` behind the head
is cut off (close 4408); the backlog keeps only what the slowest remaining
subscriber still needs, so a room holds at most ``buffer_bytes`` plus one
message, whatever its subscribers do. Publishing never blocks.

Flow control: the room tracks its *lead* — the cursor of its fastest
subscriber. While the lead is ``high_water`` bytes or more behind the head,
:meth:`Room.source_must_wait` is true and the source's reader waits in
:meth:`Room.wait_for_readers` (TCP backpressure slows the source down) until
the lead is back under ``low_water``. The room thus moves at the speed of its
fastest subscriber and never waits for the slowest: those more than
``buffer_bytes`` behind are cut (policy ``cut``) or jump to the newest whole
message (policy ``skip``). A room without subscribers never makes its source
wait. :meth:`RoomRegistry.sweep` cuts subscribers that have data waiting and
made no progress for ``stall_timeout`` seconds, so a room whose every
subscriber froze lets its source go.

Room lifecycle: ``live`` (a source publishes) → ``closed`` (no more messages;
subscribers drain what is queued, then get the close code). Rooms are
registered by code in :class:`RoomRegistry`; a closed room's code is unknown
from then on.
"""

import logging
import time
from bisect import bisect_right

from gevent import get_hub
from gevent.event import Event

from .errors import RoomFullError, RoomLimitError, RoomNotFound, ShuttingDown
from .roomcode import make_code, normalize
from .stats import Stats

logger = logging.getLogger(__name__)

LIVE, CLOSED = "live", "closed"
#: slow-subscriber policies: close it (4408), or jump it to the newest whole message
CUT, SKIP = "cut", "skip"

#: close code for a subscriber cut off because it fell too far behind
SLOW_CLOSE = 4408
#: close code for subscribers of a room whose source closed
SOURCE_CLOSED = 4410


class Subscriber:
    """One subscriber's cursor into its room's backlog, and its wake-up event."""

    __slots__ = ("room", "peer", "seq", "pos", "_next", "_event", "_parked",
                 "closing", "close_code", "close_reason", "close_now", "interrupt", "direct", "active",
                 "swept_pos", "progress_at", "__weakref__")

    def __init__(self, room, peer):
        self.room = room
        self.peer = peer
        self.seq = room.head_seq         # absolute index of the next frame to send
        self.pos = room.head_pos         # absolute byte offset of that frame
        self._next = None
        self._event = Event()
        self._parked = False
        self.closing = False             # True once the subscriber is to be closed
        self.close_code = None           # the code to close with (None: no status code)
        self.close_reason = ""
        self.close_now = False           # True: close without draining the backlog
        #: called (no arguments) when the subscriber is kicked, to abort a blocked write
        self.interrupt = None
        #: called from the event loop while parked and new frames arrived: writes them without
        #: blocking and returns True, or returns False to have the writer woken instead
        self.direct = None
        self.active = True               # False once it left or was kicked
        self.swept_pos = self.pos        # the cursor at the last stall sweep
        self.progress_at = None          # when the last sweep saw it move or caught up

    @property
    def lag_bytes(self):
        return self.room.head_pos - self.pos

    def take(self, limit):
        """Frames from the cursor on, joined, at most ``limit`` bytes (at least one frame).

        Returns None when the subscriber is caught up; a lone frame as encoded
        (``bytes`` or a ``(header, payload)`` pair for a large one) when the
        next frame alone reaches ``limit``. Call :meth:`commit` once written.
        """
        room = self.room
        frames = room._frames
        i = self.seq - room._base_seq
        n = len(frames)
        if i >= n:
            return None
        ends = room._ends
        j = bisect_right(ends, self.pos + limit, i, n)
        if j <= i + 1:
            self._next = (self.seq + 1, ends[i])
            return frames[i]
        self._next = (self.seq + j - i, ends[j - 1])
        try:
            return b"".join(frames[i:j])
        except TypeError:              # a (header, payload) pair below the limit
            return b"".join(b"".join(f) if f.__class__ is tuple else f for f in frames[i:j])

    def commit(self):
        """Advance the cursor past what the last :meth:`take` returned.

        A cursor that jumped ahead meanwhile (``skip`` policy) stays where it is."""
        seq, pos = self._next
        self._next = None
        if seq <= self.seq:
            return
        room = self.room
        stats = room.stats
        stats.messages_out += seq - self.seq
        stats.bytes_out += pos - self.pos
        self.seq, self.pos = seq, pos
        if pos > room.lead_pos:
            room.lead_pos = pos
            if room._source_paused and room.head_pos - pos <= room.low_water:
                room._resume_source()

    def skip_to(self, seq, pos):
        """Jump forward to frame ``seq`` at byte ``pos`` (a frame boundary); returns frames skipped.

        A batch being written goes out whole: what it holds is not counted as skipped."""
        start = self._next[0] if self._next is not None else self.seq
        self.seq, self.pos = seq, pos
        return max(0, seq - start)

    def caught_up(self):
        return self.seq >= self.room.head_seq

    def wait(self, timeout=None):
        """Park until there is something to do (new frames, a close, a wake-up)."""
        if not self._parked:
            self._parked = True
            self.room._parked.append(self)
        self._event.wait(timeout)
        self._event.clear()

    def wake(self):
        self._event.set()

    def kick(self, code, reason):
        """Close this subscriber now, without draining (slow, ping timeout, protocol error)."""
        if not self.close_now:
            self.close_code, self.close_reason = code, reason
            self.closing = self.close_now = True
        self.room._drop(self)
        self._event.set()
        if self.interrupt is not None:
            self.interrupt()

    def close_after_drain(self, code, reason):
        if not self.closing:
            self.close_code, self.close_reason, self.closing = code, reason, True
        self._event.set()

    def leave(self):
        """The connection is gone: stop counting it."""
        self.room._drop(self)


class Room:
    """A live code, its backlog of encoded frames, and its subscribers."""

    def __init__(self, code, peer, registry, clock=time.time):
        self.code = code
        self.peer = peer
        self.registry = registry
        self.stats = registry.stats
        self.buffer_bytes = registry.buffer_bytes
        self.max_subscribers = registry.max_subscribers_per_room
        self.flow_control = registry.flow_control
        self.high_water = registry.high_water
        self.low_water = registry.high_water // 2
        self.skip = registry.slow_policy == SKIP
        self._encode = registry.encode
        self._monotonic = registry.monotonic
        self.opened_at = clock()
        self.state = LIVE
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
        self.lead_pos = 0                # the fastest subscriber's cursor (head_pos when none)
        self._parked = []
        self._flush_scheduled = False
        self._loop = get_hub().loop
        self._reclaim_at = self.buffer_bytes

    def __repr__(self):
        return "<Room %s %s subscribers=%d>" % (self.code, self.state, len(self.subscribers))

    @property
    def backlog_bytes(self):
        return self.head_pos - self._base_pos

    def publish(self, payload, text):
        """Encode ``payload`` once and queue it for every subscriber. Never blocks."""
        if self.state is not LIVE:
            return
        self.messages += 1
        self.bytes += len(payload)
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += len(payload)
        self.head_seq += 1
        if not self.subscribers:
            # nobody to deliver to: not even encoded (offsets only need to grow)
            self.head_pos += len(payload)
            self._base_seq, self._base_pos = self.head_seq, self.head_pos
            self.lead_pos = self.head_pos
            return
        frame = self._encode(payload, text)
        self.head_pos += len(frame) if frame.__class__ is not tuple else len(frame[0]) + len(frame[1])
        self._frames.append(frame)
        self._ends.append(self.head_pos)
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
                    n = sub.skip_to(*newest)
                    self.skipped += n
                    self.stats.skipped_messages += n
                    logger.debug("room %s: subscriber %s skipped %d messages", self.code, sub.peer, n)
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
        self._trim(min_seq, min_pos)
        self._reclaim_at = min_pos + self.buffer_bytes

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
        if not self._source_paused:
            self._source_paused = True
            self._paused_since = self._monotonic()
            self.source_pauses += 1
            self.stats.source_pauses += 1
            self._readers.clear()
        self._readers.wait()

    def _resume_source(self):
        if self._source_paused:
            self._source_paused = False
            paused = self._monotonic() - self._paused_since
            self.paused_seconds += paused
            self.stats.source_paused_seconds += paused
            self._readers.set()

    @property
    def source_paused(self):
        return self._source_paused

    def paused_for(self, now=None):
        """Seconds the source has waited in all, the current pause included."""
        if not self._source_paused:
            return self.paused_seconds
        return self.paused_seconds + (self._monotonic() if now is None else now) - self._paused_since

    def _recompute_lead(self):
        self.lead_pos = max((s.pos for s in self.subscribers), default=self.head_pos)
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

    def _trim(self, seq, pos):
        k = seq - self._base_seq
        if k > 0:
            del self._frames[:k]
            del self._ends[:k]
            self._base_seq, self._base_pos = seq, pos

    def subscribe(self, peer):
        if self.state is not LIVE:
            raise RoomNotFound()
        if len(self.subscribers) >= self.max_subscribers:
            raise RoomFullError()
        sub = Subscriber(self, peer)
        self.subscribers.add(sub)
        self.lead_pos = self.head_pos        # it is caught up: the fastest there is
        if self._source_paused:
            self._resume_source()
        if len(self.subscribers) > self.peak_subscribers:
            self.peak_subscribers = len(self.subscribers)
        self.registry._subscriber_delta(1)
        return sub

    def _drop(self, sub):
        if not sub.active:
            return
        sub.active = False
        self.subscribers.discard(sub)
        self.registry._subscriber_delta(-1)
        if not self.subscribers:
            self._trim(self.head_seq, self.head_pos)
            self._reclaim_at = self.head_pos + self.buffer_bytes
        if sub.pos >= self.lead_pos or not self.subscribers:
            self._recompute_lead()

    def close(self, code=SOURCE_CLOSED, reason="source closed"):
        """No more messages: subscribers drain their backlog, then get ``code``."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self.close_code, self.close_reason = code, reason
        self._resume_source()
        self.registry._closed(self)
        for sub in list(self.subscribers):
            sub.close_after_drain(code, reason)


class RoomRegistry:
    """Live rooms by code; the limits; the seam a shared (Redis) broker will implement."""

    def __init__(self, encode, max_rooms=1000, max_subscribers_per_room=10000,
                 buffer_bytes=4 << 20, stats=None, new_code=make_code, clock=time.time,
                 flow_control=True, high_water=None, slow_policy=CUT, stall_timeout=30.0,
                 monotonic=time.monotonic):
        self.encode = encode
        self.max_rooms = max_rooms
        self.max_subscribers_per_room = max_subscribers_per_room
        self.buffer_bytes = buffer_bytes
        #: make a source wait while its room's fastest subscriber is ``high_water`` bytes behind
        self.flow_control = flow_control
        self.high_water = high_water if high_water else buffer_bytes // 2
        if slow_policy not in (CUT, SKIP):
            raise ValueError("slow_policy must be %r or %r" % (CUT, SKIP))
        self.slow_policy = slow_policy
        #: seconds a subscriber with data waiting may make no progress (0: forever)
        self.stall_timeout = stall_timeout
        self.monotonic = monotonic
        self.stats = stats if stats is not None else Stats()
        self._new_code = new_code
        self._clock = clock
        self._rooms = {}
        self.subscriber_count = 0
        self.shutting_down = False

    def __len__(self):
        return len(self._rooms)

    def rooms(self):
        return list(self._rooms.values())

    def open(self, peer):
        """A new live room with a fresh code, or RoomLimitError / ShuttingDown."""
        if self.shutting_down:
            raise ShuttingDown()
        if len(self._rooms) >= self.max_rooms:
            raise RoomLimitError()
        code = self._new_code(self._rooms)
        room = Room(code, peer, self, clock=self._clock)
        self._rooms[code] = room
        self.stats.rooms_opened += 1
        return room

    def get(self, code):
        """The live room for a code typed by a person (case-insensitive), or RoomNotFound."""
        if self.shutting_down:
            raise ShuttingDown()
        room = self._rooms.get(normalize(code))
        if room is None:
            raise RoomNotFound()
        return room

    def subscribe(self, code, peer):
        return self.get(code).subscribe(peer)

    def _closed(self, room):
        if self._rooms.get(room.code) is room:
            del self._rooms[room.code]
            self.stats.rooms_closed += 1

    def _subscriber_delta(self, n):
        self.subscriber_count += n
        if n > 0:
            self.stats.subscribers_joined += n
        else:
            self.stats.subscribers_left -= n

    def sweep(self, now=None):
        """Cut stalled subscribers in every room (call every ``sweep_interval`` seconds)."""
        if not self.stall_timeout:
            return
        now = self.monotonic() if now is None else now
        for room in list(self._rooms.values()):
            if room.head_pos != room._base_pos:        # nothing waiting: nobody can be stalled
                room.sweep(now, self.stall_timeout)

    @property
    def sweep_interval(self):
        """How often :meth:`sweep` should run: a quarter of the stall timeout, at most 1 s."""
        return min(1.0, self.stall_timeout / 4.0) if self.stall_timeout else None

    def close_all(self, code, reason):
        """Refuse new rooms and subscribers; close every room (subscribers drain, then ``code``)."""
        self.shutting_down = True
        for room in list(self._rooms.values()):
            room.close(code, reason)
