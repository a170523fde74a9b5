"""A room's shared backlog: its source's frames, encoded once, that its subscribers still need.

Every subscriber is a cursor into it (:class:`~sphincter_lib.rooms.cursor.Subscriber`): a frame
sequence number ``seq`` and the absolute byte offset ``pos`` where that frame starts. Offsets
and sequence numbers only grow; ``frames[k]`` is frame ``base_seq + k`` and ends at offset
``ends[k]``, so a cursor finds how many frames fit in a batch with one bisection of ``ends``.

The budget is per cursor: one that falls more than ``buffer_bytes`` behind the head is cut
(close 4408) or, in a ``skip`` room, jumps to the newest whole frame (:meth:`Backlog.reclaim`,
run once the head has moved a budget past the last trim). The backlog keeps the frames of the
slowest cursor left, plus the replay window (the newest ``replay`` frames that fit in
``buffer_bytes``), and nothing else: a room holds at most ``buffer_bytes`` plus one frame,
whatever its subscribers do. :meth:`Backlog.sweep` (the registry's periodic sweep, through
``Room.sweep``) cuts cursors that have frames waiting and made no progress for
``stall_timeout`` seconds, so that a room whose every subscriber froze lets its source go.

Parked cursors (writers asleep, caught up) are woken by one event-loop callback per burst of
appends (:meth:`Backlog.flush`), which first offers each its ``direct`` hook: a non-blocking
send, so that a caught-up subscriber costs no greenlet switch per batch.

The cursor reads ``frames``, ``ends``, ``base_seq``, ``head_seq`` and ``head_pos`` directly,
on the data path (one attribute each, no call); only the backlog writes them.
"""

import logging
from bisect import bisect_left

from .interface import SLOW_CLOSE

#: the room's logger (README, logging): the room logs nothing else, and a log filter on
#: ``sphincter.rooms.room`` still sees cut-offs, skips and stalls
logger = logging.getLogger("sphincter.rooms.room")


class Backlog:
    """The frames a room's subscribers still need, the budget over them, the parked cursors."""

    __slots__ = ("room", "frames", "ends", "base_seq", "base_pos", "head_seq", "head_pos",
                 "subscribers", "buffer_bytes", "replay", "reclaim_at", "parked",
                 "_flush_scheduled", "_call_soon")

    def __init__(self, room, buffer_bytes, replay, call_soon):
        #: the room it belongs to: :meth:`reclaim` applies its policy (``skip``), moves its
        #: ``pace``'s lead and counts in its figures (``slow_cutoffs``, ``skipped``, ``stats``)
        self.room = room
        #: encoded frames (``bytes`` or a ``(header, payload)`` pair); ``frames[k]`` is frame
        #: ``base_seq + k`` and ends at absolute byte offset ``ends[k]``
        self.frames = []
        self.ends = []
        #: the first frame still kept, and the offset where it starts
        self.base_seq = 0
        self.base_pos = 0
        #: the next frame to come, and the offset where it will start
        self.head_seq = 0
        self.head_pos = 0
        #: the room's subscribers (the room's own set, read here)
        self.subscribers = room.subscribers
        #: how far a cursor may fall behind the head (bytes) before it is cut or skips
        self.buffer_bytes = buffer_bytes
        #: frames kept for whoever joins (whole frames, at most ``buffer_bytes``)
        self.replay = replay
        #: :meth:`reclaim` is due once the head passes this offset
        self.reclaim_at = buffer_bytes
        #: cursors asleep until new frames come (a cursor parks itself: ``Subscriber.wait``)
        self.parked = []
        self._flush_scheduled = False
        self._call_soon = call_soon

    @property
    def bytes(self):
        """Bytes kept (frames nobody needs are dropped)."""
        return self.head_pos - self.base_pos

    def append(self, frame):
        """Append one encoded frame (``bytes`` or a ``(header, payload)`` pair). Never blocks."""
        self.head_seq += 1
        self.head_pos = head = self.head_pos + (len(frame) if frame.__class__ is not tuple
                                                else len(frame[0]) + len(frame[1]))
        self.frames.append(frame)
        self.ends.append(head)
        if not self.subscribers:              # a replay room with nobody in it: the window only
            if len(self.frames) >= 2 * self.replay or head > self.reclaim_at:
                self.trim_to(self.head_seq)
            return
        if head > self.reclaim_at:
            self.reclaim()
        if self.parked and not self._flush_scheduled:
            self._flush_scheduled = True
            self._call_soon(self.flush)

    def pass_bytes(self, size):
        """A frame of ``size`` bytes nobody will receive: only the offsets move (nothing is kept)."""
        self.head_seq += 1
        self.head_pos += size
        self.base_seq, self.base_pos = self.head_seq, self.head_pos

    def forget(self):
        """Drop every frame: what follows starts at the head."""
        del self.frames[:]
        del self.ends[:]
        self.base_seq, self.base_pos = self.head_seq, self.head_pos

    def flush(self):
        """From the event loop, after a burst of appends: serve the parked cursors.

        Each gets a chance to write its new frames directly (its ``direct`` hook: a
        non-blocking send); only those that cannot — the send would block, a large frame, a
        close — are unparked and their writer greenlet woken.
        """
        self._flush_scheduled = False
        parked, self.parked = self.parked, []
        keep = self.parked.append
        for sub in parked:
            direct = sub.direct
            if direct is not None and sub.active and direct():
                keep(sub)                         # served: its writer stays asleep
            else:
                sub.unpark()

    def reclaim(self):
        """Cut the cursors over budget (or, with ``skip``, jump them to the newest frame:
        ``Subscriber.jump``); then keep only what the slowest one left needs."""
        room = self.room
        head_seq, head_pos = self.head_seq, self.head_pos
        limit = head_pos - self.buffer_bytes
        min_seq, min_pos = head_seq, head_pos
        newest = None
        for sub in list(self.subscribers):
            if sub.pos < limit:
                if room.skip:
                    if newest is None:
                        newest = head_seq - 1, self.frame_start(head_seq - 1)
                    n = sub.jump(*newest)
                    room.skipped += n
                    room.stats.skipped_messages += n
                    logger.debug("room %s: subscriber %s skipped %d messages", room.code, sub.peer, n)
                    if sub.pos < min_pos:
                        min_seq, min_pos = sub.seq, sub.pos
                    continue
                room.slow_cutoffs += 1
                room.stats.slow_cutoffs += 1
                logger.debug("room %s: subscriber %s cut off, %d bytes behind",
                             room.code, sub.peer, sub.lag_bytes)
                sub.kick(SLOW_CLOSE, "too slow")
            elif sub.pos < min_pos:
                min_seq, min_pos = sub.seq, sub.pos
        pace = room.pace
        if newest is not None and pace.lead is not None and pace.lead.unread:
            pace.recompute(self.subscribers)     # the lead itself was skipped (no flow control)
        self.trim_to(min_seq)

    def sweep(self, now, stall_timeout):
        """Cut the cursors with frames waiting that made no progress for ``stall_timeout``
        seconds (so that a room whose every subscriber froze lets its source go)."""
        room, head = self.room, self.head_pos
        for sub in list(self.subscribers):
            if sub.pos != sub.swept_pos or sub.pos >= head or sub.progress_at is None:
                sub.swept_pos, sub.progress_at = sub.pos, now
            elif now - sub.progress_at >= stall_timeout and not sub.closing:
                room.slow_cutoffs += 1
                room.stats.slow_cutoffs += 1
                room.stats.stall_cutoffs += 1
                logger.debug("room %s: subscriber %s stalled for %.1fs, %d bytes behind: cut off",
                             room.code, sub.peer, now - sub.progress_at, head - sub.pos)
                sub.kick(SLOW_CLOSE, "stalled")

    def replay_to(self, sub):
        """A joining cursor starts at the replay window (if any); returns the frames it gets."""
        if not self.replay or self.head_seq <= self.base_seq:
            return 0
        start = self.replay_start()
        sub.seq, sub.pos = start, self.frame_start(start)
        sub.swept_pos = sub.pos
        return self.head_seq - start

    def frame_start(self, seq):
        """Absolute byte offset where frame ``seq`` (still kept, or the head) begins."""
        k = seq - self.base_seq
        return self.ends[k - 1] if k > 0 else self.base_pos

    def trim_to(self, seq):
        """Drop frames before ``seq`` (the slowest cursor's next frame, or the head), but keep
        the replay window; the next reclaim is due once the head is a budget past ``seq``."""
        reclaim_at = self.frame_start(seq) + self.buffer_bytes
        if self.replay:
            seq = min(seq, self.replay_start())
        k = seq - self.base_seq
        if k > 0:
            pos = self.ends[k - 1]
            del self.frames[:k]
            del self.ends[:k]
            self.base_seq, self.base_pos = seq, pos
        self.reclaim_at = reclaim_at

    def replay_start(self):
        """The first frame a joining subscriber gets: the newest ``replay`` frames that fit in
        ``buffer_bytes`` (whole frames only)."""
        seq = max(self.base_seq, self.head_seq - self.replay)
        limit = self.head_pos - self.buffer_bytes
        if self.frame_start(seq) < limit:
            seq = self.base_seq + bisect_left(self.ends, limit) + 1
        return min(seq, self.head_seq)
