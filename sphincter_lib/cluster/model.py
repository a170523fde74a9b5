"""Redis mode: the rooms of several processes (*nodes*) shared through one Redis.

:class:`RedisRoomModel` is the :class:`~sphincter_lib.rooms.interface.RoomModel` of a
node started with ``--redis-url``. ``ingest`` and ``web`` use it exactly like
the in-process registry (it builds on :class:`~sphincter_lib.rooms.registry.RoomRegistry`
for the rooms known here). Design and measurements: ``docs/redis-design.md``; keys and
scripts: ``proto.redis_keys``. It is composed of what it holds, by responsibility:

- :class:`~sphincter_lib.cluster.node.NodeLink` (``cluster.node``): the node's id and keys,
  its connections to Redis (``cluster.link``), whether Redis is reachable;
- :class:`~sphincter_lib.cluster.admission.Admission` (``cluster.admission``): **rooms and
  subscribers relay-wide** — a code is reserved in Redis (``OPEN``), so codes are unique
  across nodes and ``--max-rooms`` counts every node's rooms; a named room has one source
  relay-wide (``CLAIM``); a source may ``RESUME`` its room on any node; subscribers are
  admitted against the relay-wide count (``ADMIT``, 4429);
- :class:`~sphincter_lib.cluster.liveness.Liveness` (``cluster.liveness``): every
  ``--redis-lease``/3 s the heartbeat and the leases of the rooms it owns, the checks of the
  rooms it mirrors (a room whose owner died goes waiting or closes, 4410), and after an outage
  the re-creation of what Redis lost;
- :class:`~sphincter_lib.cluster.listing.Listing` (``cluster.listing``): every room of the
  relay, for ``/api/rooms`` and ``/metrics``.

What stays here: the rooms known on this node (its own, and **mirrors**: a room this node has
never seen is looked up in Redis and mirrored, see ``cluster.room``), what Redis pushes to the
node (dispatched to its rooms), what the rooms send through it (batches, flow-control reports),
and start/stop. **Messages**: the node holding a room's source publishes one batch per loop
turn; a node with subscribers in the room listens to it and nobody else receives anything of
it. **Redis unreachable**: what runs keeps running locally; new sources get ``ERROR relay
unavailable`` and new subscribers 1013; once Redis is back, mirrors that missed batches close
their subscribers 4408, never showing a gap.
"""

import base64
import hashlib
import hmac
import logging

from gevent.event import AsyncResult

from ..errors import ConfigError, RelayUnavailable, RoomNotFound, ShuttingDown
from ..proto import resp
from ..proto.roomcode import room_key
from ..rooms.registry import RoomRegistry
from ..rooms.room import LIVE
from ..rooms.stats import Stats
from .admission import Admission
from .flow import parse_report, report_message
from .link import Listener
from .listing import Listing
from .liveness import Liveness
from .node import NodeLink, text
from .room import RedisRoom

logger = logging.getLogger("sphincter.cluster.model")

__all__ = ["RedisRoomModel"]


def _named_write_key(spec):
    """A named room's write key when the rooms file gives none: derived from its token (a secret
    every node has), so every node of the relay agrees on it without asking Redis."""
    mac = hmac.new(spec.token, b"sphincter write key " + spec.key.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


class RedisRoomModel(RoomRegistry):
    """Rooms shared with every node on the same Redis (see the module docstring)."""

    room_class = RedisRoom
    #: seconds a mirror without local subscribers keeps listening to the room's batches
    feed_linger = 2.0
    #: seconds a mirror nobody uses stays known (longer than a /status long-poll)
    mirror_idle = 40.0
    #: seconds to wait for Redis to confirm a subscription
    confirm_timeout = 2.0
    #: seconds between checks of a source waiting for other nodes' subscribers
    flow_recheck = 0.25

    def __init__(self, encode, redis_url, node="", prefix="sph", lease=5.0, sentinels=(), sentinel_master="",
                 sentinel_password="", **kwargs):
        try:
            import redis  # noqa: F401  (only whether it is there)
            del redis
        except ImportError:
            raise ConfigError("argument --redis-url: Redis mode needs the 'redis' package "
                              "(pip install -r requirements.txt)")
        if kwargs.get("stats") is None:
            kwargs["stats"] = Stats()
        link = self.link = NodeLink(redis_url, kwargs["stats"], self._on_push, node, prefix, lease,
                                    sentinels, sentinel_master, sentinel_password)
        # the link's, for the rooms (cluster.room, cluster.mirror, cluster.outbox)
        self.node, self.node_id, self.keys = link.node, link.node_id, link.keys
        self.pipe, self.pubsub, self.lease = link.pipe, link.pubsub, lease
        self._creating = {}
        # the base loads the named rooms through reload(), which this class overrides: it gets
        # none here, and they are loaded last, once this model is whole
        named = kwargs.pop("named", ())
        RoomRegistry.__init__(self, encode, named=(), **kwargs)
        self.grace_ms = int((self.limits.grace or 0) * 1000)
        self.admission = Admission(self, link)
        self.liveness = Liveness(self, link, self._monotonic)
        self.room_listing = Listing(self, link)
        link.pubsub.on_up = self.liveness.listener_up
        link.on_switch.append(self.liveness.beat_soon)
        link.pubsub.yield_bytes = max(4096, min(Listener.yield_bytes, self.limits.buffer_bytes // 4))
        self.reload(named)

    # -- state ---------------------------------------------------------------------------
    @property
    def redis_up(self):
        return self.link.up

    @property
    def redis_state(self):
        return "ok" if self.link.up else "down"

    def lease_held(self):
        """This node's leases still hold (``cluster.liveness``): an owner may publish."""
        return self.liveness.lease_held()

    # -- start and stop ----------------------------------------------------------------------
    def start(self):
        self.pubsub.subscribe(self.keys.to_node(self.node_id))
        self.pipe.start()
        self.pubsub.start()
        if self.link.watcher is not None:
            self.link.watcher.start()             # Sentinel's +switch-master
        self.liveness.start()

    def close_all(self, code, reason):
        """This node stops: its sources' rooms go waiting or close relay-wide (as if their sources
        left); its own subscribers drain and get ``code`` (1001)."""
        self.shutting_down = True
        for room in self.rooms():
            if room.source is not None:
                room.send_batch()
                self.leave(room)
                room.source = None
            room.close(code, reason)

    def stop(self):
        self.pipe.flush(2.0)
        try:
            self.link.redis.delete(self.keys.node(self.node_id))
            if self.keys.cluster:                  # seen dead at once (its counts go)
                self.link.scripts["NODE_BEAT"](keys=[self.keys.nodes], args=[self.node_id, 0])
        except self.link.errors:
            pass
        self.liveness.stop()
        self.pipe.stop()
        self.pubsub.stop()
        if self.link.watcher is not None:
            self.link.watcher.stop()
        logger.info("node %s left the relay", self.node)

    # -- sources and subscribers, relay-wide: cluster.admission ----------------------------
    def open(self, source):
        return self.admission.open(source)

    def claim(self, token, source):
        return self.admission.claim(token, source)

    def resume(self, code, key, source):
        return self.admission.resume(code, key, source)

    def subscribe(self, code, peer):
        return self.admission.subscribe(code, peer)

    def leave(self, room):
        """The room's source (on this node) left: tell the relay, after its last batch."""
        self.admission.leave(room)

    def listing(self):
        """Every room of the relay: this node's, and the others' read from Redis (cluster.listing)."""
        return self.room_listing.rooms()

    # -- what the rooms send through the node ----------------------------------------------
    def publish_batch(self, room, data):
        self.stats.redis_batches_out += 1
        if room.replay:
            self.pipe.send(resp.command("XADD", room.redis_keys[3], "MAXLEN", "~", room.replay,
                                        "%d-%d" % (room.epoch, room.pub_seq), "d", data), droppable=True)
        self.pipe.send(resp.command(self.keys.publish, room.chan_m, data), droppable=True)

    def report_flow(self, room, report):
        """A mirror's flow-control report (``EPOCH OFFSET[:UNREAD]``, ``EPOCH ^`` or ``EPOCH -``:
        ``cluster.flow``) to the room's owner."""
        if room.source_id and room.source_id != self.node_id:
            self.pipe.send(resp.command(self.keys.publish, self.keys.to_node(room.source_id),
                                        report_message(room.key, report, self.node_id)), droppable=True)

    def _on_flow(self, message):
        """Another node's flow-control report (``cluster.flow``) about a room this node owns."""
        report = parse_report(message)
        room = self.known(report[0]) if report is not None else None
        if room is None:
            return
        key, epoch, offset, unread, node = report
        if room.flow.remote_flow(node, epoch, offset, self._monotonic() + self.lease, unread):
            room.pace.resume()

    def out_head(self, room):
        """The head of the room's write-back queue (``cluster.outbox``)."""
        return self.link.ask(self.link.redis.lrange, room.redis_keys[4], 0, 63)

    def read_log(self, room):
        """The room's replay log, newest first (``cluster.mirror``)."""
        entries = self.link.ask(self.link.redis.xrevrange, room.redis_keys[3], count=room.replay)
        return [(entry_id, fields.get(b"d", b"")) for entry_id, fields in entries]

    # -- what Redis tells this node -----------------------------------------------------------
    def _on_push(self, channel, data):
        kind = channel[len(self.keys.prefix) + 1]
        if kind == "n":
            self._on_flow(text(data))
            return
        room = self._rooms.get(self.keys.channel_room(channel))
        if room is None:
            return
        if kind == "m":
            room.receive(data)
        elif kind == "e":
            room.on_event(text(data))
        elif kind == "w":
            room.outbox.wake()

    # -- rooms known here ------------------------------------------------------------------
    def new_room(self, code, source=None):
        """A room object for ``code`` (not yet known here: see :meth:`add`)."""
        return self.room_class(code, source, self.limits, self.encode, self, self.stats,
                               clock=self._clock, monotonic=self._monotonic)

    def new_code(self):
        """A fresh room code, not one of a room known here."""
        return self._new_code(self._rooms)

    def known(self, key):
        """The room ``key`` (case-folded code) if this node knows it, else None."""
        return self._rooms.get(key)

    def is_named(self, key):
        return key in self._named

    def get(self, code):
        if self.shutting_down:
            raise ShuttingDown()
        key = room_key(code)
        room = self._rooms.get(key)
        if room is None:
            room = self._mirror(key)
        room.idle_since = self._monotonic()
        return room

    def _mirror(self, key):
        """The room ``key`` held by another node, known here from now on; RoomNotFound."""
        pending = self._creating.get(key)
        if pending is not None:
            return pending.get()
        if not self.redis_up:
            raise RelayUnavailable()
        pending = self._creating[key] = AsyncResult()
        try:
            room = self.new_room(key)
            room.state = LIVE
            if not self.pubsub.subscribe(room.chan_e).wait(self.confirm_timeout):
                raise RelayUnavailable()
            fields = self.link.ask(self.link.redis.hgetall, room.redis_keys[1])
            made = self._rooms.get(key)           # meanwhile, here (a RESUME, say): that one
            if made is not None:
                room = made
            elif not fields:
                self.pubsub.unsubscribe(room.chan_e)
                raise RoomNotFound()
            else:
                self.sync(room, fields)
                self._rooms[key] = room
            pending.set(room)
            return room
        except Exception as exc:
            pending.set_exception(exc)
            raise
        finally:
            del self._creating[key]

    def sync(self, room, fields):
        """A mirror takes the relay-wide state of its room from its Redis hash."""
        get = lambda name: text(fields.get(name.encode()))      # noqa: E731
        room.code = get("code") or room.code
        room.opened_at = float(get("opened_at") or room.opened_at)
        room.write_key = get("write") or room.write_key
        epoch = int(get("epoch") or 0)
        if epoch > room.epoch:
            room.epoch = epoch
        if room.source is not None:
            return
        if get("state") == "live" and get("owner"):
            room.went_live(epoch, get("owner"), get("peer"))
            room.state = LIVE
        elif room.state is LIVE:
            room.went_waiting()

    def add(self, room):
        self._rooms[room.key] = room
        self.pubsub.subscribe(room.chan_e)
        if room.write_key:
            self.pubsub.subscribe(room.chan_w)

    def forget(self, room):
        """A mirror nobody here uses any more: no longer known here."""
        if self._rooms.get(room.key) is room:
            del self._rooms[room.key]
        self._unlisten(room)

    def _unlisten(self, room):
        self.pubsub.unsubscribe(room.chan_e)
        self.pubsub.unsubscribe(room.chan_w)
        room.stop_feed()

    def reload(self, specs):
        result = RoomRegistry.reload(self, specs)
        for spec, room in self._named.values():
            if self.write_back and not spec.write:
                room.write_key = _named_write_key(spec)     # the same on every node
            if room.chan_e not in self.pubsub.channels:
                self.add(room)
        if self.link.reachable:
            self.sync_named()
        return result

    def sync_named(self):
        """Make sure Redis has the named rooms (it lost them, or never had them) and take their
        relay-wide state."""
        rooms = [room for _, room in self._named.values()]
        if not rooms:
            return
        pipe = self.link.redis.pipeline(transaction=False)
        for room in rooms:
            self.link.scripts["ENSURE_NAMED"](keys=room.redis_keys, args=[room.chan_e, room.code], client=pipe)
        for room, answer in zip(rooms, pipe.execute()):
            fields = dict(zip(answer[::2], answer[1::2]))
            if room.source is None:
                self.sync(room, fields)

    # -- RoomEvents (from the rooms) -------------------------------------------------------
    def subscriber_left(self, room, sub):
        RoomRegistry.subscriber_left(self, room, sub)
        self.admission.subscriber_left(room)
        if not room.subscribers:
            room.idle_since = self._monotonic()
            room.flow.forget_lead()

    def room_closed(self, room):
        if self._rooms.get(room.key) is room:
            del self._rooms[room.key]
            self.stats.rooms_closed += 1
            self._unlisten(room)
        self.listener.room_closed(room)
