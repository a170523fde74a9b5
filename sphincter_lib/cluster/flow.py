"""Redis mode: flow control across nodes, for one room (pure logic: no I/O, no gevent).

Credit, in the owner's byte offsets (every batch carries the offset after it). A mirror with
subscribers reports how far its fastest subscriber got (``fc K EPOCH OFFSET NODE``, on the
owner's node channel): its first subscriber's arrival is announced as ``^`` (at the owner's
head), then from its first batch on, each time that moved a quarter of ``high_water`` on, and
every heartbeat while it lags that much; ``-`` when it has no subscriber left. The owner's
source waits while every node with subscribers in the room (and its own fastest subscriber, if
any) is ``high_water`` or more behind what it published: the room moves at the speed of its
fastest subscriber wherever it is, and what is on its way through Redis counts. A node that
says nothing is taken to keep up; a report not renewed expires (a node that died).

As in one process, the pace is that of the subscriber that has *read* furthest: a node whose
fastest subscriber skipped (or joined late) reports ``OFFSET:UNREAD``, the bytes its cursor
moved without its reading them, and the owner follows the node (or its own subscriber) with
the greatest ``OFFSET - UNREAD``, at that node's ``OFFSET``.

A :class:`CrossNodeFlow` is held by a :class:`~sphincter_lib.cluster.room.RedisRoom`; it reads
the room's public figures (``head_pos``, ``lead_pos``, ``lead_unread``, ``subscribers``, ...),
sets its ``lead_watch``, and hands its reports to a ``report(room, text)`` callable (the
model sends them through Redis). :func:`report_message` and :func:`parse_report` are the wire
form of a report.
"""

from ..rooms.interface import LIVE

__all__ = ["CrossNodeFlow", "report_message", "parse_report", "AT_HEAD"]

#: a report's offset meaning "where your source is now" (a node's first subscriber)
AT_HEAD = -1


def report_message(key, text, node_id):
    """The message a mirror publishes to the owner's node: ``fc K EPOCH OFFSET[:UNREAD] NODE``
    (``text`` is ``EPOCH OFFSET[:UNREAD]``, ``EPOCH ^`` or ``EPOCH -``)."""
    return "fc %s %s %s" % (key, text, node_id)


def parse_report(text):
    """``(key, epoch, offset, unread, node)`` of a report, or None if it is not one. ``offset`` is
    None for ``-`` (no subscriber left there) and :data:`AT_HEAD` for ``^``."""
    parts = text.split()
    if len(parts) != 5 or parts[0] != "fc":
        return None
    where, _, unread = parts[3].partition(":")   # OFFSET[:UNREAD]: see CrossNodeFlow.must_wait
    try:
        epoch = int(parts[2])
        offset = {"-": None, "^": AT_HEAD}.get(where)
        if offset is None and where != "-":
            offset = int(where)
        unread = int(unread) if unread else 0
    except ValueError:
        return None
    return parts[1], epoch, offset, unread, parts[4]


class CrossNodeFlow:
    """One room's flow control across nodes (see the module docstring): the owner's side (the
    other nodes' reports, :meth:`must_wait`) and the mirror's side (what it reported, when to
    report again)."""

    def __init__(self, room, feed, report, report_step):
        self.room = room
        #: the room's :class:`~sphincter_lib.proto.redis_feed.RedisFeed`: reports carry the
        #: epoch of the batches this node is fed
        self.feed = feed
        #: ``report(room, text)``: send a report to the room's owner
        self.report = report
        #: bytes the fastest subscriber here moves on between two reports (mirror)
        self.report_step = max(1, report_step)
        #: owner: other nodes with subscribers in the room (from Redis)
        self.remote_nodes = frozenset()
        #: owner: node -> (offset its fastest subscriber reached, when that report expires, bytes
        #: of it that subscriber did not read: see ``Room.lead``)
        self.remote_leads = {}
        self.pub_delta = 0               # mirror: the owner's offset minus ours (head_pos)
        self.reported_lead = None        # mirror: the offset last reported (None: none yet)
        self.reported_unread = 0         # mirror: that report's lead's unread bytes

    def reset(self):
        """The room's source is on this node now: nothing reported either way so far."""
        self.reported_lead = self.room.lead_watch = None
        self.remote_leads = {}

    # -- owner side ------------------------------------------------------------------------
    @property
    def active(self):
        """Some node reported: :meth:`must_wait` decides rather than the room's own rule."""
        return bool(self.remote_leads)

    def must_wait(self):
        """Should the source's reader wait? None when no (unexpired) report is left: the room's
        own rule (its local subscribers) decides."""
        leads = self.remote_leads
        if not leads:
            return None
        room = self.room
        if not room.flow_control or room.state is not LIVE:
            return False
        now = room.now()
        for node, (offset, until, _) in list(leads.items()):
            if until < now:
                del leads[node]
        if not leads:
            return None
        for node in self.remote_nodes:
            if node not in leads:
                return False                      # a node that says nothing keeps up
        leads = list(leads.values())
        if room.subscribers:
            leads.append((room.lead_pos, now, room.lead_unread))
        best = max(leads, key=lambda lead: lead[0] - lead[2])[0]
        return room.head_pos - best >= room.high_water

    def remote_flow(self, node, epoch, offset, expires, unread=0):
        """``node``'s fastest subscriber reached ``offset`` (None: it has none; :data:`AT_HEAD`:
        it just got its first), of which it did not read ``unread`` bytes (skipped, or joined
        late). Returns True when the room's source, paused, may read again."""
        room = self.room
        if room.source is None or epoch != room.epoch:
            return False
        if offset == AT_HEAD:
            offset = room.head_pos
        if offset is None:
            self.remote_leads.pop(node, None)
        else:
            self.remote_leads[node] = (offset, expires, unread)
        return room.source_paused and not room.source_must_wait()

    # -- mirror side -----------------------------------------------------------------------
    def batch_taken(self, epoch, end, from_log=False):
        """A batch of ``epoch`` ending at the owner's offset ``end`` was appended here. Unless it
        came from the replay log: report if our fastest subscriber's position is news to the
        owner, else watch for it to move a step on."""
        room = self.room
        self.pub_delta = end - room.head_pos
        if room.subscribers and room.flow_control and not from_log:
            if (self.reported_lead is None or epoch != self.feed.feed_epoch
                    or self.reported_unread != room.lead_unread):
                self.report_lead()
            else:
                room.lead_watch = self.reported_lead + self.report_step - self.pub_delta

    def report_lead(self):
        """Tell the owner how far our fastest subscriber got."""
        room = self.room
        offset = room.lead_pos + self.pub_delta
        self.reported_lead = offset
        self.reported_unread = unread = room.lead_unread
        room.lead_watch = offset + self.report_step - self.pub_delta
        self.report(room, "%d %d%s" % (self.feed.feed_epoch, offset, ":%d" % unread if unread else ""))

    def lead_passed(self):
        """The fastest subscriber here passed ``lead_watch``."""
        room = self.room
        if room.source is None and room.subscribers and self.reported_lead is not None:
            self.report_lead()
        else:
            room.lead_watch = None

    @property
    def lagging(self):
        """Our fastest subscriber is a report step or more behind."""
        room = self.room
        return bool(room.subscribers) and room.head_pos - room.lead_pos >= self.report_step

    def renew(self):
        """Every heartbeat: a mirror whose fastest subscriber lags renews its report (else the
        owner lets it expire)."""
        if self.room.source is None and self.reported_lead is not None and self.lagging:
            self.report_lead()

    def forget_lead(self):
        """No subscriber left here (or no more batches): the owner stops counting us."""
        if self.reported_lead is not None:
            self.reported_lead = self.room.lead_watch = None
            self.report(self.room, "%d -" % self.feed.feed_epoch)
