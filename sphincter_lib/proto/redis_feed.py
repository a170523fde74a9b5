"""Redis mode, sans-IO: the order of a room's batches as one node sees them.

Every batch a room's source publishes through Redis carries ``(epoch, seq)``: the epoch goes
up by one at every source attach anywhere (so a replaced source is *fenced*: what it still
sends is of an older epoch), the sequence counts the batches of that epoch from 1. A
:class:`RedisFeed` holds one node's view of that order for one room and, fed batch headers and
the ``last`` of room events, answers what to do with them: deliver, drop (a duplicate, an
older epoch, our own batch back from Redis), and whether batches were lost on the way (a
*gap*, with a phrase saying what). It does no I/O and knows no room: :class:`RedisRoom
<sphincter_lib.cluster.room.RedisRoom>` holds one, and acts on its decisions with its
:class:`~sphincter_lib.cluster.mirror.Mirror`.

A feed is *tainted* when the node's connection to Redis broke while it listened: batches
may have been lost without a trace, and the first batch or event that cannot prove
otherwise counts as a gap.
"""

__all__ = ["RedisFeed", "Decision", "DELIVER", "DROP_OWN", "DROP_OLDER_EPOCH", "DROP_DUPLICATE",
           "TAINT_GAP"]

#: what to do with a batch
DELIVER = "deliver"
DROP_OWN = "own"                  # this node publishes the room: its own batch, back from Redis
DROP_OLDER_EPOCH = "older epoch"  # from a source that was replaced
DROP_DUPLICATE = "duplicate"      # resent after a reconnect

#: the gap of a tainted feed that cannot tell what it lost
TAINT_GAP = "batches while the connection to Redis was down"


class Decision:
    """What to do with one batch: ``action`` (DELIVER or a DROP_*) and ``gap``: None, or what
    was lost before it (acted on before the batch is delivered)."""

    __slots__ = ("action", "gap")

    def __init__(self, action, gap=None):
        self.action = action
        self.gap = gap

    @property
    def deliver(self):
        return self.action == DELIVER

    def __eq__(self, other):
        return (isinstance(other, Decision) and self.action == other.action
                and self.gap == other.gap)

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "Decision(%r, %r)" % (self.action, self.gap)


class RedisFeed:
    """One room's batch order as one node sees it (see the module docstring).

    ``epoch`` is the room's epoch as known here (the newest seen); ``feed_epoch`` and
    ``next_seq`` the batch expected next (``next_seq`` None: take the next one as it comes);
    ``pub_seq`` the batches this node published in ``epoch`` (when it owns the room)."""

    def __init__(self):
        self.epoch = 0
        self.feed_epoch = 0
        self.next_seq = None
        self.tainted = False
        self.pub_seq = 0

    # -- the room's epoch ----------------------------------------------------------------
    def set_epoch(self, epoch, feeding):
        """A newer epoch began (a source attached somewhere); a feed that listens expects its
        first batch."""
        self.epoch = epoch
        if feeding:
            self.feed_epoch, self.next_seq = epoch, 1

    def raise_epoch(self, epoch, feeding):
        """:meth:`set_epoch` if ``epoch`` is newer than the room's."""
        if epoch > self.epoch:
            self.set_epoch(epoch, feeding)

    # -- publishing (this node owns the room) ----------------------------------------------
    def own(self, epoch, feeding):
        """This node's source feeds the room from ``epoch`` on: its batches count from 1."""
        self.raise_epoch(epoch, feeding)
        self.pub_seq = 0
        self.feed_epoch, self.next_seq = self.epoch, 1

    def next_batch(self):
        """The ``(epoch, seq)`` of the next batch this node publishes; taken as had, should
        the node lose it and mirror the room again."""
        self.pub_seq += 1
        self.feed_epoch, self.next_seq = self.epoch, self.pub_seq + 1
        return self.epoch, self.pub_seq

    @property
    def last_published(self):
        """``"E:S"``: the last batch this node published."""
        return "%d:%d" % (self.epoch, self.pub_seq)

    # -- listening (the source is on another node) --------------------------------------
    def start(self):
        """Listening begins (again): take the next batch as it comes."""
        self.next_seq = None

    def stop(self):
        self.next_seq = None
        self.tainted = False

    def taint(self):
        """The connection to Redis broke while listening: batches may be lost."""
        self.tainted = True

    def batch(self, epoch, seq, owned=False, from_log=False):
        """A batch ``(epoch, seq)`` arrived (``from_log``: read from the replay log, where
        fencing does not apply; ``owned``: this node publishes the room). Returns a
        :class:`Decision`; on DELIVER the feed expects the batch after it."""
        if owned and not from_log:
            return Decision(DROP_OWN)
        if epoch < self.epoch and not from_log:
            return Decision(DROP_OLDER_EPOCH)
        expected, fe = self.next_seq, self.feed_epoch
        gap = None
        if expected is None and self.tainted:
            gap = TAINT_GAP
        if expected is not None:
            if epoch == fe:
                if seq < expected:
                    return Decision(DROP_DUPLICATE, gap)
                if seq > expected:
                    gap = "%d batch(es)" % (seq - expected)
            elif epoch > fe and seq != 1:
                gap = "the first %d batch(es) of epoch %d" % (seq - 1, epoch)
            elif epoch < fe:
                return Decision(DROP_OLDER_EPOCH, gap)
        self.feed_epoch, self.next_seq = epoch, seq + 1
        self.tainted = False
        if epoch > self.epoch:
            self.epoch = epoch
        return Decision(DELIVER, gap)

    def check_last(self, last):
        """A room event said the room's last batch is ``last`` (``(epoch, seq)``, or None when
        it did not know). Returns what was lost (a gap phrase) or None. A batch we lack is
        lost, and a tainted feed that cannot tell is taken as lost. The feed then expects the
        batch after ``last``."""
        mine = (self.feed_epoch, self.next_seq - 1) if self.next_seq is not None else None
        if last is not None and last[1] == 0:
            last = None                       # no batch in that epoch: it says nothing of before
        gap = None
        if last is not None and mine is not None:
            if last > mine:
                gap = "batches up to %d:%d (have %d:%d)" % (tuple(last) + mine)
                self.feed_epoch, self.next_seq = last[0], last[1] + 1
        elif self.tainted:
            gap = TAINT_GAP
        self.tainted = False
        return gap


def parse_last(text):
    """``"E:S"`` → (E, S); None for anything else."""
    try:
        epoch, seq = text.split(":")
        return int(epoch), int(seq)
    except ValueError:
        return None
