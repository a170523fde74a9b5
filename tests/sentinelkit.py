"""Redis behind Redis Sentinel for the failover tests (issue 22): real ``redis-server`` and
``redis-sentinel`` processes from Debian on loopback ports, no mocks.

- :class:`SentinelRedis`: a primary, ``replicas`` replicas and ``count`` sentinels monitoring it
  as ``mymaster`` (quorum 2, ``down-after-milliseconds`` and ``failover-timeout`` small);
  ``ready()`` waits until every sentinel knows the replica(s) and the other sentinels (a failover
  needs both); ``primary()`` is the :class:`rediskit.RedisServer` the sentinels name now;
  ``kill_primary()`` SIGKILLs it and returns it; ``wait_failover(old)`` waits until they name
  another one; ``sentinel_option`` is the ``--redis-sentinels`` value.
- :class:`SentinelCluster` (the ``sentinel_cluster`` fixture): rediskit's ``Cluster`` whose nodes
  find Redis through those sentinels (``--redis-sentinels ... --redis-sentinel-master mymaster``).

Skips when a program is missing, and fails under CI=true (:func:`testkit.require_program`).
"""
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from rediskit import Cluster, RedisServer, free_port, redis_command
from testkit import require_program, stop_process, unit

MASTER = "mymaster"


def sentinel_query(port, *args, timeout=1.0, password=None):
    """A sentinel's answer to one command (after ``AUTH password`` if given), parsed."""
    import socket
    from sphincter_lib.proto import resp
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall((resp.command("AUTH", password) if password else b"") + resp.command(*args))
            parser, replies, want = resp.Parser(), [], 2 if password else 1
            while len(replies) < want:
                data = s.recv(65536)
                if not data:
                    return None
                replies.extend(parser.feed(data))
            return replies[-1]
    except OSError:
        return None


class Sentinel:
    """One ``redis-sentinel`` process with its own (rewritten by it) configuration file."""

    binary = "redis-sentinel"

    def __init__(self, primary_port, down_after_ms, failover_timeout_ms, password=None):
        require_program("redis-sentinel", shutil.which(self.binary))
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="sphincter-sentinel-")
        self.port = free_port()
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir %s\n"
                    "sentinel monitor %s 127.0.0.1 %d 2\n"
                    "sentinel down-after-milliseconds %s %d\n"
                    "sentinel failover-timeout %s %d\n"
                    "sentinel parallel-syncs %s 1\n"
                    % (self.port, self.dir, MASTER, primary_port, MASTER, down_after_ms, MASTER,
                       failover_timeout_ms, MASTER)
                    + ("requirepass %s\nsentinel sentinel-pass %s\n" % (password, password) if password else ""))
        self.logfile = open(os.path.join(self.dir, "sentinel.log"), "w+")
        self.proc = subprocess.Popen([self.binary, self.conf], stdout=self.logfile,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def query(self, *args):
        return sentinel_query(self.port, *args, password=self.password)

    def log(self):
        self.logfile.seek(0)
        return self.logfile.read()

    def close(self):
        stop_process(self.proc, timeout=unit(5))
        self.logfile.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelRedis:
    """A primary, its replicas and the sentinels watching them (see the module docstring)."""

    url = "redis://127.0.0.1:1/0"                 # what nodes get as --redis-url: its host is not used

    def __init__(self, replicas=1, count=3, down_after_ms=600, failover_timeout_ms=3000, sentinel_password=None):
        self.sentinel_password = sentinel_password
        self.dir = tempfile.mkdtemp(prefix="sphincter-redis-")   # where a replica writes its RDB
        self.servers = [RedisServer(extra=["--dir", self.dir])]
        primary = self.servers[0]
        for _ in range(replicas):
            self.servers.append(RedisServer(extra=["--dir", self.dir, "--replicaof", "127.0.0.1", str(primary.port)]))
        self.sentinels = []
        try:
            for _ in range(count):
                self.sentinels.append(Sentinel(primary.port, down_after_ms, failover_timeout_ms,
                                               sentinel_password))
        except Exception:
            self.close()
            raise

    @property
    def sentinel_option(self):
        return ",".join("127.0.0.1:%d" % s.port for s in self.sentinels)

    def named_port(self, sentinel=None):
        """The primary's port as a sentinel names it (None if it does not answer)."""
        reply = (sentinel or self.sentinels[0]).query("SENTINEL", "get-master-addr-by-name", MASTER)
        return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None

    def primary(self):
        port = self.named_port()
        return next(s for s in self.servers if s.port == port)

    def ready(self, timeout=20.0):
        """Every sentinel sees the replicas and the other sentinels, and the replicas are in sync."""
        deadline = time.monotonic() + unit(timeout)
        want_replicas, want_sentinels = len(self.servers) - 1, len(self.sentinels) - 1
        while True:
            ok = True
            for s in self.sentinels:
                reps = s.query("SENTINEL", "replicas", MASTER)
                sens = s.query("SENTINEL", "sentinels", MASTER)
                if not isinstance(reps, list) or not isinstance(sens, list) or len(sens) < want_sentinels:
                    ok = False
                    break
                up = [r for r in reps if b"s_down" not in dict(zip(r[::2], r[1::2])).get(b"flags", b"")]
                if len(up) < want_replicas:
                    ok = False
                    break
            if ok and all(redis_command(r.port, "PING") == b"+PONG" for r in self.servers):
                info = redis_command(self.primary().port, "ROLE")
                if info is not None:
                    return
            if time.monotonic() > deadline:
                raise AssertionError("sentinels not ready within %ss: %s" % (timeout, self.sentinels[0].log()[-800:]))
            time.sleep(0.1)

    def kill_primary(self):
        old = self.primary()
        old.proc.kill()
        old.proc.wait()
        return old

    def wait_failover(self, old, timeout=20.0):
        """Until every sentinel names a primary other than ``old`` (a RedisServer); the new one."""
        deadline = time.monotonic() + unit(timeout)
        while True:
            ports = {self.named_port(s) for s in self.sentinels}
            if len(ports) == 1 and None not in ports and old.port not in ports:
                return self.primary()
            if time.monotonic() > deadline:
                raise AssertionError("no failover within %ss: %s" % (timeout, self.sentinels[0].log()[-1500:]))
            time.sleep(0.05)

    def close(self):
        for s in self.sentinels:
            s.close()
        for r in self.servers:
            r.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelCluster(Cluster):
    """rediskit.Cluster on a :class:`SentinelRedis`: ``cluster.redis`` is the SentinelRedis,
    every node gets the sentinel options (its --redis-url's host is not used)."""

    def __init__(self, **options):
        self.redis = SentinelRedis(**options)
        self.other_redis = []
        self.started = []
        self.closers = []
        self.redis.ready()

    @property
    def options(self):
        return ("--redis-sentinels", self.redis.sentinel_option, "--redis-sentinel-master", MASTER)

    def node(self, *extra, name=None):
        return Cluster.node(self, *(self.options + extra), name=name)

    def nodes(self, count, *extra):
        return Cluster.nodes(self, count, *(self.options + extra))


@pytest.fixture
def sentinel_cluster():
    c = SentinelCluster()
    try:
        yield c
    finally:
        c.close()
