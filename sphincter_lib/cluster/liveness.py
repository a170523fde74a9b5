"""Redis mode: liveness — the node's heartbeat, its rooms' leases, and recovery after an outage.

Every ``--redis-lease``/3 s a :class:`Liveness` renews the node's heartbeat and the leases of
the rooms it owns (``REFRESH``), checks the rooms it mirrors (``CHECK``: a room whose owner died,
its lease gone, goes waiting — named, or in its grace — or closes, 4410), learns which other
nodes have subscribers in its rooms (for flow control across nodes), and stops listening to
rooms nobody here watches any more.

When Redis was unreachable (``cluster.node`` noticed), what runs keeps running locally; once
a heartbeat gets through again the node re-creates what Redis lost (its rooms and leases, in
the same ``REFRESH``; its subscriber counts; its named rooms), and for one lease it lets the
owners do so before it decides that a room whose keys are gone has ended. Mirrors that may
have missed batches while the listener was down are *tainted* until a batch or an event
decides (never shown a gap).

It holds the model (its rooms, through public methods) and the node's link.
"""

import json
import logging
import os
import socket

import gevent
from gevent.event import Event

from .. import __version__
from ..errors import RelayUnavailable
from ..rooms.interface import CLOSED, LIVE, WAITING
from .node import digest, text

logger = logging.getLogger("sphincter.cluster.liveness")

__all__ = ["Liveness"]


class Liveness:
    """Heartbeat, leases, checks, recovery (see the module docstring)."""

    #: seconds between a failover announced and the heartbeat it brings forward
    switch_delay = 0.2

    def __init__(self, model, link, monotonic):
        self.model = model
        self.link = link
        self._monotonic = monotonic
        self._up_since = None            # when Redis came back after an outage (None: no outage)
        self._housekeeper = None
        self._watchdog = None
        self._wake = Event()
        #: when the last heartbeat that got through was sent (monotonic; None: none yet): the
        #: node's leases hold until then + the lease
        self.renewed_at = None
        #: the leases lapsed: the owned rooms' sources are paused (fencing)
        self.lapsed = False

    @property
    def interval(self):
        """Seconds between two heartbeats: a third of the lease."""
        return self.link.lease / 3.0

    def start(self):
        """The first heartbeat (Redis may be down: then the next ones retry), then one every
        :attr:`interval` seconds from a greenlet."""
        link = self.link
        try:
            self.beat()
        except link.errors as exc:
            logger.error("redis unreachable at %s: %s; retrying every %.1fs", link.endpoint, exc,
                         self.interval)
        else:
            logger.info("node %s joined the relay at %s", link.node, link.endpoint)
        self._housekeeper = gevent.spawn(self._housekeep)
        self._housekeeper.link_exception(lambda g: logger.error("redis housekeeping crashed",
                                                                exc_info=g.exc_info))
        self._watchdog = gevent.spawn(self._watch)
        self._watchdog.link_exception(lambda g: logger.error("redis lease watchdog crashed",
                                                             exc_info=g.exc_info))

    def stop(self):
        for greenlet in (self._housekeeper, self._watchdog):
            if greenlet is not None:
                greenlet.kill(block=False)

    # -- fencing ----------------------------------------------------------------------------
    def lease_held(self):
        """The node's leases still hold: its last heartbeat that got through was sent less than a
        lease ago. Checked before every batch an owner publishes (``cluster.room``)."""
        renewed = self.renewed_at
        return renewed is not None and self._monotonic() - renewed < self.link.lease

    def _watch(self):
        """Once a lease has passed without a heartbeat getting through (Redis unreachable, or
        this process was stopped), pause every owned room's source until Redis confirms it."""
        while True:
            renewed = self.renewed_at
            left = (renewed + self.link.lease - self._monotonic()) if renewed is not None else self.interval
            if left <= 0 and renewed is not None and not self.lapsed:
                self._lapse()
            gevent.sleep(min(0.25, max(0.02, left)) if left > 0 else 0.25)

    def _lapse(self):
        self.lapsed = True
        owned = [r for r in self.model.rooms() if r.source is not None]
        for room in owned:
            room.publisher.lease_lapsed()
        if owned:
            logger.warning("node %s: leases not renewed for %.1fs; %d source(s) paused until Redis "
                           "confirms their rooms", self.link.node, self.link.lease, len(owned))

    def beat_soon(self):
        """The next heartbeat now, not in up to :attr:`interval` s (a failover was announced: the
        node is whole again as soon as the new primary answers)."""
        self._wake.set()

    def _housekeep(self):
        while True:
            self._wake.wait(self.interval)
            if self._wake.is_set():
                self._wake.clear()
                gevent.sleep(self.switch_delay)    # the links reconnect first
            self.link.check_primary()
            try:
                self.link.ask(self.beat)
            except RelayUnavailable:
                pass
            except Exception:
                logger.error("redis housekeeping failed", exc_info=True)
            self.prune()

    def beat(self):
        """Heartbeat; renew the leases of owned rooms; check mirrored rooms; after an outage,
        re-create what Redis lost."""
        model, link = self.model, self.link
        node_id, grace_ms, scripts = link.node_id, model.grace_ms, link.scripts
        recovering = not link.reachable
        rooms = model.rooms()
        pipe = link.redis.pipeline(transaction=False)
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "version": __version__})
        pipe.set(link.keys.node(node_id), info, px=link.lease_ms)
        owned = [r for r in rooms if r.source is not None and r.state is LIVE]
        for r in owned:
            scripts["REFRESH"](keys=r.redis_keys, client=pipe, args=[
                r.chan_e, node_id, r.epoch, link.lease_ms, grace_ms, r.code,
                "1" if r.named else "0", r.peer, digest(r.resume_key) if r.resume_key else "",
                r.write_key or "", "%.3f" % r.opened_at, r.messages, r.bytes, r.last_published])
        # after an outage, owners get a lease to re-create what Redis lost before anyone decides
        # that a room whose keys are gone has ended
        check = not recovering and (self._up_since is None or self._monotonic() - self._up_since >= link.lease)
        watched = [r for r in rooms if r.source is None and r.state is not CLOSED] if check else []
        for r in watched:
            scripts["CHECK"](keys=r.redis_keys, client=pipe, args=[
                r.chan_e, grace_ms, r.code, "1" if r.named else "0"])
        paused = [r for r in rooms if r.outbox.waiting_writers]
        for r in paused:
            pipe.hget(r.redis_keys[1], "outbytes")
        for r in owned:
            pipe.hgetall(r.redis_keys[2])
        if recovering:
            for r in rooms:
                if r.subscribers:
                    pipe.hset(r.redis_keys[2], node_id, len(r.subscribers))
        cluster = link.keys.cluster
        if cluster:                                  # node liveness in one slot (proto.redis_keys)
            scripts["NODE_BEAT"](keys=[link.keys.nodes], args=[node_id, link.lease_ms], client=pipe)
        sent = self._monotonic()
        answers = pipe.execute()
        if cluster:
            link.dead_nodes = [text(n) for n in answers[-1] if text(n) != node_id]
        self.renewed_at = sent
        self._apply(answers, owned, len(watched), paused)
        self._renewed(owned)
        for r in model.rooms():
            r.flow.renew()                           # a mirror's report, renewed while it lags
        if recovering:
            self._recovered()

    def _apply(self, answers, owned, watched, paused):
        """A heartbeat's answers: owned rooms another node holds now, write-back queues with
        room again, the other nodes with subscribers in our rooms."""
        for r, held in zip(owned, answers[1:1 + len(owned)]):
            if held == 0 and r.source is not None:
                logger.warning("room %s: another node holds it now; hanging up its source here", r.code)
                r.fenced("replaced by a newer source")
        base = 1 + len(owned) + watched
        for r, queued in zip(paused, answers[base:base + len(paused)]):
            if int(queued or 0) < r.outbox.limit // 2:
                r.outbox.writable()
        base += len(paused)
        node_id = self.link.node_id
        for r, counts in zip(owned, answers[base:base + len(owned)]):
            r.flow.remote_nodes = frozenset(text(n) for n, c in counts.items()
                                            if int(c) > 0 and text(n) != node_id)

    def _renewed(self, owned):
        """A heartbeat got through: rooms that held their source's messages while the leases had
        lapsed, and are still ours (their REFRESH held; the others were fenced in :meth:`_apply`),
        publish them and read again."""
        kept = [r for r in owned if r.source is not None and r.holding]
        for room in kept:
            room.publisher.lease_renewed()
        if self.lapsed:
            self.lapsed = False
        if kept:
            logger.warning("node %s: leases renewed; %d source(s) read again", self.link.node, len(kept))

    def _recovered(self):
        link, stats = self.link, self.model.stats
        link.reachable = True
        if stats.redis_reconnects:
            self._up_since = self._monotonic()
        self.model.sync_named()
        if stats.redis_reconnects:
            logger.warning("redis reachable again at %s", link.endpoint)

    def prune(self):
        """Stop listening to rooms nobody here watches any more."""
        model = self.model
        now = self._monotonic()
        for room in model.rooms():
            if room.subscribers:
                continue
            if room.feeding and now - room.idle_since >= model.feed_linger:
                room.stop_feed()
            if room.source is None and not room.named and now - room.idle_since >= model.mirror_idle:
                model.forget(room)

    # -- the listener reconnected ---------------------------------------------------------
    def listener_up(self, listener):
        """After the listener reconnected: every room fed here may have lost batches meanwhile.
        Each is *tainted* until its next batch (the expected one: nothing was lost) or an event
        saying where the room stands decides; otherwise its subscribers here are closed 4408."""
        rooms = self.model.rooms()
        for room in rooms:
            if room.feeding and room.source is None:
                room.tainted = True
        if any(r.tainted for r in rooms):
            gevent.spawn(self._untaint_waiting).link_exception(
                lambda g: logger.error("redis: checking rooms after a reconnect failed", exc_info=g.exc_info))

    def _untaint_waiting(self):
        """A room that had no source before our connection broke, and still has the same epoch and
        no source — or that Redis lost altogether (a restart: a claim since would have re-created
        it) — published nothing meanwhile: nothing was lost. One that is live again (its owner
        re-created it while this connection was still down: its event is missed) takes its state
        from Redis."""
        link = self.link
        rooms = [r for r in self.model.rooms() if r.tainted and r.state is WAITING]
        if not rooms:
            return
        for r in rooms:
            link.pubsub.subscribe(r.chan_e).wait(self.model.confirm_timeout)
        pipe = link.redis.pipeline(transaction=False)
        for r in rooms:
            pipe.hgetall(r.redis_keys[1])
        try:
            answers = link.ask(pipe.execute)
        except RelayUnavailable:
            return
        for r, fields in zip(rooms, answers):
            epoch, state = fields.get(b"epoch"), fields.get(b"state")
            gone = epoch is None and state is None
            same = text(state) == WAITING and int(epoch or 0) == r.epoch
            if r.tainted and r.state is WAITING and (gone or same):
                r.tainted = False
            elif r.state is WAITING and text(state) == LIVE and r.source is None:
                # its owner re-created it live before this connection was back: that event
                # is missed, the hash says it (the next batch still decides the taint)
                self.model.sync(r, fields)
