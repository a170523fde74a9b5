"""Redis mode: a room as one node sees it, and its write-back queue in Redis.

A :class:`RedisRoom` is a :class:`rooms.room.Room` — local subscribers are
cursors into its backlog, exactly as in one process — that also takes part in
the relay-wide room:

- when this node holds the room's **source** (it *owns* the room), every
  message is encoded once, appended to the local backlog and queued for Redis;
  one loop turn's messages go out as one batch (``PUBLISH`` on ``P:m:{K}``,
  plus ``XADD`` to the replay log in a replay room) carrying ``(epoch, seq)``;
- when the source is elsewhere, the room is a **mirror**: while it has local
  subscribers it listens to ``P:m:{K}`` and appends the frames it receives
  (already encoded: a node encodes nothing twice). A batch of an older epoch
  (a source that was replaced) is dropped; a duplicate is dropped; a missing
  batch is a **gap**: local subscribers are closed 4408 ``missed messages``
  (under ``--slow-policy skip`` they go on), never shown a gap;
- room events (``P:e:{K}``: live/waiting/closed/writable) move its state.

Everything here runs in the event loop or a greenlet and never blocks, except
:meth:`RedisRoom.ensure_feed`, :meth:`RedisRoom.await_own_live`,
:meth:`RedisRoom.wait_for_readers` (the source's reader) and the
:class:`RedisOutbox` drainer calls, which are called from greenlets that may.
The order of the batches (epoch, sequence, gaps, fencing) is decided by a
sans-IO :class:`~sphincter_lib.proto.redis_feed.RedisFeed` the room holds.
"""

import logging
import time

from gevent.event import Event

from ..rooms.room import CLOSED, LIVE, SLOW_CLOSE, SOURCE_CLOSED, WAITING, Room
from ..errors import RelayUnavailable
from ..proto import redis_keys
from ..proto.redis_feed import RedisFeed, parse_last
from .outbox import RedisOutbox

logger = logging.getLogger("sphincter.cluster.room")

__all__ = ["RedisRoom", "RedisOutbox"]


class RedisRoom(Room):
    """A room of a relay whose rooms are shared through Redis (see the module docstring)."""

    def __init__(self, code, source, limits, encode, events, stats, clock=time.time,
                 monotonic=time.monotonic, named=False):
        Room.__init__(self, code, source, limits, encode, events, stats, clock=clock,
                      monotonic=monotonic, named=named)
        model = self.model = events
        keys = model.keys
        self.redis_keys = keys.room(self.key)
        self.chan_m = keys.messages(self.key)
        self.chan_e = keys.events(self.key)
        self.chan_w = keys.writes(self.key)
        self.outbox = RedisOutbox(self, limits.write_queue_bytes)
        #: the room's epoch and batch order as this node sees them (sans-IO: it decides,
        #: the room acts)
        self.feed = RedisFeed()
        self.feeding = False             # listening to the room's batches
        self._own_seen = 0               # the newest epoch of ours whose 'live' event came back
        self._own_wait = None            # (epoch, Event): a claim or resume waiting for it
        self.remote_peer = ""            # the source's address when it is on another node
        self.source_id = model.node_id if source is not None else ""
        self.idle_since = monotonic()    # last time it had a local subscriber or was looked up
        self._batch = []
        self._batch_epoch = 0
        self._batch_scheduled = False
        self._loading = None             # batches received while the replay log is read
        self._feed_ready = None
        # flow control across nodes (see source_must_wait)
        self.remote_nodes = frozenset()  # owner: other nodes with subscribers here (from Redis)
        self.remote_leads = {}           # owner: node -> (offset its fastest subscriber reached,
                                         # when that report expires, bytes of it that
                                         # subscriber did not read: see Room.lead)
        self.pub_delta = 0               # mirror: the owner's offset minus ours (head_pos)
        self.reported_lead = None        # mirror: the offset last reported (None: none yet)
        self.reported_unread = 0         # mirror: that report's lead's unread bytes
        self.report_step = max(1, limits.high_water // 4)

    # -- the feed's state, as the model reads it -----------------------------------------
    @property
    def epoch(self):
        """The room's epoch: +1 at every source attach anywhere (fences replaced sources)."""
        return self.feed.epoch

    @epoch.setter
    def epoch(self, epoch):
        self.feed.epoch = epoch

    @property
    def pub_seq(self):
        """Batches this node published in this epoch (owner)."""
        return self.feed.pub_seq

    @property
    def tainted(self):
        """Our Redis connection broke while fed: batches may be lost."""
        return self.feed.tainted

    @tainted.setter
    def tainted(self, tainted):
        self.feed.tainted = tainted

    # -- who feeds it ------------------------------------------------------------------
    @property
    def peer(self):
        return self.source.peer if self.source is not None else self.remote_peer

    @property
    def presence(self):
        """``online`` while a source feeds the room, on any node."""
        return "online" if self.state is LIVE and (self.source is not None or self.source_id) else "offline"

    @property
    def source_node(self):
        """The name of the node its source is on ('' while it has none)."""
        return self.source_id.split("/")[0]

    @property
    def owned(self):
        return self.source is not None

    def own(self, source, epoch):
        """``source`` (on this node) feeds the room from ``epoch`` on; returns the source it replaced
        on this node, if any."""
        self._batch = []
        self.feed.own(epoch, self.feeding)
        self.reported_lead = self.lead_watch = None
        self.remote_leads = {}
        self.source_id = self.model.node_id
        self.remote_peer = ""
        return self.attach(source)

    # -- publishing (owner) ------------------------------------------------------------
    def publish(self, payload, text):
        if self.state is not LIVE:
            return
        self.count_in(payload)
        frame = self.encode_frame(payload, text)
        if not self._batch:
            # scheduled before the local subscribers' flush: the batch leaves for the other
            # nodes first (the pipe writes at once), then this node's subscribers are served
            self._batch_epoch = self.epoch
            if not self._batch_scheduled:
                self._batch_scheduled = True
                self.call_soon(self.send_batch)
        self._batch.append(frame)
        if self.subscribers or self.replay:
            self.append_frame(frame)
        else:                                  # offsets count frame bytes: other nodes use them
            self.pass_bytes(len(frame) if frame.__class__ is not tuple else len(frame[0]) + len(frame[1]))

    def send_batch(self):
        """Hand what the source sent this loop turn to Redis, as one batch (one PUBLISH)."""
        self._batch_scheduled = False
        frames, self._batch = self._batch, []
        if not frames or self._batch_epoch != self.epoch:
            return                            # replaced meanwhile: the new owner's batches count
        epoch, seq = self.feed.next_batch()
        self.model.publish_batch(self, redis_keys.encode_batch(epoch, seq, self.head_pos, frames))

    # -- mirroring (the source is on another node) ---------------------------------------
    def ensure_feed(self, timeout):
        """Listen to the room's batches (and read the replay log), before a local subscriber joins.

        Blocks the calling greenlet for a round trip or two; RelayUnavailable if Redis does
        not confirm within ``timeout``."""
        ready = self._feed_ready
        if self.feeding:
            if ready is not None:
                ready.wait(timeout)
            return
        self.feeding = True
        self.feed.start()
        ready = self._feed_ready = Event()
        try:
            if not self.model.pubsub.subscribe(self.chan_m).wait(timeout):
                self.stop_feed()
                raise RelayUnavailable()
            if self.replay and self.source is None:
                self._load_replay()
        finally:
            self._feed_ready = None
            ready.set()

    def stop_feed(self):
        self.forget_lead()
        if self.feeding:
            self.feeding = False
            self.feed.stop()
            self.model.pubsub.unsubscribe(self.chan_m)

    def _load_replay(self):
        """The newest ``replay`` batches from the room's log, joined with the live batches that
        arrive meanwhile at the first (epoch, seq) both have: no gap, no duplicate."""
        self._loading = []
        try:
            entries = self.model.read_log(self)
        except RelayUnavailable:
            entries = []
        pending, self._loading = self._loading, None
        self.forget_backlog()
        for entry_id, data in reversed(entries):
            self._take(data, from_log=True)
        for data in pending:
            self.receive(data)

    def receive(self, data):
        """A batch from Redis (from the listener greenlet)."""
        if self.source is not None:
            return                            # ours, back from Redis: not even decoded
        if self._loading is not None:
            self._loading.append(data)
            return
        self._take(data)

    def _take(self, data, from_log=False):
        try:
            epoch, seq, end, frames = redis_keys.decode_batch(data)
        except ValueError as exc:
            logger.warning("room %s: dropped a malformed batch from Redis: %s", self.code, exc)
            return
        # ours, back from Redis (or fenced: an event follows); from a replaced source; a
        # duplicate (resent after a reconnect); or to deliver, maybe after a gap
        decision = self.feed.batch(epoch, seq, owned=self.source is not None, from_log=from_log)
        if decision.gap is not None:
            self._gap(decision.gap)
        if not decision.deliver:
            return
        if self.state is CLOSED:
            return
        stats = self.stats
        stats.redis_batches_in += 1
        stats.redis_messages_in += len(frames)
        for frame in frames:
            self.messages += 1
            self.bytes += len(frame)
            if self.subscribers or self.replay:
                self.append_frame(frame)
            else:
                self.pass_bytes(len(frame))
        self.pub_delta = end - self.head_pos
        if self.subscribers and self.flow_control and not from_log:
            if (self.reported_lead is None or epoch != self.feed.feed_epoch
                    or self.reported_unread != self.lead_unread):
                self.report_lead()
            else:
                self.lead_watch = self.reported_lead + self.report_step - self.pub_delta

    @property
    def last_published(self):
        """``"E:S"``: the last batch this node published for the room (owner)."""
        return self.feed.last_published

    def check_last(self, last):
        """An event: ``last`` is the room's last batch (epoch, seq) when the script knew it, else
        None. A batch we lack is lost, and a tainted feed (our connection broke) that cannot
        tell is taken as lost: never shown as a gap."""
        if not self.feeding or self.source is not None or self._loading is not None:
            return
        gap = self.feed.check_last(last)
        if gap is not None:
            self._gap(gap)

    def _gap(self, what):
        """Batches were lost on the way (Redis restarted, or this node was cut off as too slow)."""
        self.stats.redis_gaps += 1
        logger.warning("room %s: missed %s from Redis; %s %d local subscriber(s)", self.code,
                       what, "skipping for" if self.skip else "closing (4408)", len(self.subscribers))
        for sub in list(self.subscribers):
            if self.skip:
                sub.skip_to(self.head_seq, self.head_pos)
                self.skipped += 1
            else:
                self.slow_cutoffs += 1
                self.stats.slow_cutoffs += 1
                sub.kick(SLOW_CLOSE, "missed messages")
        if self.skip:
            self.trim_to(self.head_seq)

    # -- flow control across nodes -------------------------------------------------------
    # Credit, in the owner's byte offsets (every batch carries the offset after it). A mirror
    # with subscribers reports how far its fastest subscriber got ("fc K EPOCH OFFSET NODE")
    # (its first subscriber's arrival is announced as "^": at the owner's head), then from its
    # first batch on, each time that moved a quarter of high_water on, and every heartbeat
    # while it lags that much; "-" when it has no subscriber left. The owner's source waits
    # while every node with subscribers here (and its own fastest subscriber, if any) is
    # high_water or more behind what it published: the room moves at the speed of its fastest
    # subscriber wherever it is, and what is on its way through Redis counts. A node that
    # says nothing is taken to keep up; a report not renewed expires (a node that died).
    # As in one process, the pace is that of the subscriber that has *read* furthest: a node
    # whose fastest subscriber skipped (or joined late) reports "OFFSET:UNREAD", the bytes its
    # cursor moved without its reading them, and the owner follows the node (or its own
    # subscriber) with the greatest OFFSET - UNREAD, at that node's OFFSET.
    def source_must_wait(self):
        leads = self.remote_leads
        if not leads:
            return Room.source_must_wait(self)
        if not self.flow_control or self.state is not LIVE:
            return False
        now = self.now()
        for node, (offset, until, _) in list(leads.items()):
            if until < now:
                del leads[node]
        if not leads:
            return Room.source_must_wait(self)
        for node in self.remote_nodes:
            if node not in leads:
                return False                      # a node that says nothing keeps up
        leads = list(leads.values())
        if self.subscribers:
            leads.append((self.lead_pos, now, self.lead_unread))
        best = max(leads, key=lambda lead: lead[0] - lead[2])[0]
        return self.head_pos - best >= self.high_water

    def wait_for_readers(self):
        if not self.remote_leads:
            return Room.wait_for_readers(self)
        while self.source_must_wait():
            self.pause_source()
            self.wait_readers(self.model.flow_recheck)
        self.resume_source()

    def remote_flow(self, node, epoch, offset, expires, unread=0):
        """Owner side: ``node``'s fastest subscriber reached ``offset`` (None: it has none), of
        which it did not read ``unread`` bytes (skipped, or joined late)."""
        if self.source is None or epoch != self.epoch:
            return
        if offset == -1:                          # "where your source is now": a new node
            offset = self.head_pos
        if offset is None:
            self.remote_leads.pop(node, None)
        else:
            self.remote_leads[node] = (offset, expires, unread)
        if self.source_paused and not self.source_must_wait():
            self.resume_source()

    def report_lead(self):
        """Mirror side: tell the owner how far our fastest subscriber got."""
        offset = self.lead_pos + self.pub_delta
        self.reported_lead = offset
        self.reported_unread = unread = self.lead_unread
        self.lead_watch = offset + self.report_step - self.pub_delta
        self.model.report_flow(self, "%d %d%s" % (self.feed.feed_epoch, offset, ":%d" % unread if unread else ""))

    def lead_passed(self):
        if self.source is None and self.subscribers and self.reported_lead is not None:
            self.report_lead()
        else:
            self.lead_watch = None

    @property
    def lagging(self):
        """Mirror side: our fastest subscriber is a report step or more behind."""
        return bool(self.subscribers) and self.head_pos - self.lead_pos >= self.report_step

    def forget_lead(self):
        """Mirror side: no subscriber left here (or no more batches): the owner stops counting us."""
        if self.reported_lead is not None:
            self.reported_lead = self.lead_watch = None
            self.model.report_flow(self, "%d -" % self.feed.feed_epoch)

    # -- room events -------------------------------------------------------------------
    def _set_epoch(self, epoch):
        self.feed.set_epoch(epoch, self.feeding)

    def on_event(self, text):
        """``live E NODE``, ``waiting E``, ``closed E``, ``writable`` (from the listener)."""
        parts = text.split()
        if not parts:
            return
        kind = parts[0]
        if kind == "writable":
            self.outbox.writable()
            return
        try:
            epoch = int(parts[1])
        except (IndexError, ValueError):
            return
        node = parts[2] if kind == "live" and len(parts) > 2 else ""
        self.check_last(parse_last(parts[3 if kind == "live" else 2] if len(parts) > (3 if kind == "live" else 2)
                                   else ""))
        if kind == "live":
            if node == self.model.node_id:
                self._own_live(epoch)         # this node's own claim or resume: own() applies it
                return
            if epoch < self.epoch:
                return
            if self.source is not None:
                self.fenced("replaced by a newer source")
            self.went_live(epoch, node)
        elif kind == "waiting":
            if epoch < self.epoch or self.source is not None or self.state is not LIVE:
                return
            self.went_waiting()
        elif kind == "closed":
            if self.source is not None and epoch < self.epoch:
                return
            if self.source is not None and epoch == 0:
                return                        # Redis lost it; the owner re-creates it
            self.close(SOURCE_CLOSED, "source closed")

    def await_own_live(self, epoch, timeout):
        """A claim or resume made here: wait until its 'live' event came back, so every batch
        Redis put before it was taken (as on every other node) before this node's source
        publishes."""
        if self._own_seen >= epoch or not self.feeding:
            return
        event = Event()
        self._own_wait = (epoch, event)
        try:
            event.wait(timeout)
        finally:
            self._own_wait = None

    def _own_live(self, epoch):
        if epoch > self._own_seen:
            self._own_seen = epoch
        if epoch > self.epoch and self.source is None:
            self._set_epoch(epoch)            # what the replaced source sends from now on is fenced
        wait = self._own_wait
        if wait is not None and epoch >= wait[0]:
            wait[1].set()

    def went_live(self, epoch, node, peer=""):
        was = self.state
        if epoch > self.epoch:
            self._set_epoch(epoch)
        self.source_id = node
        self.remote_peer = peer or self.remote_peer
        if was is WAITING:
            self.state = LIVE
            self.resumes += 1
            self.stats.resumes += 1
            self.announce_presence()

    def went_waiting(self):
        self.state = WAITING
        self.source_id = ""
        self.remote_peer = ""
        self.announce_presence()

    def fenced(self, why):
        """Another node's source took the room over: hang up ours (it must not publish)."""
        old = self.source
        if old is None:
            return
        self.source = None
        self._batch = []
        self.takeovers += 1
        self.stats.takeovers += 1
        self.events.source_detached(self, old)
        self.resume_source()
        old.hang_up(why)
        self.outbox.wake()

    def source_left(self, source):
        if source is not self.source:
            return
        self.send_batch()                     # what it sent goes out before the room moves on
        self.model.leave(self)
        Room.source_left(self, source)
        if self.state is WAITING:
            self.source_id = ""
            self.cancel_grace()               # the relay decides when the grace ends
