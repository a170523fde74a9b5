#!/usr/bin/env python3
"""Redis capacity on paper: what N nodes and S subscribers ask of one Redis (docs/REDIS.md).

Pure arithmetic on the MEASURED per-operation costs below (edit them, or the scenarios, and run
again): ``python3 scripts/redis_capacity.py`` prints the markdown tables of docs/REDIS.md.
Every input says where it comes from; everything printed is derived from them.
"""
import sys

# --- measured: redis-server CPU per operation (µs) ---------------------------------------------
# bench/results/redis-primitives-2026-11-27.md (redis 7.0.15, 2 shared cores, medians of 2 runs)
PUBLISH_US = 3.12       # PUBLISH, pre-encoded RESP, pipelines of 10, no receiver (table P)
PER_NODE_US = 0.38      # + per subscribed connection (= node) per message (table F, raw K=10 -> 100)
XADD_US = 7.12          # XADD MAXLEN ~ pipelined x10: replay rooms, once per batch (table P)
LUA_US = 12.7           # a small Lua script pipelined x10 (table P): lease refresh, admission
# --- measured: node CPU (µs) -------------------------------------------------------------------
NODE_RECV_US = 4.9      # a node reading one pub/sub message, pure-Python parser (table F, rawpy K=100)
NODE_WS_US = 6.47       # one process, one WebSocket delivery, paced 1000 msg/s to 100 subscribers
#                         (docs/BENCHMARKS.md, latency table; batched blasts cost 0.08-0.18)
# --- measured: redis-server memory (bytes) ------------------------------------------------------
# bench/results/redis-memory-2026-11-27-*.json (bench/redis_memory.py, 10,000 rooms)
MEM_LEASE = 179         # sph:lease:{K}, string with a TTL
MEM_ROOM_HASH = 470     # sph:room:{K}, 15 fields, TTL
MEM_ROOMS_ZSET = 124    # member of sph:rooms
MEM_SUBS_BASE = 145     # sph:subs:{K} with one node (170) minus one field
MEM_SUBS_PER_NODE = 26  # each further node in sph:subs:{K} ((401 - 170) / 9)
MEM_SUB_CHANNELS = 468  # one node subscribed to a room's two channels (sph:m:{K}, sph:e:{K})
MEM_REPLAY_FIRST = 4352  # a replay stream with one entry (a 4 KiB listpack node is allocated)
MEM_REPLAY_ENTRY = 125  # each further entry of 117 bytes ((16733 - 4352) / 99)
# --- assumptions (not measured) ----------------------------------------------------------------
NODES = 10
SUBSCRIBERS = 100000
MESSAGE_BYTES = 100     # payload of one room message
BATCH_HEADER = 16       # "<epoch> <seq> <count>\n" before a batch's frames
WS_HEADER = 2           # frame header of a payload under 126 bytes
CODE = "{X7K9P2}"       # a room key with its hash tag
PREFIX = "sph:"
LEASE_S = 5.0           # --redis-lease; refreshed every third of it
HALF_CORE = 0.5         # shard above this share of Redis's one core (bursts, rejoins, persistence)
BUFFER_LIMIT_MB = 64    # client-output-buffer-limit pubsub (hard): the worst case per node

#: (name, rooms, messages/s per room, placement, replay entries); placement "any": a
#: subscriber lands on any node; "affinity": nginx `hash $arg_room` puts a room's subscribers
#: on one node. The source lands on any node either way (nginx stream cannot see the room).
SCENARIOS = [
    ("1 room × 100,000, 10 msg/s", 1, 10, "any", 0),
    ("1 room × 100,000, 100 msg/s", 1, 100, "any", 0),
    ("1,000 rooms × 100, 10 msg/s", 1000, 10, "any", 0),
    ("1,000 rooms × 100, 10 msg/s", 1000, 10, "affinity", 0),
    ("10,000 rooms × 10, 10 msg/s", 10000, 10, "any", 0),
    ("10,000 rooms × 10, 10 msg/s", 10000, 10, "affinity", 0),
    ("10,000 rooms × 10, 10 msg/s, replay=1", 10000, 10, "affinity", 1),
    ("10,000 rooms × 10, 100 msg/s", 10000, 100, "any", 0),
    ("10,000 rooms × 10, 100 msg/s", 10000, 100, "affinity", 0),
]


def resp_len(*args):
    """Bytes of a RESP array of bulk strings (a command, or a pub/sub push)."""
    n = len("*%d\r\n" % len(args))
    for a in args:
        n += len("$%d\r\n" % a) + a + 2
    return n


def placement(subs, how):
    """(chance that the owner publishes at all, expected remote nodes subscribed) for a room."""
    if how == "affinity":
        remote = (NODES - 1) / NODES            # the subscribers' node is the source's: 1 in N
        return remote, remote
    p_other = 1 - (1 - 1 / NODES) ** subs       # a given other node has a subscriber
    return 1 - (1 / NODES) ** subs, (NODES - 1) * p_other


def scenario(rooms, rate, how, replay):
    subs = SUBSCRIBERS / rooms
    p_pub, remote = placement(subs, how)
    msgs = rooms * rate                          # room messages/s (batches of one: paced)
    publishes = msgs * p_pub
    deliveries = msgs * remote                   # Redis -> node messages/s
    batch = BATCH_HEADER + WS_HEADER + MESSAGE_BYTES
    chan = len(PREFIX + "m:" + CODE)
    cpu_msg = publishes * PUBLISH_US + deliveries * PER_NODE_US + (msgs * XADD_US if replay else 0)
    cpu_ctl = rooms / (LEASE_S / 3) * LUA_US + NODES * LUA_US
    # the owner subscribes to two channels of its own (events, write-back wake-ups)
    mem = rooms * (MEM_LEASE + MEM_ROOM_HASH + MEM_ROOMS_ZSET + MEM_SUBS_BASE
                   + MEM_SUBS_PER_NODE * max(remote - 1, 0) + MEM_SUB_CHANNELS * (remote + 1))
    if replay:
        mem += rooms * (MEM_REPLAY_FIRST + MEM_REPLAY_ENTRY * (replay - 1))
    return {
        "subs": subs, "remote": remote, "msgs": msgs, "publishes": publishes,
        "deliveries": deliveries,
        "redis_cpu": cpu_msg / 1e6, "redis_ctl": cpu_ctl / 1e6,
        "net_in": publishes * (resp_len(7, chan, batch)) + (msgs * (batch + 60) if replay else 0),
        "net_out": deliveries * resp_len(7, chan, batch),
        "mem": mem,
        "node_recv": deliveries / NODES * NODE_RECV_US / 1e6,
        "node_ws": SUBSCRIBERS * rate / NODES * NODE_WS_US / 1e6,
        "rejoin": SUBSCRIBERS * LUA_US / 1e6,
    }


def pct(x):
    return "%.0f %%" % (100 * x) if x >= 0.01 else "%.1f %%" % (100 * x)


def num(x):
    return "{:,.0f}".format(x)


def mb(x):
    return "%.1f" % (x / 1e6) if x < 1e7 else "%.0f" % (x / 1e6)


def main(out=sys.stdout):
    w = out.write
    w("Inputs: %d nodes, %s subscribers, %d-byte messages, one message per batch (paced: the "
      "costliest case per message), lease %g s. Redis CPU: PUBLISH %.2f µs + %.2f µs per "
      "subscribed node, XADD %.2f µs, Lua %.1f µs; node: %.1f µs per Redis message received, "
      "%.2f µs per WebSocket delivery (all measured, see the script).\n\n"
      % (NODES, num(SUBSCRIBERS), MESSAGE_BYTES, LEASE_S, PUBLISH_US, PER_NODE_US, XADD_US,
         LUA_US, NODE_RECV_US, NODE_WS_US))
    w("| scenario | subscribers | room msgs/s in | PUBLISH/s | remote nodes per room "
      "| deliveries/s (Redis → nodes) | Redis CPU, messages | + leases | Redis in MB/s "
      "| Redis out MB/s | Redis memory MB | each node: reading Redis | each node: WebSockets |\n")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for name, rooms, rate, how, replay in SCENARIOS:
        r = scenario(rooms, rate, how, replay)
        w("| %s, %s | %s per room | %s | %s | %.1f | %s | %s | %s | %s | %s | %s | %s | %s |\n" % (
            name, "room affinity" if how == "affinity" else "any node", num(r["subs"]),
            num(r["msgs"]), num(r["publishes"]), r["remote"], num(r["deliveries"]),
            pct(r["redis_cpu"]), pct(r["redis_ctl"]), mb(r["net_in"]), mb(r["net_out"]),
            mb(r["mem"]), pct(r["node_recv"]), pct(r["node_ws"])))
    r = scenario(1, 1, "any", 0)
    w("\nA mass rejoin (all %s subscribers reconnect, one admission Lua each): %.1f s of Redis "
      "CPU. Pub/sub output buffers come on top of the memory column: normally near 0, at worst "
      "%d MB per node (the hard limit) = %d MB for %d nodes.\n"
      % (num(SUBSCRIBERS), r["rejoin"], BUFFER_LIMIT_MB, BUFFER_LIMIT_MB * NODES, NODES))
    w("\nShard when Redis passes %d %% of its core: at %.2f + n × %.2f µs per room message, "
      "that is about %s room messages/s with 1 remote node per room (room affinity), %s with "
      "%d (every node subscribed).\n" % (
          100 * HALF_CORE, PUBLISH_US, PER_NODE_US,
          num(HALF_CORE * 1e6 / (PUBLISH_US + PER_NODE_US)),
          num(HALF_CORE * 1e6 / (PUBLISH_US + (NODES - 1) * PER_NODE_US)), NODES - 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
