"""Chaos soak of a relay of several nodes on Redis with Sentinel, or on a Redis Cluster (issue 22).

    python bench/soak_cluster.py                       # make soak-cluster: 10 minutes
    python bench/soak_cluster.py --seconds 60 --json   # the CI version (tests/relay/test_soak_cluster.py)
    python bench/soak_cluster.py --redis cluster       # make soak-cluster REDIS=cluster: a Redis
                                                       # Cluster, 3 primaries + 3 replicas

Everything real, on loopback: ``redis-server`` (a primary and a replica), three
``redis-sentinel``, ``--nodes`` Sphincter nodes given ``--redis-sentinels``, ``--rooms`` rooms each
fed by its own ``sphincter connect`` process (resume on: ``--room-grace``) from a local TCP
service here that writes numbered lines ``R<room> <seq>``, and ``--subscribers`` WebSocket
subscribers spread over the nodes and rooms, each read by a greenlet (a closed or dropped one
subscribes again). Every Redis server sits behind a TCP proxy here (the servers announce the
proxies' ports, so the sentinels and the nodes reach them only through it), which can cut one
node's connections, found by their owner process in /proc.

A random fault every ``--fault-min``..``--fault-max`` s, one of:
  kill      SIGKILL a node and start it again (same ports)
  stop      SIGSTOP a node for its lease + 1.5 s, then SIGCONT
  failover  SIGKILL the Redis primary; the sentinels promote the replica; the old one is started
            again (empty: the sentinels make it the new replica). With ``--redis cluster``: SIGKILL
            one shard's primary (at random); the Cluster promotes its replica; the old one is
            started again (it rejoins as the new replica)
  cut       cut one node's connections to Redis at the proxies for 2-5 s

The checker keeps, per subscriber connection, the last sequence number of its room and every
jump; at the end a jump over numbers some other subscriber of that room received is a **silent
gap** (lines no subscriber got were lost before the relay published them: a source's connection
that died with a node; counted apart). A number at or below the last one is a **duplicate**. A
4408 outside every fault (from its start to 5 s after it recovered) is **needless**. Recovery
of a fault: from its start until every node answers /healthz ok and every room delivered a line
sent after the fault ended (``p50_s``/``max_s``: from its start, the fault's own length included,
4.5 s for ``stop``, 2-5 s for ``cut``; ``after_end_*``: from its end). At the end every room must
be alive (a line delivered in the last 5 s). Exit 0 when silent gaps = duplicates = 0 and every room is alive; ``--json`` prints the
report as JSON (else a table).
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
from hostile_client import OP_CLOSE, ConnectionDropped, ws_connect  # noqa: E402
from rediskit import RedisServer, free_port  # noqa: E402
from sentinelkit import MASTER, Sentinel, sentinel_query  # noqa: E402

RESP_TIMEOUT = 1.0

KINDS = ("kill", "stop", "failover", "cut")


# ---- a TCP proxy that can cut one process's connections ---------------------------------------

def _socket_inode(port):
    """The inode of the loopback TCP socket bound to local ``port`` (None if none)."""
    want = ":%04X" % port
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want):
                        return parts[9]
        except OSError:
            continue
    return None


def _owned_by(port, pid):
    inode = _socket_inode(port)
    if inode is None:
        return False
    target = "socket:[%s]" % inode
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == target:
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


class Proxy:
    """127.0.0.1:``port`` → 127.0.0.1:``target``; :meth:`cut` drops and refuses one process's
    connections until :meth:`heal`."""

    def __init__(self):
        self.target = None
        self.blocked = set()
        self.conns = set()
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, address):
        if any(_owned_by(address[1], pid) for pid in list(self.blocked)):
            sock.close()
            return
        try:
            up = socket.create_connection(("127.0.0.1", self.target), timeout=2)
        except OSError:
            sock.close()
            return
        entry = (sock, up, address[1])
        self.conns.add(entry)
        back = gevent.spawn(self._pipe, up, sock)
        try:
            self._pipe(sock, up)
        finally:
            back.kill()
            self.conns.discard(entry)
            for s in (sock, up):
                s.close()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, pid):
        self.blocked.add(pid)
        for sock, up, port in list(self.conns):
            if _owned_by(port, pid):
                for s in (sock, up):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def heal(self, pid):
        self.blocked.discard(pid)


# ---- Redis with Sentinel, behind the proxies ------------------------------------------------

class Redis:
    """A primary and a replica (each behind a Proxy, announcing its port) and three sentinels."""

    def __init__(self, down_after_ms=1000, failover_timeout_ms=5000):
        self.proxies = [Proxy(), Proxy()]
        self.servers = []
        self.dir = tempfile.mkdtemp(prefix="sphincter-soak-redis-")   # replicas write their RDB here
        for i, proxy in enumerate(self.proxies):
            extra = ["--dir", self.dir, "--replica-announce-ip", "127.0.0.1", "--replica-announce-port",
                     str(proxy.port)]
            if i:
                extra += ["--replicaof", "127.0.0.1", str(self.proxies[0].port)]
            server = RedisServer(extra=extra)
            proxy.target = server.port
            self.servers.append(server)
        self.sentinels = [Sentinel(self.proxies[0].port, down_after_ms, failover_timeout_ms) for _ in range(3)]

    @property
    def sentinel_option(self):
        return ",".join("127.0.0.1:%d" % s.port for s in self.sentinels)

    def named(self):
        """The proxy port the sentinels name the primary at (None: they disagree or do not answer)."""
        ports = set()
        for s in self.sentinels:
            reply = sentinel_query(s.port, "SENTINEL", "get-master-addr-by-name", MASTER)
            ports.add(int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None)
        return ports.pop() if len(ports) == 1 else None

    def ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = self.named() is not None
            for s in self.sentinels:
                reps = sentinel_query(s.port, "SENTINEL", "replicas", MASTER)
                sens = sentinel_query(s.port, "SENTINEL", "sentinels", MASTER)
                if not isinstance(reps, list) or not isinstance(sens, list) or len(sens) < 2:
                    ok = False
                    break
                if not any(b"s_down" not in dict(zip(r[::2], r[1::2])).get(b"flags", b"") for r in reps):
                    ok = False
                    break
            if ok:
                return True
            time.sleep(0.2)
        return False

    def primary_index(self):
        port = self.named()
        return next((i for i, p in enumerate(self.proxies) if p.port == port), None)

    def node_options(self):
        return ["--redis-url", "redis://127.0.0.1:1/0", "--redis-sentinels", self.sentinel_option,
                "--redis-sentinel-master", MASTER]

    def fail_primary(self, fault, rng):
        """SIGKILL the primary, wait for the sentinels to name another, start it again."""
        i = self.primary_index()
        old = self.proxies[i].port if i is not None else None
        fault["target"] = "redis primary :%s" % old
        if i is not None:
            server = self.servers[i]
            server.proc.kill()
            server.proc.wait()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.named() in (old, None):
                gevent.sleep(0.1)
            fault["promoted_after"] = round(time.monotonic() - fault["start"], 2)
            server.restart()                  # empty: the sentinels make it a replica

    def close(self):
        for s in self.sentinels:
            s.close()
        for r in self.servers:
            r.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _ask(port, *args):
    """One command to 127.0.0.1:``port``, its parsed answer (None: no answer)."""
    from sphincter_lib.proto import resp
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=RESP_TIMEOUT) as s:
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


class ClusterRedis:
    """A Redis Cluster of ``primaries`` primaries and as many replicas, each server behind a Proxy
    (it announces the proxy's port: the nodes reach it only through it; the Cluster's bus is
    direct), joined by ``redis-cli --cluster create``."""

    def __init__(self, primaries=3, node_timeout_ms=1000):
        self.dir = tempfile.mkdtemp(prefix="sphincter-soak-rcluster-")
        self.proxies = [Proxy() for _ in range(2 * primaries)]
        self.servers = []
        for i, proxy in enumerate(self.proxies):
            server = RedisServer(extra=[
                "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                "--cluster-config-file", "%s/nodes-%d.conf" % (self.dir, i),
                "--cluster-node-timeout", str(node_timeout_ms), "--cluster-replica-validity-factor", "0",
                "--cluster-announce-ip", "127.0.0.1", "--cluster-announce-port", str(proxy.port),
                "--dir", self.dir])
            proxy.target = server.port
            self.servers.append(server)
        out = subprocess.run(["redis-cli", "--cluster", "create"] + ["127.0.0.1:%d" % p.port for p in self.proxies]
                             + ["--cluster-replicas", "1", "--cluster-yes"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if out.returncode != 0:
            raise SystemExit("soak-cluster: redis-cli --cluster create failed: %s" % out.stdout.decode()[-800:])

    def slots(self):
        """[(first, last, primary proxy port)] from the first server that answers."""
        for server in self.servers:
            if not server.running():
                continue
            reply = _ask(server.port, "CLUSTER", "SLOTS")
            if isinstance(reply, list) and reply:
                return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in reply)
        return []

    def ready(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [_ask(s.port, "CLUSTER", "INFO") for s in self.servers if s.running()]
            if states and all(isinstance(x, bytes) and b"cluster_state:ok" in x for x in states):
                replies = [_ask(s.port, "CLUSTER", "SLOTS") for s in self.servers]
                if all(isinstance(r, list) and all(len(e) >= 4 for e in r) for r in replies):
                    return True
            time.sleep(0.2)
        return False

    def node_options(self):
        return ["--redis-url", "redis://127.0.0.1:%d/0" % self.proxies[0].port]

    def fail_primary(self, fault, rng):
        """SIGKILL one shard's primary, wait until the Cluster names another, start it again."""
        first, _, old = rng.choice(self.slots())
        fault["target"] = "shard of slot %d, primary :%d" % (first, old)
        i = next(i for i, p in enumerate(self.proxies) if p.port == old)
        server = self.servers[i]
        server.proc.kill()
        server.proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            owner = next((port for a, b, port in self.slots() if a <= first <= b), None)
            if owner not in (old, None):
                break
            gevent.sleep(0.1)
        fault["promoted_after"] = round(time.monotonic() - fault["start"], 2)
        server.restart()                      # it rejoins as the new primary's replica

    def close(self):
        for r in self.servers:
            r.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- nodes and sources ------------------------------------------------------------------------

class Node:
    def __init__(self, name, redis, workdir, lease, grace, python):
        self.name, self.redis, self.lease = name, redis, lease
        self.tcp, self.ws = free_port(), free_port()
        self.argv = [python, os.path.join(ROOT, "sphincter.py"), "--tcp-host", "127.0.0.1",
                     "--tcp-port", str(self.tcp), "--ws-host", "127.0.0.1", "--ws-port", str(self.ws),
                     ] + redis.node_options() + ["--node-name", name, "--redis-lease", str(lease),
                     "--room-grace", str(grace), "--max-sources-per-ip", "0", "--shutdown-timeout", "2",
                     "--close-timeout", "1"]
        self.log = open(os.path.join(workdir, name + ".log"), "ab")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def healthy(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.ws, timeout=2) as r:
                return r.status == 200 and json.loads(r.read()).get("redis") == "ok"
        except Exception:                          # noqa: BLE001  down, 503, refused
            return False

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Feed:
    """The local service of one room's ``sphincter connect``: numbered lines at ``rate``/s; the
    sequence goes on across its reconnections."""

    def __init__(self, index, rate, pad):
        self.index, self.rate, self.pad = index, rate, pad
        self.seq = 0
        self.sent_at = {}                         # seq -> time, every 50th (recovery checks)
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, address):
        try:
            while True:
                self.seq += 1
                sock.sendall(b"R%d %d %s\n" % (self.index, self.seq, self.pad))
                gevent.sleep(1.0 / self.rate)
        except OSError:
            self.seq -= 1                         # not written: sent again on the next connection
        finally:
            sock.close()


class Source:
    """``sphincter connect --relay NODE --from tcp:FEED``; ``code`` from its ``ROOM`` line."""

    def __init__(self, feed, node, workdir, python):
        self.feed, self.node = feed, node
        self.code = None
        self.log_path = os.path.join(workdir, "connect-%d.log" % feed.index)
        self.proc = subprocess.Popen(
            [python, os.path.join(ROOT, "sphincter.py"), "connect", "--relay", "127.0.0.1:%d" % node.tcp,
             "--from", "tcp:127.0.0.1:%d" % feed.port, "--retry-min", "0.2", "--retry-max", "1",
             "--connect-timeout", "3", "--stats-interval", "0"],
            stdout=subprocess.PIPE, stderr=open(self.log_path, "ab"), stdin=subprocess.DEVNULL)
        gevent.spawn(self._read)

    def _read(self):
        for line in iter(self.proc.stdout.readline, b""):
            parts = line.split()
            if parts[:1] == [b"ROOM"] and len(parts) > 1:
                self.code = parts[1].decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---- the checker ------------------------------------------------------------------------------

class Report:
    def __init__(self, rooms):
        self.received = [set() for _ in range(rooms)]   # every seq some subscriber got, per room
        self.last_seen = [0.0] * rooms                  # when a line of the room last arrived
        self.jumps = []                                 # (room, after, to)
        self.checked = 0
        self.duplicates = 0
        self.closes = {}                                # code -> count
        self.close_times = []                           # (time, code)
        self.drops = 0
        self.sessions = 0


class Subscriber:
    def __init__(self, room, node, source, report, stop):
        self.room, self.node, self.source, self.report, self.stop = room, node, source, report, stop
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        report = self.report
        while not self.stop.is_set():
            code = self.source.code
            if code is None:
                gevent.sleep(0.5)
                continue
            try:
                ws = ws_connect("ws://127.0.0.1:%d/ws?room=%s" % (self.node.ws, code), timeout=5)
            except Exception:                     # noqa: BLE001  node down, 1013, 429
                gevent.sleep(0.5)
                continue
            report.sessions += 1
            last = None
            try:
                while not self.stop.is_set():
                    op, data = ws.recv_message(timeout=30)
                    if op == OP_CLOSE:
                        close = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                        report.closes[close] = report.closes.get(close, 0) + 1
                        report.close_times.append((time.monotonic(), close))
                        break
                    room, seq = data.split(b" ", 2)[:2]
                    seq = int(seq)
                    report.checked += 1
                    report.received[self.room].add(seq)
                    report.last_seen[self.room] = time.monotonic()
                    if last is not None:
                        if seq <= last:
                            report.duplicates += 1
                        elif seq != last + 1:
                            report.jumps.append((self.room, last, seq))
                    last = seq if last is None or seq > last else last
            except (ConnectionDropped, OSError, ValueError):
                report.drops += 1
            finally:
                ws.close()
            gevent.sleep(0.3)


# ---- faults -----------------------------------------------------------------------------------

class Chaos:
    def __init__(self, redis, nodes, sources, report, rng, lease):
        self.redis, self.nodes, self.sources, self.report = redis, nodes, sources, report
        self.rng, self.lease = rng, lease
        self.faults = []                          # dicts: kind, target, start, end, recovered

    def inject(self, kind):
        fault = {"kind": kind, "start": time.monotonic()}
        if kind == "kill":
            node = self.rng.choice(self.nodes)
            fault["target"] = node.name
            node.proc.kill()
            node.proc.wait()
            node.start()
        elif kind == "stop":
            node = self.rng.choice(self.nodes)
            fault["target"] = node.name
            node.proc.send_signal(signal.SIGSTOP)
            gevent.sleep(self.lease + 1.5)
            node.proc.send_signal(signal.SIGCONT)
        elif kind == "failover":
            self.redis.fail_primary(fault, self.rng)
        elif kind == "cut":
            node = self.rng.choice(self.nodes)
            fault["target"] = node.name
            pid = node.proc.pid
            for proxy in self.redis.proxies:
                proxy.cut(pid)
            gevent.sleep(self.rng.uniform(2, 5))
            for proxy in self.redis.proxies:
                proxy.heal(pid)
        fault["end"] = time.monotonic()
        self.faults.append(fault)
        self._recovery(fault)
        return fault

    def _recovery(self, fault, timeout=60):
        deadline = fault["end"] + timeout
        while time.monotonic() < deadline:
            if all(n.healthy() for n in self.nodes) and all(t > fault["end"] for t in self.report.last_seen):
                now = time.monotonic()
                fault["recovered"] = round(now - fault["start"], 2)
                fault["after_end"] = round(now - fault["end"], 2)
                return
            gevent.sleep(0.1)
        fault["recovered"] = None


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else None


def summarize(report, chaos, rooms, t_end):
    silent, source_lost = 0, 0
    for room, after, to in report.jumps:
        missing = range(after + 1, to)
        if any(seq in report.received[room] for seq in missing):
            silent += 1
        else:
            source_lost += len(missing)
    windows = [(f["start"], f["start"] + (f["recovered"] or 60) + 5) for f in chaos.faults]
    needless = sum(1 for t, code in report.close_times
                   if code == 4408 and not any(a <= t <= b for a, b in windows))
    by_kind = {}
    for f in chaos.faults:
        by_kind.setdefault(f["kind"], []).append(f)
    recovery = {}
    for kind, faults in sorted(by_kind.items()):
        times = [f["recovered"] for f in faults if f["recovered"] is not None]
        after = [f["after_end"] for f in faults if f["recovered"] is not None]
        recovery[kind] = {"count": len(faults), "recovered": len(times),
                          "p50_s": percentile(times, 0.5), "max_s": max(times) if times else None,
                          "after_end_p50_s": percentile(after, 0.5), "after_end_max_s": max(after) if after else None}
    alive = sum(1 for t in report.last_seen if t_end - t < 5)
    return {
        "faults": {k: len(v) for k, v in sorted(by_kind.items())},
        "messages_checked": report.checked,
        "silent_gaps": silent,
        "duplicates": report.duplicates,
        "lost_before_publish": source_lost,
        "closes": {str(k): v for k, v in sorted(report.closes.items(), key=lambda kv: str(kv[0]))},
        "needless_4408": needless,
        "dropped_connections": report.drops,
        "subscriber_sessions": report.sessions,
        "recovery": recovery,
        "rooms_alive": alive,
        "rooms": rooms,
        "fault_log": [{k: (round(v - chaos.faults[0]["start"], 2) if k in ("start", "end") else v)
                       for k, v in f.items()} for f in chaos.faults],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--subscribers", type=int, default=500)
    p.add_argument("--rate", type=float, default=10.0, help="lines per second per room")
    p.add_argument("--fault-min", type=float, default=20.0)
    p.add_argument("--fault-max", type=float, default=40.0)
    p.add_argument("--lease", type=float, default=3.0)
    p.add_argument("--grace", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--redis", choices=("sentinel", "cluster"), default="sentinel",
                   help="Redis with Sentinel (a primary, a replica, 3 sentinels) or a Redis Cluster "
                        "(3 primaries, 3 replicas)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep-logs", action="store_true")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    python = sys.executable
    workdir = tempfile.mkdtemp(prefix="sphincter-soak-cluster-")
    redis = ClusterRedis() if a.redis == "cluster" else Redis()
    nodes, sources, feeds = [], [], []
    stop = gevent.event.Event()
    try:
        if not redis.ready():
            raise SystemExit("soak-cluster: Redis not ready (%s)" % a.redis)
        nodes = [Node("n%d" % (i + 1), redis, workdir, a.lease, a.grace, python) for i in range(a.nodes)]
        deadline = time.monotonic() + 30
        while not all(n.healthy() for n in nodes):
            if time.monotonic() > deadline:
                raise SystemExit("soak-cluster: nodes not healthy; logs in %s" % workdir)
            time.sleep(0.2)
        feeds = [Feed(i, a.rate, b"x" * 40) for i in range(a.rooms)]
        sources = [Source(f, nodes[i % len(nodes)], workdir, python) for i, f in enumerate(feeds)]
        report = Report(a.rooms)
        subs = [Subscriber(i % a.rooms, nodes[(i // a.rooms) % len(nodes)], sources[i % a.rooms], report, stop)
                for i in range(a.subscribers)]
        gevent.sleep(a.warmup)
        chaos = Chaos(redis, nodes, sources, report, rng, a.lease)
        kinds = a.kinds.split(",")
        t_stop = time.monotonic() + a.seconds
        order = []
        while time.monotonic() < t_stop:
            gevent.sleep(min(rng.uniform(a.fault_min, a.fault_max), max(0, t_stop - time.monotonic())))
            if time.monotonic() >= t_stop:
                break
            if not order:                         # every kind once, in a random order, then again
                order = list(kinds)
                rng.shuffle(order)
            chaos.inject(order.pop())
        gevent.sleep(3)
        t_end = time.monotonic()
        stop.set()
        result = summarize(report, chaos, a.rooms, t_end)
        result["seconds"] = a.seconds
        result["redis"] = a.redis
        result["subscribers"] = a.subscribers
        result["nodes"] = a.nodes
        result["rate_per_room"] = a.rate
        result["workdir"] = workdir
        result["ok"] = (result["silent_gaps"] == 0 and result["duplicates"] == 0
                        and result["rooms_alive"] == a.rooms
                        and all(r["recovered"] == r["count"] for r in result["recovery"].values()))
        gevent.killall([s.greenlet for s in subs], timeout=5)
    finally:
        stop.set()
        for s in sources:
            s.stop()
        for n in nodes:
            n.stop()
        redis.close()
    if result["ok"] and not a.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
        result["workdir"] = None
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        for key in ("faults", "messages_checked", "silent_gaps", "duplicates", "lost_before_publish",
                    "closes", "needless_4408", "recovery", "rooms_alive", "ok"):
            print("%-20s %s" % (key, result[key]))
        print("logs: %s" % (result["workdir"] or "removed (--keep-logs keeps them)"))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
