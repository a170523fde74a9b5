"""A real Redis Cluster for the Cluster tests (issue 22): six ``redis-server`` processes from
Debian with ``--cluster-enabled yes`` on loopback ports, joined by ``redis-cli --cluster create``
(3 primaries, 3 replicas), no mocks.

- :class:`RedisClusterServers`: the six servers; ``ready()`` waits until every node says
  ``cluster_state:ok`` and every primary has its replica; ``primary_of(slot)`` is the
  :class:`rediskit.RedisServer` serving a slot now; ``kill_primary_of(slot)`` SIGKILLs it;
  ``wait_failover(slot, old)`` waits until a replica serves that slot (``cluster-node-timeout``
  is small: about 2 s); ``url`` is one node's (what ``--redis-url`` gets).
- :class:`RedisClusterNodes` (the ``redis_cluster`` fixture): rediskit's ``Cluster`` on them.

Skips when a program is missing, and fails under CI=true (:func:`testkit.require_program`).
"""
import shutil
import subprocess
import tempfile
import time

import pytest

from rediskit import Cluster, RedisServer, free_port
from testkit import require_program, unit

#: cluster-node-timeout (ms): how long a primary may be unreachable before its replica takes over
NODE_TIMEOUT_MS = 1000


def slot_of(key):
    from sphincter_lib.proto.slots import key_slot
    return key_slot(key)


def _info(port, section):
    reply = _raw(port, "CLUSTER", section)
    return reply if isinstance(reply, bytes) else b""


class RedisClusterServers:
    """Three primaries and three replicas in one Redis Cluster (see the module docstring)."""

    def __init__(self, primaries=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS):
        require_program("redis-cli", shutil.which("redis-cli"))
        self.dir = tempfile.mkdtemp(prefix="sphincter-rcluster-")
        self.servers = []
        try:
            for i in range(primaries * (1 + replicas)):
                self.servers.append(RedisServer(extra=[
                    "--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file", "%s/nodes-%d.conf" % (self.dir, i),
                    "--cluster-node-timeout", str(node_timeout_ms), "--cluster-replica-validity-factor", "0",
                    "--dir", self.dir]))
            out = subprocess.run(
                ["redis-cli", "--cluster", "create"] + ["127.0.0.1:%d" % s.port for s in self.servers]
                + ["--cluster-replicas", str(replicas), "--cluster-yes"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=unit(30))
            if out.returncode != 0:
                raise AssertionError("redis-cli --cluster create failed: %s" % out.stdout.decode()[-1500:])
            self.ready()
        except Exception:
            self.close()
            raise

    @property
    def url(self):
        return self.servers[0].url

    def running(self):
        return [s for s in self.servers if s.running()]

    def slots(self, via=None):
        """CLUSTER SLOTS as [(first, last, primary port, [replica ports])] (None if nobody answers)."""
        for server in ([via] if via else []) + self.running():
            reply = _raw(server.port, "CLUSTER", "SLOTS")
            if isinstance(reply, list) and reply:
                return sorted((int(r[0]), int(r[1]), int(r[2][1]), [int(x[1]) for x in r[3:]]) for r in reply)
        return None

    def primary_of(self, slot):
        for first, last, port, _ in self.slots() or ():
            if first <= slot <= last:
                return next(s for s in self.servers if s.port == port)
        return None

    def ready(self, timeout=30.0):
        """Every running node is ``cluster_state:ok`` and agrees on the map; every primary has a
        replica that is in sync."""
        deadline = time.monotonic() + unit(timeout)
        while True:
            maps = set()
            ok = True
            for s in self.running():
                if b"cluster_state:ok" not in _info(s.port, "INFO"):
                    ok = False
                    break
                maps.add(repr([(a, b, p) for a, b, p, _ in self.slots(s) or ()]))
            if ok and len(maps) == 1:
                slots = self.slots()
                if slots and all(reps for _, _, _, reps in slots):
                    return
            if time.monotonic() > deadline:
                raise AssertionError("redis cluster not ready within %ss" % timeout)
            time.sleep(0.1)

    def kill_primary_of(self, slot):
        old = self.primary_of(slot)
        old.proc.kill()
        old.proc.wait()
        return old

    def wait_failover(self, slot, old, timeout=20.0):
        """Until every running node says a server other than ``old`` serves ``slot``; the new one."""
        deadline = time.monotonic() + unit(timeout)
        while True:
            owners = set()
            for s in self.running():
                for first, last, port, _ in self.slots(s) or ():
                    if first <= slot <= last:
                        owners.add(port)
            states_ok = all(b"cluster_state:ok" in _info(s.port, "INFO") for s in self.running())
            if len(owners) == 1 and old.port not in owners and states_ok:
                return next(s for s in self.servers if s.port in owners)
            if time.monotonic() > deadline:
                raise AssertionError("no failover of slot %d within %ss (owners %r)" % (slot, timeout, owners))
            time.sleep(0.05)

    def restart(self, server, timeout=20.0):
        """Start a killed server again on its ports (it rejoins as a replica of its successor:
        its ``nodes.conf`` is kept)."""
        ok, last = server._start()
        if not ok:
            raise AssertionError("redis-server did not restart: %s" % last)

    def close(self):
        for s in self.servers:
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _raw(port, *args):
    """One command's parsed answer (None when the server does not answer)."""
    import socket
    from sphincter_lib.proto import resp
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(resp.command(*args))
            parser = resp.Parser()
            while True:
                data = s.recv(65536)
                if not data:
                    return None
                replies = parser.feed(data)
                if replies:
                    return replies[0]
    except OSError:
        return None


class RedisClusterNodes(Cluster):
    """rediskit.Cluster on a :class:`RedisClusterServers` (``cluster.redis``), shared by the tests
    of a module: each test's nodes get a prefix of their own (``--redis-prefix``), and each node
    another server's URL as ``--redis-url`` (any node of the Cluster will do)."""

    def __init__(self, servers, prefix):
        self.redis = servers
        self.prefix = prefix
        self.other_redis = []
        self.started = []
        self.closers = []

    def _url(self, i):
        running = self.redis.running()
        return running[i % len(running)].url

    def node(self, *extra, name=None):
        from rediskit import Node
        i = len(self.started)
        node = Node(self._url(i), name or "n%d" % (i + 1), "--redis-prefix", self.prefix, *extra)
        self.started.append(node)
        return node

    def nodes(self, count, *extra):
        import gevent
        from rediskit import Node
        first = len(self.started)
        jobs = [gevent.spawn(Node, self._url(first + i), "n%d" % (first + i + 1), "--redis-prefix", self.prefix, *extra)
                for i in range(count)]
        gevent.joinall(jobs)
        for job in jobs:
            if job.successful():
                self.started.append(job.value)
        for job in jobs:
            if not job.successful():
                raise job.exception
        return [job.value for job in jobs]

    def close(self):
        servers, self.redis = self.redis, _Kept()
        try:
            Cluster.close(self)
        finally:
            self.redis = servers


class _Kept:
    def close(self):
        """The servers outlive one test (the session's fixture closes them: one Cluster for every test module that uses it, ~10 s to create)."""


@pytest.fixture(scope="session")
def redis_cluster_servers():
    servers = RedisClusterServers()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def redis_cluster(redis_cluster_servers, request):
    servers = redis_cluster_servers
    for server in servers.servers:                # one a previous test killed comes back
        if not server.running():
            servers.restart(server)
    servers.ready()
    c = RedisClusterNodes(servers, "t%d" % (abs(hash(request.node.name)) % 100000))
    try:
        yield c
    finally:
        c.close()
