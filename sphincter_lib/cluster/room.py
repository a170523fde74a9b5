"""Redis mode: a room as one node sees it.

A :class:`RedisRoom` is a :class:`rooms.room.Room` — local subscribers are
cursors into its backlog, exactly as in one process — that also takes part in
the relay-wide room. It builds on ``Room`` through its public methods only, and
holds what it adds, by responsibility:

- when this node holds the room's **source** (it *owns* the room), every
  message is encoded once, appended to the local backlog and queued for Redis;
  one loop turn's messages go out as one batch carrying ``(epoch, seq)``, and
  nothing goes out while the node's lease has lapsed (fencing): its
  :class:`~sphincter_lib.cluster.publisher.Publisher`;
- when the source is elsewhere, the room is a **mirror**: while it has local
  subscribers its :class:`~sphincter_lib.cluster.mirror.Mirror` listens to
  ``P:m:{K}`` and the room appends the frames received (already encoded: a node
  encodes nothing twice). A batch of an older epoch (a source that was replaced)
  is dropped; a duplicate is dropped; a missing batch is a **gap**: local
  subscribers are closed 4408 ``missed messages`` (under ``--slow-policy skip``
  they go on), never shown a gap. The order (epoch, sequence, gaps, fencing) is
  decided by a sans-IO :class:`~sphincter_lib.proto.redis_feed.RedisFeed` the
  room holds;
- **flow control across nodes** (the owner's source waits for the fastest
  subscriber on any node) is its :class:`~sphincter_lib.cluster.flow.CrossNodeFlow`;
- the write-back queue is a :class:`~sphincter_lib.cluster.outbox.RedisOutbox`;
- room events (``P:e:{K}``: live/waiting/closed/writable) move its state (here).

Everything here runs in the event loop or a greenlet and never blocks, except
:meth:`RedisRoom.ensure_feed`, :meth:`RedisRoom.await_own_live`,
:meth:`RedisRoom.wait_for_readers` (the source's reader) and the
:class:`RedisOutbox` drainer calls, which are called from greenlets that may.
"""

import logging
import time

from gevent.event import Event

from ..rooms.room import CLOSED, LIVE, SLOW_CLOSE, SOURCE_CLOSED, WAITING, Room
from ..proto.redis_feed import RedisFeed, parse_last
from .flow import CrossNodeFlow
from .mirror import Mirror
from .outbox import RedisOutbox
from .publisher import Publisher

logger = logging.getLogger("sphincter.cluster.room")

__all__ = ["RedisRoom"]


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
        #: its batches from Redis while the source is elsewhere (cluster.mirror)
        self.mirror = Mirror(self, self.feed, model)
        #: flow control across nodes (cluster.flow)
        self.flow = CrossNodeFlow(self, self.feed, model.report_flow, limits.high_water // 4)
        self._own_seen = 0               # the newest epoch of ours whose 'live' event came back
        self._own_wait = None            # (epoch, Event): a claim or resume waiting for it
        self.remote_peer = ""            # the source's address when it is on another node
        self.source_id = model.node_id if source is not None else ""
        self.idle_since = monotonic()    # last time it had a local subscriber or was looked up
        #: the owner's side: batches out to Redis, and fencing (cluster.publisher)
        self.publisher = Publisher(self, self.feed, model)
        #: a message from the local source (the hot path: bound, no call in between)
        self.publish = self.publisher.publish

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
        self.publisher.reset()
        self.feed.own(epoch, self.feeding)
        self.flow.reset()
        self.source_id = self.model.node_id
        self.remote_peer = ""
        return self.attach(source)

    # -- publishing (owner) and fencing: see cluster.publisher ---------------------------
    @property
    def holding(self):
        """Its source's messages are held: the node's lease lapsed (fencing)."""
        return self.publisher.held is not None

    def send_batch(self):
        """Hand what the source sent this loop turn to Redis, as one batch."""
        self.publisher.send_batch()

    # -- mirroring (the source is on another node): see cluster.mirror --------------------
    @property
    def feeding(self):
        """Listening to the room's batches."""
        return self.mirror.feeding

    def ensure_feed(self, timeout):
        """Listen to the room's batches before a local subscriber joins (:meth:`Mirror.ensure`:
        blocks for a round trip or two; RelayUnavailable)."""
        self.mirror.ensure(timeout)

    def stop_feed(self):
        self.flow.forget_lead()
        self.mirror.stop()

    def receive(self, data):
        """A batch from Redis (from the listener greenlet)."""
        self.mirror.receive(data)

    def check_last(self, last):
        """An event told the room's last batch (:meth:`Mirror.check_last`)."""
        self.mirror.check_last(last)

    def deliver(self, epoch, end, frames, from_log=False):
        """A batch of ``epoch`` from Redis, ending at the owner's offset ``end``: its frames
        (already encoded) go to the local subscribers."""
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
        self.flow.batch_taken(epoch, end, from_log)

    @property
    def last_published(self):
        """``"E:S"``: the last batch this node published for the room (owner)."""
        return self.feed.last_published

    def missed(self, what):
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
            self.backlog.trim_to(self.head_seq)

    # -- flow control across nodes: see cluster.flow ------------------------------------
    def source_must_wait(self):
        if self.publisher.held is not None:
            return True                       # fenced until Redis confirms the lease
        wait = self.flow.must_wait()
        return Room.source_must_wait(self) if wait is None else wait

    def wait_for_readers(self):
        if not self.flow.active:
            return Room.wait_for_readers(self)
        while self.source_must_wait():
            self.pace.pause()
            self.pace.wait(self.model.flow_recheck)
        self.pace.resume()

    def lead_passed(self):
        self.flow.lead_passed()

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
        self.publisher.reset()
        dropped = self.publisher.drop_held()
        if dropped:
            logger.warning("room %s: dropped %d message(s) its source sent while this node's lease "
                           "had lapsed", self.code, dropped)
        self.takeovers += 1
        self.stats.takeovers += 1
        self.events.source_detached(self, old)
        old.hang_up(why)                      # before its reader wakes, reads on and hangs up
        self.pace.resume()
        self.outbox.wake()

    def source_left(self, source):
        if source is not self.source:
            return
        dropped = self.publisher.drop_held()  # the room may be another node's by now
        if dropped:
            logger.warning("room %s: its source left while this node's lease had lapsed; %d message(s) "
                           "it sent meanwhile dropped", self.code, dropped)
        self.publisher.send_batch()           # what it sent goes out before the room moves on
        self.model.leave(self)
        Room.source_left(self, source)
        if self.state is WAITING:
            self.source_id = ""
            self.cancel_grace()               # the relay decides when the grace ends
