"""Cost per message of Redis Cluster against the single-Redis path (issue 22), measured.

    python bench/redis_cluster_cost.py            # writes bench/results/redis-cluster-cost-<date>.json

Starts, on loopback, (a) one ``redis-server``, (b) one with a replica (the Sentinel layout), and
(c) a Redis Cluster of 3 primaries and 3 replicas (tests/clusterkit.py). On each it sends what a
node sends per loop turn of a room — one message batch, ``--size`` bytes, ``PUBLISH`` (a, b) or
``SPUBLISH`` on the room's shard (c) — ``--count`` times, pre-encoded and pipelined by
``--pipeline`` as the node's Pipe does, to a channel two other connections listen to (two nodes
with subscribers in the room: ``SUBSCRIBE``/``SSUBSCRIBE``). It waits until both listeners got
every message, and reports the CPU (utime+stime, /proc) each redis-server spent per message: the
room's primary, its replica, the other shards. And the node's own extra in a Cluster: routing a
pre-encoded command by its key's slot (``proto.slots.command_key`` + ``key_slot``), per batch.
Each loop is bounded by a count and a deadline.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
from sphincter_lib.proto import redis_keys, resp, slots  # noqa: E402
from rediskit import RedisServer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(TICK)


class Listener:
    def __init__(self, port, channel, sharded):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(resp.command("SSUBSCRIBE" if sharded else "SUBSCRIBE", channel))
        self.got = 0
        self.ready = gevent.event.Event()
        self.greenlet = gevent.spawn(self._run)

    def _run(self):
        parser = resp.Parser()
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                return
            for push in parser.feed(data):
                if push[0] in (b"message", b"smessage"):
                    self.got += 1
                elif push[0] in (b"subscribe", b"ssubscribe"):
                    self.ready.set()

    def close(self):
        self.greenlet.kill()
        self.sock.close()


def drain(sock, want, parser):
    got = 0
    while got < want:
        data = sock.recv(1 << 20)
        if not data:
            raise OSError("closed")
        got += len(parser.feed(data))


def run(name, primary, others, channel, sharded, a):
    """Publish ``a.count`` messages to ``channel`` on ``primary`` (a RedisServer); CPU per message
    of every server in ``[primary] + others``."""
    listeners = [Listener(primary.port, channel, sharded) for _ in range(a.listeners)]
    for listener in listeners:
        listener.ready.wait(5)
    pub = socket.create_connection(("127.0.0.1", primary.port))
    parser = resp.Parser()
    payload = b"x" * a.size
    command = resp.command("SPUBLISH" if sharded else "PUBLISH", channel, payload)
    servers = [primary] + others
    before = [cpu_s(s.proc.pid) for s in servers]
    t0 = time.monotonic()
    sent = 0
    deadline = t0 + a.seconds
    while sent < a.count and time.monotonic() < deadline:
        n = min(a.pipeline, a.count - sent)
        pub.sendall(command * n)
        drain(pub, n, parser)
        sent += n
    while any(l.got < sent for l in listeners) and time.monotonic() < deadline + 10:
        gevent.sleep(0.01)
    elapsed = time.monotonic() - t0
    gevent.sleep(0.3)                              # replication settles
    after = [cpu_s(s.proc.pid) for s in servers]
    delivered = min(l.got for l in listeners)
    for listener in listeners:
        listener.close()
    pub.close()
    us = [(b - c) * 1e6 / sent for b, c in zip(after, before)]
    out = {"setup": name, "messages": sent, "delivered_each": delivered, "seconds": round(elapsed, 2),
           "msgs_per_s": round(sent / elapsed), "primary_us_per_msg": round(us[0], 2),
           "others_us_per_msg": [round(u, 2) for u in us[1:]], "total_us_per_msg": round(sum(us), 2)}
    print(json.dumps(out), flush=True)
    return out


def routing_cost(n=200000):
    """µs the node spends routing one pre-encoded batch in a Cluster (ShardedPipe.send)."""
    data = resp.command("SPUBLISH", redis_keys.Keys("sph", cluster=True).messages("ABCDEF"), b"x" * 512)
    t0 = time.perf_counter()
    for _ in range(n):
        slots.key_slot(slots.command_key(data))
    return round((time.perf_counter() - t0) * 1e6 / n, 3)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100000)
    p.add_argument("--size", type=int, default=512, help="bytes per message batch")
    p.add_argument("--pipeline", type=int, default=100)
    p.add_argument("--listeners", type=int, default=2)
    p.add_argument("--seconds", type=float, default=60.0, help="deadline of each run")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from clusterkit import RedisClusterServers
    results = {"date": datetime.date.today().isoformat(), "count": a.count, "size": a.size,
               "pipeline": a.pipeline, "listeners": a.listeners, "runs": []}
    single = RedisServer()
    try:
        results["runs"].append(run("single", single, [], "sph:m:{ABCDEF}", False, a))
    finally:
        single.close()
    primary = RedisServer()
    replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(primary.port)])
    try:
        deadline = time.monotonic() + 10
        while b"master_link_status:up" not in (_info(replica.port) or b"") and time.monotonic() < deadline:
            time.sleep(0.1)
        results["runs"].append(run("single+replica", primary, [replica], "sph:m:{ABCDEF}", False, a))
    finally:
        replica.close()
        primary.close()
    cluster = RedisClusterServers()
    try:
        channel = redis_keys.Keys("sph", cluster=True).messages("ABCDEF")
        slot = slots.key_slot(channel)
        owner = cluster.primary_of(slot)
        others = [s for s in cluster.servers if s is not owner]
        run_ = run("cluster shard (3+3)", owner, others, channel, True, a)
        ports = [s.port for s in others]
        replica_port = next(r for first, last, _, reps in cluster.slots() if first <= slot <= last for r in reps)
        run_["replica_us_per_msg"] = run_["others_us_per_msg"][ports.index(replica_port)]
        run_["other_shards_us_per_msg"] = round(run_["total_us_per_msg"] - run_["primary_us_per_msg"]
                                                - run_["replica_us_per_msg"], 2)
        results["runs"].append(run_)
    finally:
        cluster.close()
    results["node_routing_us_per_batch"] = routing_cost()
    out = a.out or os.path.join(HERE, "results", "redis-cluster-cost-%s.json" % results["date"])
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print("written to %s" % out)


def _info(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(resp.command("INFO", "replication"))
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


if __name__ == "__main__":
    main()
