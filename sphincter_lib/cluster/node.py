"""Redis mode: this process among the nodes of a relay, and its link to Redis.

A :class:`NodeLink` is what every part of the Redis model shares: the node's id, the key
names (``proto.redis_keys``), the connections ``cluster.link`` makes (a redis-py client for
calls that need an answer, the ordered send :class:`~sphincter_lib.cluster.pipe.Pipe`, the
pub/sub :class:`~sphincter_lib.cluster.link.Listener`), the Lua scripts those calls run, and
whether Redis is reachable: the heartbeat (``cluster.liveness``) says when it is, the first
call that fails says when it is not.
"""

import hashlib
import logging
import os
import secrets
import socket

from ..errors import RelayUnavailable
from ..proto import redis_keys
from .link import Endpoint, Listener, control_client, redis_errors
from .pipe import Pipe
from . import shards
from .sentinel import Discovery, SwitchWatcher
from .sentinel import control_client as sentinel_client

logger = logging.getLogger("sphincter.cluster.node")

__all__ = ["NodeLink", "default_node_name", "digest", "text"]

#: the scripts called with an answer (through the client); the others go down the pipe
SCRIPTS = ("OPEN", "CLAIM", "RESUME", "CHECK", "REFRESH", "ADMIT", "ENSURE_NAMED", "NODE_BEAT")


def default_node_name():
    return "%s-%d" % (socket.gethostname().split(".")[0] or "node", os.getpid())


def digest(key):
    """What Redis keeps of a secret (a resume key): its SHA-256, in hex."""
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def text(value):
    """A Redis answer (bytes, or None) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ("" if value is None else str(value))


class NodeLink:
    """This node's id and keys, its connections to Redis, and whether Redis is reachable.

    ``on_message(channel, data)`` gets every pub/sub message; ``stats.redis_reconnects``
    counts the outages."""

    def __init__(self, redis_url, stats, on_message, node="", prefix="sph", lease=5.0, sentinels=(),
                 sentinel_master="", sentinel_password=""):
        self.node = node or default_node_name()
        #: this process among the nodes in Redis: its name and a nonce, so that a node restarted
        #: under the same name is not taken for its previous run (its leases, subscriber counts)
        self.node_id = "%s/%s" % (self.node, secrets.token_hex(3))
        discovery = Discovery(sentinels, sentinel_master, sentinel_password or None) if sentinels else None
        self.endpoint = Endpoint(redis_url or "redis://", sentinels=discovery)
        #: Redis Cluster's slot map (``cluster.shards``), or None (one Redis, or Sentinel)
        self.topology = self._cluster() if discovery is None else None
        cluster = self.topology is not None
        self.keys = redis_keys.Keys(prefix, cluster=cluster)
        self.lease = lease
        self.lease_ms = int(lease * 1000)
        self.stats = stats
        #: ``fn()`` called when Redis' primary (Sentinel) or a shard's (Cluster) changed
        self.on_switch = []
        #: the exceptions that mean "Redis cannot be reached now"
        self.errors = redis_errors() + (shards.cluster_errors() if cluster else ())
        #: the last heartbeat reached Redis (set by the heartbeat, cleared by a failed call)
        self.reachable = False
        #: Redis Cluster: the nodes whose heartbeat ran out (``P:{nodes}``), for ``ADMIT``
        self.dead_nodes = []
        self.watcher = None
        # the pipe reconnects and resends by itself: only the listener (always reading, so it
        # notices at once) and the control calls say whether Redis is reachable
        if cluster:
            self.redis = shards.control_client(self.endpoint, self.topology)
            self.pipe = shards.ShardedPipe(self.endpoint.url, self.topology)
            self.pubsub = shards.ShardedListener(self.endpoint.url, self.topology, on_message,
                                                 on_down=self._link_down)
            self.scripts = {name: shards.EvalScript(self.redis, redis_keys.script(name, True)) for name in SCRIPTS}
            self.topology.on_switch.append(self.reread_slots)
            self.topology.on_switch.append(self._tell_switched)
            return
        self.redis = (sentinel_client if discovery is not None else control_client)(self.endpoint)
        self.pipe = Pipe(self.endpoint)
        self.pubsub = Listener(self.endpoint, on_message, on_down=self._link_down)
        #: behind sentinels: the ``+switch-master`` watcher (started and stopped with the links)
        self.watcher = None
        if discovery is not None:
            discovery.on_switch.append(self._primary_switched)
            self.watcher = SwitchWatcher(discovery)
        self.scripts = {name: self.redis.register_script(getattr(redis_keys, name)) for name in SCRIPTS}

    def _cluster(self):
        """Redis Cluster's slot map when ``--redis-url`` names a Cluster node, else None. Redis
        unreachable at start: one Redis is assumed (a Cluster's nodes must be reachable)."""
        try:
            if not shards.detect(self.endpoint):
                return None
            return shards.Topology(self.endpoint)
        except OSError as exc:
            logger.warning("redis at %s: cannot tell whether it is a Redis Cluster (%s): taking it for "
                           "one Redis", self.endpoint, exc)
            return None

    def _tell_switched(self):
        for fn in self.on_switch:
            fn()

    def reread_slots(self):
        """Redis Cluster: redis-py's client reads the slot map again (a pipeline that met a dead
        primary does not always do so by itself)."""
        try:
            self.redis.nodes_manager.initialize()
        except Exception as exc:                  # noqa: BLE001  no node answers: the next call says so
            logger.debug("redis cluster: reading the slot map: %s", exc)

    def script_text(self, name):
        """Script ``name``'s text for ``EVAL`` down the pipe (a Cluster's uses ``SPUBLISH``)."""
        return redis_keys.script(name, self.topology is not None)

    @property
    def up(self):
        """Redis is reachable: the heartbeat got through and the listener is connected."""
        return self.reachable and self.pubsub.connected

    def failed(self, exc):
        """A call could not reach Redis: new sources and subscribers are refused until the
        heartbeat gets through again."""
        if self.reachable:
            self.reachable = False
            self.stats.redis_reconnects += 1
            logger.warning("redis unreachable at %s: %s; new sources and subscribers are refused until "
                           "it is back", self.endpoint, exc)

    def check_primary(self):
        """Behind sentinels, ask them where the primary is (each heartbeat): after a failover that
        broke no connection (``SENTINEL FAILOVER``: the old primary lives on until the sentinels
        demote it), every connection moves to the new one within a heartbeat."""
        discovery = self.endpoint.sentinels
        if discovery is not None:
            try:
                discovery.discover()
            except OSError as exc:
                logger.debug("redis: asking the sentinels: %s", exc)

    def _primary_switched(self, address):
        """The sentinels name another primary: every connection leaves the old one."""
        for link in (self.pipe, self.pubsub):
            link.drop_unless(address)
        self._tell_switched()
        self.redis.connection_pool.disconnect()

    def _link_down(self, link):
        self.failed("%s connection lost" % link.name)

    def call(self, name, room, *args):
        """Script ``name`` on ``room``'s keys, with an answer; RelayUnavailable when Redis cannot
        be reached."""
        if not self.reachable:
            raise RelayUnavailable()
        return self.ask(self.scripts[name], keys=room.redis_keys, args=list(args))

    def ask(self, fn, *args, **kwargs):
        """``fn(...)`` against Redis, tried twice: a pooled connection that Redis closed (a
        restart) fails once, then the pool connects afresh. RelayUnavailable after that."""
        for attempt in (1, 2):
            try:
                return fn(*args, **kwargs)
            except self.errors as exc:
                if attempt == 2:
                    self.failed(exc)
                    raise RelayUnavailable()
                if self.topology is not None:
                    self.reread_slots()       # a shard failed over: ask the map afresh
