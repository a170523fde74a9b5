"""A subscriber of a room: its cursor into the room's shared backlog, and its wake-up event.

The cursor reads the backlog (``rooms/backlog.py``: ``frames``, ``ends``, ``base_seq``, the
head) in :meth:`Subscriber.take`, and moves the room's lead (``rooms/pace.py``) in
:meth:`Subscriber.commit`: it holds both, so the data path costs one attribute per name and
no call. It parks itself on the backlog (:meth:`Subscriber.wait`); the backlog's flush serves
it directly or unparks it (:meth:`Subscriber.unpark`).

A connection with no greenlet of its own gives the cursor a ``waker`` (:meth:`Subscriber.attach`):
every wake-up (unparked, kicked, closing, :meth:`Subscriber.wake`) calls it instead of setting an
event, and its writer parks the cursor with :meth:`Subscriber.park` instead of waiting. The
event exists only for a writer that waits (:meth:`Subscriber.wait`).
"""

from bisect import bisect_right

from gevent.event import Event


class Subscriber:
    """One subscriber's cursor into its room's backlog, and its wake-up event."""

    __slots__ = ("room", "backlog", "pace", "peer", "seq", "pos", "_next", "_event", "_parked",
                 "closing", "close_code", "close_reason", "close_now", "interrupt", "direct", "waker", "active",
                 "swept_pos", "progress_at", "unread", "__weakref__")

    def __init__(self, room, peer):
        self.room = room
        backlog = self.backlog = room.backlog
        self.pace = room.pace
        self.peer = peer
        self.seq = backlog.head_seq      # absolute index of the next frame to send
        self.pos = backlog.head_pos      # absolute byte offset of that frame
        self._next = None
        self._event = None               # made by the first wait() (a waker needs none)
        self._parked = False
        self.closing = False             # True once the subscriber is to be closed
        self.close_code = None           # the code to close with (None: no status code)
        self.close_reason = ""
        self.close_now = False           # True: close without draining the backlog
        self.interrupt = None            # delivery hooks: see attach()
        self.direct = None
        self.waker = None
        self.active = True               # False once it left or was kicked
        self.swept_pos = self.pos        # the cursor at the last stall sweep
        self.progress_at = None          # when the last sweep saw it move or caught up
        #: bytes its cursor jumped over (``skip``): ``pos - unread`` is how far it got by
        #: reading, which decides who leads (see :meth:`jump`)
        self.unread = 0

    def attach(self, direct=None, interrupt=None, waker=None):
        """The connection's delivery hooks (all optional; none may block or switch).

        ``direct()``: new frames arrived while the writer is parked; write them
        without blocking and return True, or return False to have the writer
        woken instead. ``interrupt()``: the subscriber was kicked; abort a write
        that may be blocked. ``waker()``: there is something to do (new frames
        ``direct`` could not send, a close, :meth:`wake`); without it, a writer
        waiting in :meth:`wait` is woken.
        """
        self.direct, self.interrupt, self.waker = direct, interrupt, waker

    @property
    def lag_bytes(self):
        return self.backlog.head_pos - self.pos

    def take(self, limit):
        """Frames from the cursor on, joined, at most ``limit`` bytes (at least one frame).

        Returns None when the subscriber is caught up; a lone frame as encoded
        (``bytes`` or a ``(header, payload)`` pair for a large one) when the
        next frame alone reaches ``limit``. Call :meth:`commit` once written.
        """
        backlog = self.backlog
        frames = backlog.frames
        i = self.seq - backlog.base_seq
        n = len(frames)
        if i >= n:
            return None
        ends = backlog.ends
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
        stats = self.room.stats
        stats.messages_out += seq - self.seq
        stats.bytes_out += pos - self.pos
        self.seq, self.pos = seq, pos
        pace = self.pace
        lead = pace.lead
        if lead is not self:
            if not self.active or (lead is not None and pos - self.unread <= lead.pos - lead.unread):
                return
            pace.lead = self             # it has read further than the lead
        pace.lead_pos = pos
        if pace.paused and self.backlog.head_pos - pos <= pace.low_water:
            pace.resume()
        elif pace.lead_watch is not None and pos >= pace.lead_watch:
            self.room.lead_passed()      # through the room: a room may override it

    def skip_to(self, seq, pos):
        """Jump forward to frame ``seq`` at byte ``pos`` (a frame boundary); returns frames skipped.

        A batch being written goes out whole: what it holds is not counted as skipped."""
        start = self._next[0] if self._next is not None else self.seq
        self.seq, self.pos = seq, pos
        return max(0, seq - start)

    def jump(self, seq, pos):
        """``skip``: the cursor fell a budget behind; it jumps to frame ``seq`` (at ``pos``).
        Returns the frames skipped.

        The jump carries it past the lead without its having read that far. Were it then the
        lead (the furthest cursor), the source would read on for it, and the real fastest
        reader would fall a budget behind and be skipped in turn. So the bytes jumped over
        count as ``unread``: the lead is the subscriber that has *read* furthest, and this one
        leads again only once it has read more than the lead since (the faster reader after all).
        """
        start = self._next[1] if self._next is not None else self.pos   # a batch in flight goes out
        n = self.skip_to(seq, pos)
        self.unread += max(0, pos - start)
        return n

    def caught_up(self):
        return self.seq >= self.backlog.head_seq

    def park(self):
        """Wait for new frames without waiting: the backlog's flush serves it or unparks it."""
        if not self._parked:
            self._parked = True
            self.backlog.parked.append(self)

    def wait(self, timeout=None):
        """Park until there is something to do (new frames, a close, a wake-up)."""
        self.park()
        event = self._event
        if event is None:
            event = self._event = Event()
        event.wait(timeout)
        event.clear()

    def _signal(self):
        if self.waker is not None:
            self.waker()
        else:
            if self._event is None:
                self._event = Event()
            self._event.set()

    def unpark(self):
        """The backlog took it off its parked cursors (it could not be served directly): wake
        its writer."""
        self._parked = False
        self._signal()

    def wake(self):
        self._signal()

    def kick(self, code, reason):
        """Close this subscriber now, without draining (slow, ping timeout, protocol error)."""
        if not self.close_now:
            self.close_code, self.close_reason = code, reason
            self.closing = self.close_now = True
        self.room.drop_subscriber(self)
        self._signal()
        if self.interrupt is not None:
            self.interrupt()

    def close_after_drain(self, code, reason):
        if not self.closing:
            self.close_code, self.close_reason, self.closing = code, reason, True
        self._signal()

    def leave(self):
        """The connection is gone: stop counting it."""
        self.room.drop_subscriber(self)
