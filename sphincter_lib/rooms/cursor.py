"""A subscriber of a room: its cursor into the room's shared backlog, and its wake-up event.

The cursor is the room's other half (see ``rooms/room.py``): it reads the
backlog's frames and ends and the room's flow-control state on the data path
(:meth:`Subscriber.take`, :meth:`Subscriber.commit`), and parks itself on the
room; ``tests/unit/test_privates.py`` lists those accesses.
"""

from bisect import bisect_right

from gevent.event import Event


class Subscriber:
    """One subscriber's cursor into its room's backlog, and its wake-up event."""

    __slots__ = ("room", "peer", "seq", "pos", "_next", "_event", "_parked",
                 "closing", "close_code", "close_reason", "close_now", "interrupt", "direct", "active",
                 "swept_pos", "progress_at", "unread", "__weakref__")

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
        self.interrupt = None            # delivery hooks: see attach()
        self.direct = None
        self.active = True               # False once it left or was kicked
        self.swept_pos = self.pos        # the cursor at the last stall sweep
        self.progress_at = None          # when the last sweep saw it move or caught up
        #: bytes its cursor jumped over (``skip``): ``pos - unread`` is how far it got by
        #: reading, which decides who leads (see Room._skip_behind)
        self.unread = 0

    def attach(self, direct=None, interrupt=None):
        """The connection's delivery hooks (both optional, both called from the event loop).

        ``direct()``: new frames arrived while the writer is parked; write them
        without blocking and return True, or return False to have the writer
        woken instead. ``interrupt()``: the subscriber was kicked; abort a write
        that may be blocked.
        """
        self.direct, self.interrupt = direct, interrupt

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
        lead = room.lead
        if lead is not self:
            if not self.active or (lead is not None and pos - self.unread <= lead.pos - lead.unread):
                return
            room.lead = self             # it has read further than the lead
        room.lead_pos = pos
        if room._source_paused and room.head_pos - pos <= room.low_water:
            room._resume_source()
        elif room.lead_watch is not None and pos >= room.lead_watch:
            room.lead_passed()

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
