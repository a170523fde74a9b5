"""Redis mode: the rooms of several processes (*nodes*) shared through one Redis.

:class:`RedisRoomModel` is the :class:`~sphincter_lib.rooms.interface.RoomModel` of a
node started with ``--redis-url``. ``ingest`` and ``web`` use it exactly like
the in-process registry. What it adds (design and measurements:
``docs/redis-design.md``; keys and scripts: ``redis_keys``; I/O:
``cluster.link``; a room as a node sees it: ``cluster.room``):

- **rooms relay-wide**: a code is reserved in Redis (``OPEN``), so codes are
  unique across nodes and ``--max-rooms`` counts every node's rooms; a named
  room has one source relay-wide (``CLAIM`` fences the previous one, wherever
  it is, with the room's epoch); a source may ``RESUME`` its room on any node;
- **messages**: the node holding a room's source publishes one batch per loop
  turn; a node with subscribers in the room listens to it and nobody else
  receives anything of it (see ``cluster.room``);
- **subscribers**: admitted against the relay-wide count (``ADMIT``, 4429);
  a room this node has never seen is looked up in Redis and mirrored;
- **liveness**: every ``--redis-lease``/3 s the node renews its heartbeat and
  the leases of the rooms it owns, and checks the rooms it mirrors: a room whose
  owner died (lease gone) goes waiting (grace, named) or closes (4410);
- **Redis unreachable**: what runs keeps running locally; new sources get
  ``ERROR relay unavailable`` and new subscribers 1013; once Redis is back the
  node re-creates what Redis lost (its rooms, leases, subscriber counts) and
  mirrors that missed batches close their subscribers 4408, never showing a gap.
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import time

import gevent
from gevent.event import AsyncResult

from .. import __version__
from ..proto import redis_keys, resp
from ..rooms.room import CLOSED, LIVE, WAITING
from ..errors import CannotResume, ConfigError, RelayUnavailable, RoomFullError, RoomLimitError, RoomNotFound, ShuttingDown
from .flow import parse_report, report_message
from .link import Endpoint, Listener, Pipe, control_client, redis_errors
from .room import RedisRoom
from ..proto.roomcode import resume_key, room_key
from ..rooms.registry import RoomRegistry

logger = logging.getLogger("sphincter.cluster.model")

__all__ = ["RedisRoomModel", "default_node_name"]


def default_node_name():
    return "%s-%d" % (socket.gethostname().split(".")[0] or "node", os.getpid())


def _digest(key):
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def _named_write_key(spec):
    """A named room's write key when the rooms file gives none: derived from its token (a secret
    every node has), so every node of the relay agrees on it without asking Redis."""
    mac = hmac.new(spec.token, b"sphincter write key " + spec.key.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ("" if value is None else str(value))


class RemoteRoom:
    """A room held by another node, as ``/api/rooms`` shows it (read from its Redis hash)."""

    backlog_bytes = 0
    peak_subscribers = slow_cutoffs = skipped = source_pauses = resumes = takeovers = replayed = 0
    source_paused = False
    paused_seconds = 0.0

    def __init__(self, key, fields, subscribers):
        get = lambda name: _text(fields.get(name.encode()))     # noqa: E731
        self.code = get("code") or key
        self.state = get("state") or WAITING
        self.named = get("named") == "1"
        self.source_id = get("owner")
        self.source_node = self.source_id.split("/")[0]
        self.peer = get("peer")
        self.source = self.source_id or None
        self.presence = "online" if self.source else "offline"
        self.opened_at = float(get("opened_at") or 0)
        self.messages = int(get("messages") or 0)
        self.bytes = int(get("bytes") or 0)
        self.subscribers = range(subscribers)
        self.relay_subscribers = subscribers

    def paused_for(self, now=None):
        return 0.0

    def lag_max(self):
        return 0


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

    def __init__(self, encode, redis_url, node="", prefix="sph", lease=5.0, **kwargs):
        try:
            import redis  # noqa: F401  (only whether it is there)
            del redis
        except ImportError:
            raise ConfigError("argument --redis-url: Redis mode needs the 'redis' package "
                              "(pip install -r requirements.txt)")
        self.node = node or default_node_name()
        #: this process among the nodes in Redis: its name and a nonce, so that a node restarted
        #: under the same name is not taken for its previous run (its leases, subscriber counts)
        self.node_id = "%s/%s" % (self.node, secrets.token_hex(3))
        self.keys = redis_keys.Keys(prefix)
        self.endpoint = Endpoint(redis_url)
        self.lease = lease
        self.lease_ms = int(lease * 1000)
        self.redis = control_client(self.endpoint)
        self._errors = redis_errors()
        self._beat_ok = False
        self._up_since = None            # when Redis came back after an outage (None: no outage)
        self._creating = {}
        self._housekeeper = None
        # the pipe reconnects and resends by itself: only the listener (always reading, so it
        # notices at once) and the control calls say whether Redis is reachable
        self.pipe = Pipe(self.endpoint)
        self.pubsub = Listener(self.endpoint, self._on_push, on_down=self._link_down, on_up=self._listener_up)
        scripts = ("OPEN", "CLAIM", "RESUME", "CHECK", "REFRESH", "ADMIT", "ENSURE_NAMED")
        self._lua = {name: self.redis.register_script(getattr(redis_keys, name)) for name in scripts}
        # the base loads the named rooms through reload(), which this class overrides: it gets
        # none here, and they are loaded last, once this model is whole
        named = kwargs.pop("named", ())
        RoomRegistry.__init__(self, encode, named=(), **kwargs)
        self.grace_ms = int((self.limits.grace or 0) * 1000)
        self.pubsub.yield_bytes = max(4096, min(Listener.yield_bytes, self.limits.buffer_bytes // 4))
        self.reload(named)

    # -- state ---------------------------------------------------------------------------
    @property
    def redis_up(self):
        return self._beat_ok and self.pubsub.connected

    @property
    def redis_state(self):
        return "ok" if self.redis_up else "down"

    def _failed(self, exc):
        if self._beat_ok:
            self._beat_ok = False
            self.stats.redis_reconnects += 1
            logger.warning("redis unreachable at %s: %s; new sources and subscribers are refused until "
                           "it is back", self.endpoint, exc)

    def _link_down(self, link):
        self._failed("%s connection lost" % link.name)

    def _call(self, name, room_or_keys, *args):
        """A script with an answer; RelayUnavailable when Redis cannot be reached."""
        if not self._beat_ok:
            raise RelayUnavailable()
        keys = room_or_keys.redis_keys if isinstance(room_or_keys, RedisRoom) else room_or_keys
        return self._ask(self._lua[name], keys=keys, args=list(args))

    def _ask(self, fn, *args, **kwargs):
        """``fn(...)`` against Redis, tried twice: a pooled connection that Redis closed (a
        restart) fails once, then the pool connects afresh. RelayUnavailable after that."""
        for attempt in (1, 2):
            try:
                return fn(*args, **kwargs)
            except self._errors as exc:
                if attempt == 2:
                    self._failed(exc)
                    raise RelayUnavailable()

    # -- start and stop ----------------------------------------------------------------------
    def start(self):
        self.pubsub.subscribe(self.keys.to_node(self.node_id))
        self.pipe.start()
        self.pubsub.start()
        try:
            self._beat()
        except self._errors as exc:
            logger.error("redis unreachable at %s: %s; retrying every %.1fs", self.endpoint, exc,
                         self.lease / 3.0)
        else:
            logger.info("node %s joined the relay at %s", self.node, self.endpoint)
        self._housekeeper = gevent.spawn(self._housekeep)
        self._housekeeper.link_exception(lambda g: logger.error("redis housekeeping crashed",
                                                                exc_info=g.exc_info))

    def close_all(self, code, reason):
        """This node stops: its sources' rooms go waiting or close relay-wide (as if their sources
        left); its own subscribers drain and get ``code`` (1001)."""
        self.shutting_down = True
        for room in list(self._rooms.values()):
            if room.source is not None:
                room.send_batch()
                self.leave(room)
                room.source = None
            room.close(code, reason)

    def stop(self):
        self.pipe.flush(2.0)
        try:
            self.redis.delete(self.keys.node(self.node_id))
        except self._errors:
            pass
        if self._housekeeper is not None:
            self._housekeeper.kill(block=False)
        self.pipe.stop()
        self.pubsub.stop()
        logger.info("node %s left the relay", self.node)

    # -- sources -----------------------------------------------------------------------------
    def open(self, source):
        if self.shutting_down:
            raise ShuttingDown()
        resume = resume_key() if self.limits.grace else None
        write = resume_key() if self.write_back else None
        for _ in range(20):
            code = self._new_code(self._rooms)
            room = self.room_class(code, source, self.limits, self.encode, self, self.stats,
                                   clock=self._clock, monotonic=self._monotonic)
            done = self._call("OPEN", room, self.keys.events(code), self.node_id, self.lease_ms, code,
                              source.peer, _digest(resume) if resume else "", write or "", self.max_rooms,
                              "%.3f" % room.opened_at, self.grace_ms)
            if done == -1:
                raise RoomLimitError()
            if done == 1:
                break
        else:
            raise RoomLimitError("no free room code")
        room.epoch = 1
        room.resume_key, room.write_key = resume, write
        self._add(room)
        self.stats.rooms_opened += 1
        self.source_attached(room, source)
        return room

    def claim(self, token, source):
        if self.shutting_down:
            raise ShuttingDown()
        room = self.named_room(token)
        if room is None:
            return None
        epoch, write = self._call("CLAIM", room, room.chan_e, self.node_id, self.lease_ms, room.code,
                                  source.peer, room.write_key or "")
        room.write_key = _text(write) or None
        room.await_own_live(int(epoch), self.confirm_timeout)
        return room, room.own(source, int(epoch))

    def resume(self, code, key, source):
        if self.shutting_down:
            raise ShuttingDown()
        try:
            rkey = room_key(code)
        except RoomNotFound:
            raise CannotResume()
        if not key or rkey in self._named:
            raise CannotResume()
        new_key = resume_key()
        room = self._rooms.get(rkey) or self.room_class(rkey, None, self.limits, self.encode, self,
                                                        self.stats, clock=self._clock,
                                                        monotonic=self._monotonic)
        answer = self._call("RESUME", room, room.chan_e, self.node_id, self.lease_ms, rkey, source.peer,
                            _digest(key), _digest(new_key), self.grace_ms)
        if not answer:
            raise CannotResume()
        epoch, write, opened_at = int(answer[0]), _text(answer[1]), _text(answer[2])
        if self._rooms.get(rkey) is not room:
            room.code = rkey
            room.opened_at = float(opened_at or room.opened_at)
            room.mark_fed()
            self._add(room)
        room.resume_key = new_key
        room.write_key = write or None
        room.await_own_live(epoch, self.confirm_timeout)
        return room, room.own(source, epoch)

    def leave(self, room):
        """The room's source (on this node) left: tell the relay, after its last batch."""
        self.pipe.send(resp.command("EVAL", redis_keys.LEAVE, 6, *(room.redis_keys + [
            room.chan_e, self.node_id, room.epoch, self.grace_ms, room.key, room.last_published])))

    def publish_batch(self, room, data):
        self.stats.redis_batches_out += 1
        if room.replay:
            self.pipe.send(resp.command("XADD", room.redis_keys[3], "MAXLEN", "~", room.replay,
                                        "%d-%d" % (room.epoch, room.pub_seq), "d", data), droppable=True)
        self.pipe.send(resp.command("PUBLISH", room.chan_m, data), droppable=True)

    def report_flow(self, room, text):
        """A mirror's flow-control report (``EPOCH OFFSET[:UNREAD]`` or ``EPOCH -``) to the room's
        owner."""
        if room.source_id and room.source_id != self.node_id:
            self.pipe.send(resp.command("PUBLISH", self.keys.to_node(room.source_id),
                                        report_message(room.key, text, self.node_id)), droppable=True)

    def _on_flow(self, text):
        """Another node's flow-control report (``cluster.flow``) about a room this node owns."""
        report = parse_report(text)
        room = self._rooms.get(report[0]) if report is not None else None
        if room is None:
            return
        key, epoch, offset, unread, node = report
        if room.flow.remote_flow(node, epoch, offset, self._monotonic() + self.lease, unread):
            room.resume_source()

    # -- subscribers -----------------------------------------------------------------------
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
            room = self.room_class(key, None, self.limits, self.encode, self, self.stats,
                                   clock=self._clock, monotonic=self._monotonic)
            room.state = LIVE
            if not self.pubsub.subscribe(room.chan_e).wait(self.confirm_timeout):
                raise RelayUnavailable()
            fields = self._ask(self.redis.hgetall, room.redis_keys[1])
            made = self._rooms.get(key)           # meanwhile, here (a RESUME, say): that one
            if made is not None:
                room = made
            elif not fields:
                self.pubsub.unsubscribe(room.chan_e)
                raise RoomNotFound()
            else:
                self._sync(room, fields)
                self._rooms[key] = room
            pending.set(room)
            return room
        except Exception as exc:
            pending.set_exception(exc)
            raise
        finally:
            del self._creating[key]

    def _sync(self, room, fields):
        """A mirror takes the relay-wide state of its room from its Redis hash."""
        get = lambda name: _text(fields.get(name.encode()))      # noqa: E731
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

    def subscribe(self, code, peer):
        room = self.get(code)
        if room.state is CLOSED:
            raise RoomNotFound()
        n = self._call("ADMIT", room, room.chan_e, self.node_id, room.max_subscribers, self.keys.node_prefix,
                       "1" if room.named else "0", room.code)
        if n == -1:
            raise RoomNotFound()
        if n == -2:
            raise RoomFullError()
        try:
            room.ensure_feed(self.confirm_timeout)
            if not room.subscribers and room.source is None and room.flow_control:
                # the first subscriber here: until our first report the owner takes us to be
                # where its source is now, so it does not run ahead of us unbounded meanwhile
                self.report_flow(room, "%d ^" % room.epoch)
            return room.subscribe(peer)
        except Exception:
            self._count_left(room)
            raise

    def _count_left(self, room):
        self.pipe.send(resp.command("HINCRBY", room.redis_keys[2], self.node_id, -1))

    # -- write-back --------------------------------------------------------------------------
    def out_head(self, room):
        return self._ask(self.redis.lrange, room.redis_keys[4], 0, 63)

    def _listener_up(self, link):
        self._recheck_feeds()
        if any(r.tainted for r in self._rooms.values()):
            gevent.spawn(self._untaint_waiting).link_exception(
                lambda g: logger.error("redis: checking rooms after a reconnect failed", exc_info=g.exc_info))

    def _untaint_waiting(self):
        """A room that had no source before our connection broke, and still has the same epoch and
        no source — or that Redis lost altogether (a restart: a claim since would have re-created
        it) — published nothing meanwhile: nothing was lost."""
        rooms = [r for r in self._rooms.values() if r.tainted and r.state is WAITING]
        if not rooms:
            return
        for r in rooms:
            self.pubsub.subscribe(r.chan_e).wait(self.confirm_timeout)
        pipe = self.redis.pipeline(transaction=False)
        for r in rooms:
            pipe.hmget(r.redis_keys[1], "epoch", "state")
        try:
            answers = self._ask(pipe.execute)
        except RelayUnavailable:
            return
        for r, (epoch, state) in zip(rooms, answers):
            gone = epoch is None and state is None
            same = _text(state) == WAITING and int(epoch or 0) == r.epoch
            if r.tainted and r.state is WAITING and (gone or same):
                r.tainted = False

    def _recheck_feeds(self):
        """After the listener reconnected: every room fed here may have lost batches meanwhile.
        Each is *tainted* until its next batch (the expected one: nothing was lost) or an event
        saying where the room stands decides; otherwise its subscribers here are closed 4408."""
        for room in self._rooms.values():
            if room.feeding and room.source is None:
                room.tainted = True

    def read_log(self, room):
        entries = self._ask(self.redis.xrevrange, room.redis_keys[3], count=room.replay)
        return [(entry_id, fields.get(b"d", b"")) for entry_id, fields in entries]

    # -- the admin API -----------------------------------------------------------------------
    def listing(self):
        """Every room of the relay: this node's, and the others' read from Redis."""
        if not self.redis_up:
            raise RelayUnavailable()
        try:
            now_ms = int(time.time() * 1000)
            keys = [_text(k) for k in self.redis.zrangebyscore(self.keys.rooms, now_ms, "+inf")]
            keys = sorted(set(keys) | set(self._rooms))
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                room_keys = self.keys.room(key)
                pipe.hgetall(room_keys[1])
                pipe.hvals(room_keys[2])
            answers = pipe.execute()
        except self._errors as exc:
            self._failed(exc)
            raise RelayUnavailable()
        out = []
        for i, key in enumerate(keys):
            fields, counts = answers[2 * i], answers[2 * i + 1]
            total = sum(int(c) for c in counts)
            room = self._rooms.get(key)
            if room is not None:
                room.relay_subscribers = max(total, len(room.subscribers))
                out.append(room)
            elif fields:
                out.append(RemoteRoom(key, fields, total))
        return out

    # -- what Redis tells this node -----------------------------------------------------------
    def _on_push(self, channel, data):
        kind = channel[len(self.keys.prefix) + 1]
        if kind == "n":
            self._on_flow(_text(data))
            return
        room = self._rooms.get(self.keys.channel_room(channel))
        if room is None:
            return
        if kind == "m":
            room.receive(data)
        elif kind == "e":
            room.on_event(_text(data))
        elif kind == "w":
            room.outbox.wake()

    # -- rooms known here ------------------------------------------------------------------
    def _add(self, room):
        self._rooms[room.key] = room
        self.pubsub.subscribe(room.chan_e)
        if room.write_key:
            self.pubsub.subscribe(room.chan_w)

    def _forget(self, room):
        self.pubsub.unsubscribe(room.chan_e)
        self.pubsub.unsubscribe(room.chan_w)
        room.stop_feed()

    def reload(self, specs):
        result = RoomRegistry.reload(self, specs)
        for spec, room in self._named.values():
            if self.write_back and not spec.write:
                room.write_key = _named_write_key(spec)     # the same on every node
            if room.chan_e not in self.pubsub.channels:
                self._add(room)
        if self._beat_ok:
            self._sync_named()
        return result

    def _sync_named(self):
        pipe = self.redis.pipeline(transaction=False)
        rooms = [room for _, room in self._named.values()]
        for room in rooms:
            self._lua["ENSURE_NAMED"](keys=room.redis_keys, args=[room.chan_e, room.code], client=pipe)
        for room, answer in zip(rooms, pipe.execute()):
            fields = dict(zip(answer[::2], answer[1::2]))
            if room.source is None:
                self._sync(room, fields)

    # -- RoomEvents (from the rooms) -------------------------------------------------------
    def subscriber_left(self, room, sub):
        RoomRegistry.subscriber_left(self, room, sub)
        self._count_left(room)
        if not room.subscribers:
            room.idle_since = self._monotonic()
            room.flow.forget_lead()

    def room_closed(self, room):
        if self._rooms.get(room.key) is room:
            del self._rooms[room.key]
            self.stats.rooms_closed += 1
            self._forget(room)
        self.listener.room_closed(room)

    # -- housekeeping ------------------------------------------------------------------------
    def _housekeep(self):
        while True:
            gevent.sleep(self.lease / 3.0)
            try:
                self._ask(self._beat)
            except RelayUnavailable:
                pass
            except Exception:
                logger.error("redis housekeeping failed", exc_info=True)
            self._prune()

    def _beat(self):
        """Heartbeat; renew the leases of owned rooms; check mirrored rooms; after an outage,
        re-create what Redis lost."""
        recovering = not self._beat_ok
        pipe = self.redis.pipeline(transaction=False)
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "version": __version__})
        pipe.set(self.keys.node(self.node_id), info, px=self.lease_ms)
        owned = [r for r in self._rooms.values() if r.source is not None and r.state is LIVE]
        for r in owned:
            self._lua["REFRESH"](keys=r.redis_keys, client=pipe, args=[
                r.chan_e, self.node_id, r.epoch, self.lease_ms, self.grace_ms, r.code,
                "1" if r.named else "0", r.peer, _digest(r.resume_key) if r.resume_key else "",
                r.write_key or "", "%.3f" % r.opened_at, r.messages, r.bytes, r.last_published])
        # after an outage, owners get a lease to re-create what Redis lost before anyone decides
        # that a room whose keys are gone has ended
        check = not recovering and (self._up_since is None or self._monotonic() - self._up_since >= self.lease)
        watched = [r for r in self._rooms.values() if r.source is None and r.state is not CLOSED] if check else []
        for r in watched:
            self._lua["CHECK"](keys=r.redis_keys, client=pipe, args=[
                r.chan_e, self.grace_ms, r.code, "1" if r.named else "0"])
        paused = [r for r in self._rooms.values() if r.outbox.waiting_writers]
        for r in paused:
            pipe.hget(r.redis_keys[1], "outbytes")
        for r in owned:
            pipe.hgetall(r.redis_keys[2])
        if recovering:
            for r in self._rooms.values():
                if r.subscribers:
                    pipe.hset(r.redis_keys[2], self.node_id, len(r.subscribers))
        answers = pipe.execute()
        for r, held in zip(owned, answers[1:1 + len(owned)]):
            if held == 0 and r.source is not None:
                logger.warning("room %s: another node holds it now; hanging up its source here", r.code)
                r.fenced("replaced by a newer source")
        base = 1 + len(owned) + len(watched)
        for r, queued in zip(paused, answers[base:base + len(paused)]):
            if int(queued or 0) < r.outbox.limit // 2:
                r.outbox.writable()
        base += len(paused)
        for r, counts in zip(owned, answers[base:base + len(owned)]):
            r.flow.remote_nodes = frozenset(_text(n) for n, c in counts.items()
                                       if int(c) > 0 and _text(n) != self.node_id)
        for r in self._rooms.values():
            r.flow.renew()                           # a mirror's report, renewed while it lags
        if recovering:
            self._beat_ok = True
            if self.stats.redis_reconnects:
                self._up_since = self._monotonic()
            if self._named:
                self._sync_named()
            if self.stats.redis_reconnects:
                logger.warning("redis reachable again at %s", self.endpoint)

    def _prune(self):
        """Stop listening to rooms nobody here watches any more."""
        now = self._monotonic()
        for room in list(self._rooms.values()):
            if room.subscribers:
                continue
            if room.feeding and now - room.idle_since >= self.feed_linger:
                room.stop_feed()
            if room.source is None and not room.named and now - room.idle_since >= self.mirror_idle:
                del self._rooms[room.key]
                self._forget(room)
