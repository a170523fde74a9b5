"""A room's pace (its flow control in this process): its lead, and pausing its source's reads.

The *lead* is the subscriber that has *read* furthest: the greatest ``pos - unread`` (a
``skip`` jump moves a cursor without its reading; see ``Subscriber.jump``). While the lead is
``high_water`` bytes or more behind the head, the room's source should wait
(``Room.source_must_wait``); its reader waits in :meth:`Pace.wait` once :meth:`Pace.pause` is
called, and reads again when the lead is back under ``low_water`` (:meth:`Pace.resume`). The
room thus moves at the speed of its fastest subscriber and never waits for the slowest.

The cursor moves the lead on the data path (``Subscriber.commit`` writes ``lead`` and
``lead_pos`` and reads ``paused``, ``low_water`` and ``lead_watch``: one attribute each);
the room recomputes it when the lead leaves or was skipped, and a newcomer may take it.

(A room holds it as ``room.pace``; ``flow`` is the Redis room's flow control across nodes,
``cluster/flow.py``, which reads this one through the room's names: ``lead_pos``, ...)
"""

from gevent.event import Event


class Pace:
    """One room's lead and source pauses (see the module docstring)."""

    __slots__ = ("backlog", "high_water", "low_water", "lead", "lead_pos", "lead_watch",
                 "paused", "pauses", "paused_seconds", "_paused_since", "_readers",
                 "_monotonic", "_stats")

    def __init__(self, backlog, high_water, low_water, stats, monotonic):
        #: the room's backlog (its head is what the lead is behind)
        self.backlog = backlog
        #: the source waits while the lead is this many bytes behind the head, or more...
        self.high_water = high_water
        #: ...until the lead is back at or under this
        self.low_water = low_water
        #: the subscriber that has read furthest (None without subscribers), and its cursor
        #: (the head while there is none: see ``Room.lead_pos``)
        self.lead = None
        self.lead_pos = 0
        #: a position whose passing by the lead calls ``Room.lead_passed`` (None: off)
        self.lead_watch = None
        #: True while the source's reader is told to wait
        self.paused = False
        #: pauses so far, and the seconds they lasted (finished pauses)
        self.pauses = 0
        self.paused_seconds = 0.0
        self._paused_since = 0.0
        self._readers = Event()              # set while the source may read
        self._readers.set()
        self._monotonic = monotonic
        self._stats = stats

    @property
    def lead_unread(self):
        """Bytes the lead's cursor moved without its reading them (0 without a lead)."""
        return self.lead.unread if self.lead is not None else 0

    def pause(self):
        """The source's reader is to wait (counted once per pause)."""
        if not self.paused:
            self.paused = True
            self._paused_since = self._monotonic()
            self.pauses += 1
            self._stats.source_pauses += 1
            self._readers.clear()

    def resume(self):
        """The source's reader may read again (the pause's time is counted)."""
        if self.paused:
            self.paused = False
            paused = self._monotonic() - self._paused_since
            self.paused_seconds += paused
            self._stats.source_paused_seconds += paused
            self._readers.set()

    def wait(self, timeout=None):
        """Block the calling greenlet until the source may read (or ``timeout``); True if it may."""
        return self._readers.wait(timeout)

    def paused_for(self, now=None):
        """Seconds the source has waited in all, the current pause included."""
        if not self.paused:
            return self.paused_seconds
        return self.paused_seconds + (self._monotonic() if now is None else now) - self._paused_since

    def joined(self, sub):
        """``sub`` joined: it leads if it has read further than the lead (a newcomer at the
        head keeps up, so far); the source may read again if the lead is now close enough."""
        lead = self.lead
        if lead is None or sub.pos > lead.pos - lead.unread:
            self.lead, self.lead_pos = sub, sub.pos
        if self.paused and self.backlog.head_pos - self.lead_pos <= self.low_water:
            self.resume()

    def recompute(self, subscribers):
        """Find the lead again among ``subscribers`` (it left, or was skipped)."""
        self.lead = lead = max(subscribers, key=lambda s: s.pos - s.unread, default=None)
        head = self.backlog.head_pos
        self.lead_pos = lead.pos if lead is not None else head
        if self.paused and head - self.lead_pos <= self.low_water:
            self.resume()
