"""What Redis holds per room, per subscribed node and per replayed message (issue 13, docs/REDIS.md).

Starts its own ``redis-server`` (no persistence) on a free loopback port, writes the keys of
docs/redis-design.md ("Keys, channels and TTLs") for ROOMS rooms with realistic values, and
reads ``used_memory`` (INFO memory) before and after each kind of key:

    python bench/redis_memory.py [--rooms 10000] [--json OUT.json]

Needs redis-server and redis-py (requirements.txt). Measures memory only, not CPU.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import redis

NODE = "relay-host-1-4f2a"          # a typical --node-name (HOSTNAME-PID-4hex)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def used(r):
    return r.info("memory")["used_memory"]


def room_hash(i):
    return {"epoch": 1, "state": "live", "named": 0, "opened_at": 1795000000000 + i,
            "peer": "203.0.113.%d:%d" % (i % 250, 40000 + i % 20000), "owner": NODE,
            "resume": "%064x" % (i * 7919), "write": "%032x" % (i * 104729), "replay": 0,
            "max_subs": 10000, "slow": "cut", "messages": 123456, "bytes": 12345678,
            "subscribers": 10, "outbytes": 0}


def measure(r, rooms, nodes_per_room, replay_entries, batch_bytes):
    codes = ["{%06X}" % (0xA00000 + i) for i in range(rooms)]
    out = {}

    def step(name, fill):
        r.flushall()
        time.sleep(0.2)
        before = used(r)
        pipe = r.pipeline(transaction=False)
        for i, k in enumerate(codes):
            fill(pipe, i, k)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        out[name] = (used(r) - before) / rooms

    step("lease", lambda p, i, k: p.set("sph:lease:" + k, NODE + " 1", px=600000))
    step("room_hash", lambda p, i, k: (p.hset("sph:room:" + k, mapping=room_hash(i)),
                                       p.pexpire("sph:room:" + k, 600000)))
    step("rooms_zset_member", lambda p, i, k: p.zadd("sph:rooms", {k: 1795000000000 + i}))
    step("subs_hash_%d_nodes" % nodes_per_room, lambda p, i, k: (
        p.hset("sph:subs:" + k, mapping={"%s-%d" % (NODE, n): 3 for n in range(nodes_per_room)}),
        p.pexpire("sph:subs:" + k, 600000)))
    batch = b"1 %d 1\n" % 1 + b"\x81\x64" + b"x" * (batch_bytes - 8)
    for n in sorted(set((1, replay_entries))):
        step("replay_stream_%d" % n, lambda p, i, k, n=n: [
            p.xadd("sph:log:" + k, {"d": batch}, id="1-%d" % (s + 1), maxlen=n, approximate=True)
            for s in range(n)])
        out["replay_stream_%d" % n] /= 1.0
    # pub/sub: one node subscribed to every room's two channels (messages and events)
    r.flushall()
    time.sleep(0.2)
    before = used(r)
    sub = redis.Redis(host=r.connection_pool.connection_kwargs["host"],
                      port=r.connection_pool.connection_kwargs["port"]).pubsub()
    for i in range(0, rooms, 1000):
        chunk = codes[i:i + 1000]
        sub.subscribe(*(["sph:m:" + k for k in chunk] + ["sph:e:" + k for k in chunk]))
    deadline = time.monotonic() + 30
    while len(sub.channels) < 2 * rooms and time.monotonic() < deadline:
        sub.get_message(timeout=0.1)
    while sub.get_message(timeout=0.2):
        pass
    out["subscription_2_channels_per_node"] = (used(r) - before) / rooms
    sub.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rooms", type=int, default=10000)
    ap.add_argument("--nodes-per-room", type=int, default=10)
    ap.add_argument("--replay", type=int, default=100, help="entries of a replay log")
    ap.add_argument("--batch-bytes", type=int, default=117,
                    help="one 100-byte message as a batch: header + frame header + payload")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="redis-memory-", suffix=".log", delete=False)
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
    try:
        r = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        version = r.info("server")["redis_version"]
        per_room = measure(r, a.rooms, a.nodes_per_room, a.replay, a.batch_bytes)
    finally:
        proc.terminate()
        proc.wait()
        os.unlink(log.name)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "redis": version,
              "rooms": a.rooms, "nodes_per_room": a.nodes_per_room, "replay": a.replay,
              "batch_bytes": a.batch_bytes, "bytes_per_room": {k: round(v, 1) for k, v in per_room.items()}}
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
