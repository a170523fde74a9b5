"""Redis mode on a Redis Cluster: which shard serves what, and one connection of each kind per shard.

``--redis-url`` naming any node of a Cluster is detected (:func:`detect`: ``INFO cluster``). The
node reads the slot map (``CLUSTER SLOTS``, :class:`Topology`) and holds, per shard, a
:class:`~sphincter_lib.cluster.pipe.Pipe` (:class:`ShardedPipe` routes each pre-encoded command by
its key's slot: ``proto.slots.command_key``) and a sharded-pub/sub
:class:`~sphincter_lib.cluster.link.Listener` (:class:`ShardedListener`: ``SSUBSCRIBE`` on the
shard of the channel's slot); calls that need an answer go through redis-py's ``RedisCluster``
(:func:`control_client`, it follows ``MOVED``/``ASK``). A room's keys and channels share one slot
(``proto.redis_keys``): every script runs on one shard, and its batches are ordered on one
connection.

A shard keeps the name it had when the node first read the map (its first slot): when its primary
dies and a replica is promoted, that shard's connections break, each reconnection asks the map
again (``CLUSTER SLOTS`` from any node that answers) until it names the new primary, and the node
recovers as after a Sentinel failover (``cluster.liveness``: what the new primary lacks is
rebuilt; mirrors that may have missed batches are tainted, never shown a gap). A ``-MOVED``
answer on the pipe drops its connection the same way. Slots moving between shards while nodes
run (resharding) is not followed beyond that: restart the nodes after one.
"""

import logging
import time

from ..proto import resp, slots
from .link import Endpoint, Listener, exchange
from .pipe import Pipe

logger = logging.getLogger("sphincter.cluster.shards")

__all__ = ["detect", "Topology", "ShardEndpoint", "ShardedPipe", "ShardedListener", "control_client",
           "EvalScript"]


def detect(endpoint):
    """The server ``--redis-url`` names is a Redis Cluster node (OSError if it cannot be asked)."""
    sock = endpoint.connect()
    try:
        reply = exchange(sock, [resp.command("INFO", "cluster")])[0]
    finally:
        sock.close()
    if isinstance(reply, resp.Error):
        return False
    return slots.cluster_enabled(reply)


class Topology:
    """The slot map, read from any node that answers (the URL's first, then every node known)."""

    #: seconds during which a map just read is not read again
    fresh = 0.25

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.known = [(endpoint.host, endpoint.port)]
        #: the first map read: it names the shards (:meth:`shard`)
        self.first = None
        #: the last map read
        self.map = None
        self._read_at = None
        #: times a shard's primary changed (failovers seen)
        self.switches = 0
        #: ``fn()`` called when a shard's primary changed (after the map that says so is read)
        self.on_switch = []
        self.refresh()

    def refresh(self):
        """Read the map again (OSError with every node's reason if none answers)."""
        reasons = []
        ordered = ([] if self.map is None else self.map.addresses()) + self.known
        for address in sorted(set(ordered), key=ordered.index):
            try:
                ranges = slots.parse_slots(self._ask(address))
            except (OSError, resp.RespError, ValueError) as exc:
                reasons.append("%s:%d: %s" % (address[0], address[1], exc))
                continue
            self._set(slots.SlotMap(ranges))
            return self.map
        raise OSError("no Redis Cluster node answers CLUSTER SLOTS (%s)" % "; ".join(reasons))

    def _ask(self, address):
        endpoint = Endpoint(self.endpoint.url, timeout=self.endpoint.timeout)
        endpoint.host, endpoint.port = address
        sock = endpoint.connect()
        try:
            return exchange(sock, [resp.command("CLUSTER", "SLOTS")])[0]
        finally:
            sock.close()

    def _set(self, new):
        old, self.map, self._read_at = self.map, new, time.monotonic()
        if self.first is None:
            self.first = new
            logger.info("redis cluster: %d shard(s): %s", len(new.shards),
                        ", ".join("%s:%d" % a for a in new.addresses()))
        elif old is not None:
            switched = False
            for rep in self.first.shards:
                if old.owner(rep) != new.owner(rep) and new.owner(rep) is not None:
                    self.switches += 1
                    switched = True
                    logger.warning("redis cluster: the shard of slot %d is now served by %s:%d", rep,
                                   *new.owner(rep))
            for fn in self.on_switch if switched else ():
                try:
                    fn()
                except Exception:
                    logger.error("redis cluster: reacting to a new primary failed", exc_info=True)
        for address in new.addresses():
            if address not in self.known:
                self.known.append(address)

    def shards(self):
        """The shards' names (their first slot when the node started)."""
        return sorted(self.first.shards)

    def shard(self, slot):
        """The shard of ``slot``."""
        return self.first.shard(slot)

    def primary(self, shard):
        """(host, port) of ``shard``'s primary now, from a map read at most :attr:`fresh` s ago."""
        if self._read_at is None or time.monotonic() - self._read_at >= self.fresh:
            self.refresh()
        address = self.map.owner(shard)
        if address is None:
            raise OSError("no primary serves slot %d" % shard)
        return address


class ShardEndpoint(Endpoint):
    """A shard's primary, wherever it is now (the URL gives the scheme and credentials)."""

    def __init__(self, url, topology, shard, timeout=2.0):
        Endpoint.__init__(self, url, timeout)
        self.topology = topology
        self.shard = shard
        self.retry_max = 0.5            # follow a promotion within a fraction of a second

    def __str__(self):
        address = self.topology.map.owner(self.shard) if self.topology.map else None
        where = " at %s:%d" % address if address else ""
        return "redis cluster shard %d%s" % (self.shard, where)

    def address(self):
        return self.topology.primary(self.shard)


class _Sharded(object):
    """What a per-shard link set shares: start, stop, up/down callbacks."""

    def __init__(self, topology, make):
        self.topology = topology
        self.links = dict((shard, make(shard)) for shard in topology.shards())

    def _link(self, key):
        shard = self.topology.shard(slots.key_slot(key)) if key is not None else None
        return self.links.get(shard) or self.links[min(self.links)]

    def start(self):
        for link in self.links.values():
            link.start()
        return self

    def stop(self):
        for link in self.links.values():
            link.stop()

    def drop_unless(self, address):
        """Sentinel's: no meaning here (each shard follows its own primary)."""

    @property
    def connected(self):
        return all(link.connected for link in self.links.values())

    def _set_all(self, name, value):
        for link in self.links.values():
            setattr(link, name, value)

    on_up = property(lambda self: None, lambda self, fn: self._set_all("on_up", fn))
    on_down = property(lambda self: None, lambda self, fn: self._set_all("on_down", fn))


class ShardedPipe(_Sharded):
    """:class:`~sphincter_lib.cluster.pipe.Pipe`'s ``send``/``flush`` over one Pipe per shard: a
    command goes down its key's shard's pipe, so one room's commands stay in order."""

    def __init__(self, url, topology, on_down=None, on_up=None):
        _Sharded.__init__(self, topology, lambda shard: Pipe(ShardEndpoint(url, topology, shard), on_down, on_up))

    def send(self, data, callback=None, droppable=False):
        self._link(slots.command_key(data)).send(data, callback, droppable)

    def flush(self, timeout):
        deadline = time.monotonic() + timeout
        return all(p.flush(max(0.0, deadline - time.monotonic())) for p in self.links.values())

    dropped = property(lambda self: sum(p.dropped for p in self.links.values()))
    sent = property(lambda self: sum(p.sent for p in self.links.values()))
    errors = property(lambda self: sum(p.errors for p in self.links.values()))


class ShardedListener(_Sharded):
    """:class:`~sphincter_lib.cluster.link.Listener`'s ``subscribe``/``unsubscribe`` over one
    sharded-pub/sub listener per shard (a channel is listened to on its slot's shard)."""

    def __init__(self, url, topology, on_message, on_down=None, on_up=None):
        _Sharded.__init__(self, topology, lambda shard: Listener(
            ShardEndpoint(url, topology, shard), on_message, on_down, on_up, sharded=True))

    def subscribe(self, channel):
        return self._link(channel).subscribe(channel)

    def unsubscribe(self, channel):
        self._link(channel).unsubscribe(channel)

    @property
    def channels(self):
        out = set()
        for link in self.links.values():
            out |= link.channels
        return out

    yield_bytes = property(lambda self: min(l.yield_bytes for l in self.links.values()),
                           lambda self, n: self._set_all("yield_bytes", n))
    received = property(lambda self: sum(l.received for l in self.links.values()))
    received_bytes = property(lambda self: sum(l.received_bytes for l in self.links.values()))


class EvalScript(object):
    """A Lua script sent whole (``EVAL``): a shard promoted from a replica, or a pipeline spread
    over shards, never answers ``NOSCRIPT`` (Redis caches the compiled text by its SHA-1)."""

    def __init__(self, client, text):
        self.client = client
        self.text = text

    def __call__(self, keys=(), args=(), client=None):
        client = client if client is not None else self.client  # (a ClusterPipeline refuses eval())
        return client.execute_command("EVAL", self.text, len(keys), *(list(keys) + list(args)))


def control_client(endpoint, topology):
    """A redis-py ``RedisCluster`` (it routes by slot and follows ``MOVED``/``ASK``), started from
    every node the map names."""
    from redis.cluster import ClusterNode, RedisCluster
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in topology.known], username=endpoint.username,
        password=endpoint.password, ssl=endpoint.tls, socket_timeout=endpoint.timeout,
        socket_connect_timeout=endpoint.timeout, decode_responses=False)


def cluster_errors():
    """The redis-py exceptions that mean "a shard cannot be reached now" (a failover under way)."""
    import redis
    return tuple(getattr(redis.exceptions, name) for name in ("ClusterDownError", "TryAgainError", "ClusterError")
                 if hasattr(redis.exceptions, name))
