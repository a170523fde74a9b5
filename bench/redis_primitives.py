"""Redis primitives for issue 13 (scale out on Redis): what each costs, measured under gevent.

Needs CPython 3.8+ and the client pinned in requirements-bench.txt (``redis``); ``hiredis``
(the committed results had 3.4.2) gives redis-py its C parser and enables the ``raw`` reader,
which is left out without it. This is a bench script, not project code. ``--compat`` (the
gevent check behind docs/redis-design.md's version table) runs on any CPython 3.6+ with
redis-py 4.3+. It needs a real ``redis-server`` on loopback, which it does NOT start::

    redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes
    python bench/redis_primitives.py --port 6390     # writes bench/results/redis-primitives-<date>.json
    python bench/redis_primitives.py --report bench/results/redis-primitives-<date>*.json
    redis-cli -p 6390 shutdown nosave

What it measures (each loop bounded by a count AND a deadline; loopback only):

- ``rtt``: sequential round trips (PING, GET, SET NX PX, a fenced Lua publish): p50/p99 µs;
- ``publish``: PUBLISH (redis-py pipeline; pre-encoded RESP through redis-py's Connection and on
  a bare socket), XADD MAXLEN~, Lua "publish with sequence number" (lease check + INCR +
  PUBLISH [+ RPUSH/LTRIM replay list], or + XADD with id = seq) and SET NX PX, in pipelines of
  1/10/100 commands with no subscriber: ops/s, CPU µs per op here and in redis-server;
- ``fanout``: 1 publisher, K subscribed connections in a second process (``--role sub``), read
  by redis-py's PubSub (``pubsub``), redis-py's Connection.read_response (``lowlevel``), a bare
  socket with hiredis.Reader (``raw``) or with a pure-Python RESP parser (``rawpy``), or K
  XREAD BLOCK readers of a stream (``stream``); optionally several room messages per Redis
  message (``coalesce``): deliveries/s, CPU µs per message (publisher, redis-server) and per
  delivery (subscriber process, redis-server); order and gaps checked per message;
- ``fanin``: M publishing connections (one channel each) to 1 subscriber connection;
- ``latency``: paced publishing (1 message every ``--pace-ms``, not pipelined), one-way
  publish→receive latency p50/p99 for each reader.

CPU is utime+stime from /proc/<pid>/stat (clock ticks, 10 ms resolution: loops are sized so
a run costs far more than that). ``--parser python`` forces redis-py's pure-Python reply
parser (what a node without hiredis gets).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import redis  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PAYLOAD = 100           # bytes per message (like bench/run.py's 100-byte lines)

# Lua: the source's node publishes a room message with its sequence number, fenced by the lease.
# KEYS: lease, seq, channel[, replay list]; ARGV: fencing token, payload[, replay length]
LUA_PUB = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], seq .. ':' .. ARGV[2])
return seq
"""
LUA_PUB_REPLAY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local seq = redis.call('INCR', KEYS[2])
local msg = seq .. ':' .. ARGV[2]
redis.call('PUBLISH', KEYS[3], msg)
redis.call('RPUSH', KEYS[4], msg)
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[3]), -1)
return seq
"""
# streams: the entry id IS the sequence number (<seq>-0), the lease fences the writer
LUA_XADD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'd', ARGV[2])
return seq
"""


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(TICK)


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def client(args):
    if args.parser == "python":
        from redis.connection import _RESP2Parser
        pool = redis.ConnectionPool(host="127.0.0.1", port=args.port, parser_class=_RESP2Parser)
        return redis.Redis(connection_pool=pool)
    return redis.Redis(host="127.0.0.1", port=args.port)


def resp(*parts):
    """One command in RESP (what a node's hot path would pre-encode instead of using redis-py)."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        p = p if isinstance(p, bytes) else str(p).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class RawConn:
    """A bare socket for pre-encoded, pipelined commands whose replies are integers (PUBLISH)."""

    def __init__(self, args):
        import socket
        self.sock = socket.create_connection(("127.0.0.1", args.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    def send(self, data, replies):
        self.sock.sendall(data)
        buf, got = self.pending, 0
        while True:
            got = buf.count(b"\r\n")
            if got >= replies:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            buf += chunk
        if not buf.startswith(b":"):
            raise RuntimeError("unexpected reply %r" % buf[:80])
        self.pending = b""      # integer replies only: all of them consumed


class PushReader:
    """Pure-Python, sans-IO parser of RESP push messages (``*3 $message $chan $data``) and
    subscribe confirmations: what a node without hiredis would run."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf = self.buf + data if self.buf else data

    def replies(self):
        buf, i, n, out = self.buf, 0, len(self.buf), []
        find = buf.find
        while i < n:
            j = find(b"\r\n", i)
            if j < 0:
                break
            count, k, items = int(buf[i + 1:j]), j + 2, []
            for _ in range(count):
                e = find(b"\r\n", k)
                if e < 0:
                    break
                if buf[k] == 36:                        # b"$"
                    start = e + 2
                    end = start + int(buf[k + 1:e])
                    if end + 2 > n:
                        break
                    items.append(buf[start:end])
                    k = end + 2
                else:                                    # b":" integer
                    items.append(int(buf[k + 1:e]))
                    k = e + 2
            if len(items) < count:
                break
            out.append(items)
            i = k
        self.buf = buf[i:]
        return out


def stamp(i):
    """A message: sequence, send time, padding to PAYLOAD bytes."""
    head = b"%d %.9f " % (i, time.perf_counter())
    return head + b"x" * max(0, PAYLOAD - len(head))


def records(data):
    """[(seq, sent)] of one Redis message: an optional ``<seq>:`` prefix (Lua), then one or more
    PAYLOAD-byte records (``--coalesce``)."""
    colon = data.find(b":", 0, 12)
    if colon > 0 and data[:colon].isdigit():
        data = data[colon + 1:]
    out = []
    for k in range(0, len(data), PAYLOAD):
        seq, sent, _ = data[k:k + PAYLOAD].split(b" ", 2)
        out.append((int(seq), float(sent)))
    return out


# -- subscriber process (--role sub) ----------------------------------------------------------
def run_sub(args):
    """K connections each subscribe (or XREAD) and read ``count`` messages; print a JSON line."""
    r = client(args)
    results = [None] * args.conns
    deadline = time.monotonic() + args.seconds

    class Tally:
        def __init__(self):
            self.got, self.bad, self.lat, self.last = 0, 0, [], {}

        def add(self, channel, data):
            for seq, sent in records(data):
                if seq != self.last.get(channel, -1) + 1:
                    self.bad += 1
                self.last[channel] = seq
                self.got += 1
                if self.got % args.sample == 0:
                    self.lat.append(time.perf_counter() - sent)

    def pubsub_reader(k):
        conn = client(args)
        p = conn.pubsub(ignore_subscribe_messages=True)
        p.subscribe(*args.channels.split(","))
        p.get_message(timeout=1.0)               # the subscribe confirmation(s)
        r.incr(args.ready_key)
        t = Tally()
        while t.got < args.count and time.monotonic() < deadline:
            m = p.get_message(timeout=1.0)
            if m is not None:
                t.add(m["channel"], m["data"])
        results[k] = t
        p.close()

    def lowlevel_reader(k):
        """redis-py's own connection, but read with Connection.read_response() (no PubSub
        machinery per message): the maintained library carrying the hot path."""
        conn = client(args)
        p = conn.pubsub()
        chans = args.channels.split(",")
        p.subscribe(*chans)
        confirmed, until = 0, time.monotonic() + 5
        while confirmed < len(chans) and time.monotonic() < until:
            m = p.get_message(timeout=1.0)          # the subscribe confirmations
            if m is not None and m["type"] == "subscribe":
                confirmed += 1
        c = p.connection
        r.incr(args.ready_key)
        t = Tally()
        while t.got < args.count and time.monotonic() < deadline:
            if not c.can_read(timeout=1.0):
                continue
            reply = c.read_response(push_request=True)
            if reply[0] == b"message":
                t.add(reply[1], reply[2])
        results[k] = t

    def raw_reader(k):
        """SUBSCRIBE on a bare socket, replies parsed by hiredis.Reader (mode raw) or by
        PushReader (mode rawpy) in 256 KiB reads."""
        import socket
        sock = socket.create_connection(("127.0.0.1", args.port))
        chans = [c.encode() for c in args.channels.split(",")]
        sock.sendall(b"*%d\r\n$9\r\nSUBSCRIBE\r\n" % (len(chans) + 1)
                     + b"".join(b"$%d\r\n%s\r\n" % (len(c), c) for c in chans))
        if args.mode == "raw":
            import hiredis
            reader = hiredis.Reader()
        else:
            reader = PushReader()
        confirmed = 0
        t = Tally()
        sock.settimeout(1.0)
        while t.got < args.count and time.monotonic() < deadline:
            try:
                chunk = sock.recv(262144)
            except socket.timeout:
                continue
            if not chunk:
                break
            reader.feed(chunk)
            if args.mode == "raw":
                replies = []
                reply = reader.gets()
                while reply is not False:
                    replies.append(reply)
                    reply = reader.gets()
            else:
                replies = reader.replies()
            for reply in replies:
                if reply[0] == b"message":
                    t.add(reply[1], reply[2])
                else:
                    confirmed += 1
                    if confirmed == len(chans):
                        r.incr(args.ready_key)
        results[k] = t
        sock.close()

    def stream_reader(k):
        conn = client(args)
        stream = args.channels
        r.incr(args.ready_key)
        t = Tally()
        last_id, expect = "0-0", 1
        while t.got < args.count and time.monotonic() < deadline:
            reply = conn.xread({stream: last_id}, count=args.xcount, block=1000)
            if not reply:
                continue
            for entry_id, fields in reply[0][1]:
                seq = int(entry_id.split(b"-")[0])      # the entry id is the room's sequence number
                if seq != expect:
                    t.bad += 1                           # a gap: a node would close 4408 here
                expect = seq + 1
                last_id = entry_id
                t.add(stream, fields[b"d"])
        results[k] = t

    reader = {"stream": stream_reader, "pubsub": pubsub_reader, "raw": raw_reader, "rawpy": raw_reader,
              "lowlevel": lowlevel_reader}[args.mode]
    cpu0 = cpu_s(os.getpid())
    gevent.joinall([gevent.spawn(reader, k) for k in range(args.conns)], timeout=args.seconds + 5)
    cpu1 = cpu_s(os.getpid())
    done = [x for x in results if x is not None]
    lat = [v for x in done for v in x.lat]
    print(json.dumps({"received": sum(x.got for x in done), "out_of_order": sum(x.bad for x in done),
                      "cpu_s": cpu1 - cpu0, "lat_us": [v * 1e6 for v in lat]}), flush=True)


def spawn_sub(args, mode, conns, count, channels, ready_key, sample=1):
    cmd = [sys.executable, os.path.abspath(__file__), "--role", "sub", "--port", str(args.port),
           "--parser", args.parser, "--mode", mode, "--conns", str(conns), "--count", str(count),
           "--channels", channels, "--ready-key", ready_key, "--seconds", str(args.seconds),
           "--sample", str(sample), "--xcount", str(args.xcount)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE)


def wait_ready(r, key, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while int(r.get(key) or 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("subscribers not ready: %s/%d" % (r.get(key), n))
        gevent.sleep(0.01)


# -- measurements -------------------------------------------------------------------------------
def measure_rtt(args, r, spid):
    out = {}
    lua = r.register_script(LUA_PUB)
    r.set("rtt:lease", "tok")
    ops = {
        "PING": lambda i: r.ping(),
        "SET NX PX": lambda i: r.set("rtt:code:%d" % i, "node-1", nx=True, px=60000),
        "GET": lambda i: r.get("rtt:lease"),
        "Lua fenced publish": lambda i: lua(keys=["rtt:lease", "rtt:seq", "rtt:ch"], args=["tok", "x" * PAYLOAD]),
    }
    for name, op in ops.items():
        lat = []
        deadline = time.monotonic() + args.seconds
        c0, s0 = cpu_s(os.getpid()), cpu_s(spid)
        for i in range(args.rtt_count):
            t = time.perf_counter()
            op(i)
            lat.append(time.perf_counter() - t)
            if time.monotonic() > deadline:
                break
        c1, s1 = cpu_s(os.getpid()), cpu_s(spid)
        n = len(lat)
        out[name] = {"n": n, "p50_us": pct(lat, 50) * 1e6, "p99_us": pct(lat, 99) * 1e6,
                     "client_cpu_us_per_op": (c1 - c0) / n * 1e6, "server_cpu_us_per_op": (s1 - s0) / n * 1e6}
        log("rtt %-20s n=%d p50=%.0fus p99=%.0fus client=%.1fus server=%.1fus", name, n,
            out[name]["p50_us"], out[name]["p99_us"], out[name]["client_cpu_us_per_op"],
            out[name]["server_cpu_us_per_op"])
    r.delete(*r.keys("rtt:*"))
    return out


def publish_ops(r):
    """name -> function(pipe, i) queuing one message's command(s)."""
    r.set("b:lease", "tok")
    pub, rep, xadd = (r.register_script(s) for s in (LUA_PUB, LUA_PUB_REPLAY, LUA_XADD))
    payload = b"x" * PAYLOAD
    return {
        "PUBLISH": lambda p, i: p.publish("b:ch", payload),
        "XADD MAXLEN~1000": lambda p, i: p.xadd("b:st", {"d": payload}, maxlen=1000, approximate=True),
        "Lua seq+PUBLISH": lambda p, i: pub(keys=["b:lease", "b:seq", "b:ch"], args=["tok", payload], client=p),
        "Lua seq+PUBLISH+replay list": lambda p, i: rep(keys=["b:lease", "b:seq", "b:ch", "b:rl"],
                                                        args=["tok", payload, 100], client=p),
        "Lua seq+XADD MAXLEN~1000": lambda p, i: xadd(keys=["b:lease", "b:seq2", "b:st2"],
                                                     args=["tok", payload, 1000], client=p),
        "SET NX PX": lambda p, i: p.set("b:code:%d" % i, "node-1", nx=True, px=60000),
    }


def measure_publish_side(args, r, spid):
    out = {}
    for name, op in publish_ops(r).items():
        for batch in (1, 10, 100):
            total = args.pub_count if batch > 1 else args.pub_count // 4
            deadline = time.monotonic() + args.seconds
            c0, s0, t0 = cpu_s(os.getpid()), cpu_s(spid), time.perf_counter()
            n = 0
            while n < total and time.monotonic() < deadline:
                p = r.pipeline(transaction=False)
                for i in range(batch):
                    op(p, n + i)
                p.execute()
                n += batch
            t1, c1, s1 = time.perf_counter(), cpu_s(os.getpid()), cpu_s(spid)
            key = "%s x%d" % (name, batch)
            out[key] = {"command": name, "batch": batch, "n": n, "ops_per_s": n / (t1 - t0),
                        "client_cpu_us_per_op": (c1 - c0) / n * 1e6, "server_cpu_us_per_op": (s1 - s0) / n * 1e6}
            log("publish-side %-32s n=%6d %8.0f op/s client=%5.1fus server=%5.2fus", key, n,
                out[key]["ops_per_s"], out[key]["client_cpu_us_per_op"], out[key]["server_cpu_us_per_op"])
        for k in r.scan_iter("b:*"):
            if k != b"b:lease":
                r.delete(k)
    raw = RawConn(args)
    payload = b"x" * PAYLOAD
    name = "raw PUBLISH (pre-encoded RESP, bare socket)"
    for batch in (1, 10, 100):
        total = args.pub_count if batch > 1 else args.pub_count // 4
        deadline = time.monotonic() + args.seconds
        c0, s0, t0 = cpu_s(os.getpid()), cpu_s(spid), time.perf_counter()
        n = 0
        while n < total and time.monotonic() < deadline:
            raw.send(b"".join(resp(b"PUBLISH", b"b:ch", b"%d:%s" % (n + i, payload)) for i in range(batch)), batch)
            n += batch
        t1, c1, s1 = time.perf_counter(), cpu_s(os.getpid()), cpu_s(spid)
        key = "%s x%d" % (name, batch)
        out[key] = {"command": name, "batch": batch, "n": n, "ops_per_s": n / (t1 - t0),
                    "client_cpu_us_per_op": (c1 - c0) / n * 1e6, "server_cpu_us_per_op": (s1 - s0) / n * 1e6}
        log("publish-side %-32s n=%6d %8.0f op/s client=%5.1fus server=%5.2fus", key, n,
            out[key]["ops_per_s"], out[key]["client_cpu_us_per_op"], out[key]["server_cpu_us_per_op"])
    raw.sock.close()
    conn = r.connection_pool.get_connection()
    name = "PUBLISH via redis-py Connection.send_packed_command"
    for batch in (1, 10, 100):
        total = args.pub_count if batch > 1 else args.pub_count // 4
        deadline = time.monotonic() + args.seconds
        c0, s0, t0 = cpu_s(os.getpid()), cpu_s(spid), time.perf_counter()
        n = 0
        while n < total and time.monotonic() < deadline:
            conn.send_packed_command([b"".join(resp(b"PUBLISH", b"b:ch", b"%d:%s" % (n + i, payload))
                                               for i in range(batch))])
            for _ in range(batch):
                conn.read_response()
            n += batch
        t1, c1, s1 = time.perf_counter(), cpu_s(os.getpid()), cpu_s(spid)
        key = "%s x%d" % (name, batch)
        out[key] = {"command": name, "batch": batch, "n": n, "ops_per_s": n / (t1 - t0),
                    "client_cpu_us_per_op": (c1 - c0) / n * 1e6, "server_cpu_us_per_op": (s1 - s0) / n * 1e6}
        log("publish-side %-32s n=%6d %8.0f op/s client=%5.1fus server=%5.2fus", key, n,
            out[key]["ops_per_s"], out[key]["client_cpu_us_per_op"], out[key]["server_cpu_us_per_op"])
    r.connection_pool.release(conn)
    return out


def measure_fanout(args, r, spid, mode, conns, batch=10, publishers=1, coalesce=1):
    """1 (or M) publishers -> ``conns`` subscribed connections in one other process.

    ``coalesce``: room messages carried by one Redis message (what a source's node could do
    with the messages of one TCP read)."""
    r.delete("f:ready", "f:st", "f:seq", "f:lease")
    r.set("f:lease", "tok")
    count = max(1000, min(args.fan_count * coalesce, args.fan_deliveries * min(coalesce, 10) // max(conns, 1)))
    count = max(100, count // publishers)
    channels = ",".join("f:ch%d" % j for j in range(publishers))
    sub = spawn_sub(args, mode, conns, count * publishers, "f:st" if mode == "stream" else channels, "f:ready",
                    sample=max(1, count * publishers // 2000))
    try:
        wait_ready(r, "f:ready", conns)
        gevent.sleep(0.05)
        xadd, pub = r.register_script(LUA_XADD), r.register_script(LUA_PUB)
        c0, s0, t0 = cpu_s(os.getpid()), cpu_s(spid), time.perf_counter()
        deadline = time.monotonic() + args.seconds

        def publisher(j):
            if mode == "lowlevel":                   # plain PUBLISH through redis-py's Connection
                conn, chan, seq = client(args).connection_pool.get_connection(), b"f:ch%d" % j, 0
                i = 0
                while i < count and time.monotonic() < deadline:
                    cmds = []
                    while len(cmds) < batch and i < count:
                        n = min(coalesce, count - i)
                        seq += 1
                        cmds.append(resp(b"PUBLISH", chan, b"%d:" % seq + b"".join(stamp(i + q) for q in range(n))))
                        i += n
                    conn.send_packed_command([b"".join(cmds)])
                    for _ in cmds:
                        conn.read_response()
                return i
            if mode in ("raw", "rawpy"):            # the proposed hot path: plain PUBLISH, no Lua
                conn, chan, seq = RawConn(args), b"f:ch%d" % j, 0
                i = 0
                while i < count and time.monotonic() < deadline:
                    cmds, k = [], 0
                    while k < batch and i < count:
                        n = min(coalesce, count - i)
                        seq += 1
                        cmds.append(resp(b"PUBLISH", chan, b"%d:" % seq + b"".join(stamp(i + q) for q in range(n))))
                        i += n
                        k += 1
                    conn.send(b"".join(cmds), len(cmds))
                conn.sock.close()
                return i
            conn = client(args)
            i = 0
            while i < count and time.monotonic() < deadline:
                p = conn.pipeline(transaction=False)
                for _ in range(min(batch, (count - i + coalesce - 1) // coalesce)):
                    n = min(coalesce, count - i)
                    data = b"".join(stamp(i + q) for q in range(n))
                    if mode == "stream":
                        xadd(keys=["f:lease", "f:seq", "f:st"], args=["tok", data, args.maxlen], client=p)
                    else:
                        pub(keys=["f:lease", "f:seq", "f:ch%d" % j], args=["tok", data], client=p)
                    i += n
                p.execute()
            return i

        pubs = [gevent.spawn(publisher, j) for j in range(publishers)]
        gevent.joinall(pubs)
        sent = sum(g.value or 0 for g in pubs)
        line = sub.stdout.readline()          # blocks this greenlet only (patched subprocess)
        t1, c1, s1 = time.perf_counter(), cpu_s(os.getpid()), cpu_s(spid)
        res = json.loads(line)
    finally:
        sub.wait(timeout=args.seconds + 10)
    deliveries = res["received"]
    sub_cpu = res["cpu_s"]
    out = {"mode": mode, "subscriber_conns": conns, "publishers": publishers, "pipeline": batch,
           "coalesce": coalesce,
           "sent": sent, "expected_deliveries": sent * conns if publishers == 1 else sent,
           "deliveries": deliveries, "out_of_order": res["out_of_order"],
           "elapsed_s": t1 - t0, "deliveries_per_s": deliveries / (t1 - t0),
           "publisher_cpu_us_per_msg": (c1 - c0) / sent * 1e6,
           "subscriber_cpu_us_per_delivery": sub_cpu / max(deliveries, 1) * 1e6,
           "server_cpu_us_per_msg": (s1 - s0) / sent * 1e6,
           "server_cpu_us_per_delivery": (s1 - s0) / max(deliveries, 1) * 1e6,
           "lat_p50_us": pct(res["lat_us"], 50), "lat_p99_us": pct(res["lat_us"], 99)}
    log("fan %-6s K=%3d M=%3d pipe=%3d coalesce=%3d sent=%6d deliv=%7d/%7d ooo=%d %8.0f deliv/s pub=%5.1fus/msg "
        "sub=%5.1fus/deliv server=%5.2fus/msg %5.2fus/deliv p50=%s p99=%s", mode, conns, publishers, batch, coalesce,
        sent, deliveries, out["expected_deliveries"], out["out_of_order"], out["deliveries_per_s"],
        out["publisher_cpu_us_per_msg"], out["subscriber_cpu_us_per_delivery"], out["server_cpu_us_per_msg"],
        out["server_cpu_us_per_delivery"], fmt_us(out["lat_p50_us"]), fmt_us(out["lat_p99_us"]))
    return out


def measure_latency(args, r, spid, mode, conns):
    """Paced: one message every pace_ms, not pipelined; one-way latency at the subscriber."""
    r.delete("l:ready", "l:st", "l:seq", "l:lease")
    r.set("l:lease", "tok")
    count = min(args.lat_count, int(args.seconds * 1000 / args.pace_ms))
    sub = spawn_sub(args, mode, conns, count, "l:st" if mode == "stream" else "l:ch", "l:ready")
    try:
        wait_ready(r, "l:ready", conns)
        gevent.sleep(0.05)
        pub, xadd = r.register_script(LUA_PUB), r.register_script(LUA_XADD)
        raw = RawConn(args) if mode in ("raw", "rawpy", "lowlevel") else None
        pub_lat = []
        for i in range(count):
            t = time.perf_counter()
            if raw is not None:
                raw.send(resp(b"PUBLISH", b"l:ch", b"%d:%s" % (i + 1, stamp(i))), 1)
            elif mode == "stream":
                xadd(keys=["l:lease", "l:seq", "l:st"], args=["tok", stamp(i), args.maxlen])
            else:
                pub(keys=["l:lease", "l:seq", "l:ch"], args=["tok", stamp(i)])
            pub_lat.append(time.perf_counter() - t)
            gevent.sleep(args.pace_ms / 1000.0)
        res = json.loads(sub.stdout.readline())
    finally:
        sub.wait(timeout=args.seconds + 10)
    out = {"mode": mode, "subscriber_conns": conns, "pace_ms": args.pace_ms, "sent": count,
           "deliveries": res["received"], "out_of_order": res["out_of_order"],
           "publish_call_p50_us": pct(pub_lat, 50) * 1e6, "publish_call_p99_us": pct(pub_lat, 99) * 1e6,
           "one_way_p50_us": pct(res["lat_us"], 50), "one_way_p99_us": pct(res["lat_us"], 99)}
    log("latency %-6s K=%3d sent=%d deliv=%d ooo=%d publish-call p50=%.0fus one-way p50=%s p99=%s", mode, conns,
        count, out["deliveries"], out["out_of_order"], out["publish_call_p50_us"],
        fmt_us(out["one_way_p50_us"]), fmt_us(out["one_way_p99_us"]))
    return out


def fmt_us(v):
    return "-" if v is None else "%.0fus" % v


def log(fmt, *a):
    print(fmt % a, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, help="redis-server port on 127.0.0.1")
    ap.add_argument("--compat", action="store_true",
                    help="only check that this redis-py works under gevent monkey-patching (any CPython 3.6+)")
    ap.add_argument("--report", nargs="+", metavar="JSON",
                    help="print Markdown tables and the capacity estimate from result files; run nothing")
    ap.add_argument("--server-pid", type=int, help="redis-server pid (default: INFO process_id)")
    ap.add_argument("--parser", choices=("auto", "python"), default="auto",
                    help="auto: hiredis if installed; python: redis-py's pure-Python parser")
    ap.add_argument("--seconds", type=float, default=8.0, help="deadline of each loop")
    ap.add_argument("--rtt-count", type=int, default=5000)
    ap.add_argument("--pub-count", type=int, default=40000)
    ap.add_argument("--fan-count", type=int, default=20000, help="messages per fan-out run (at most)")
    ap.add_argument("--fan-deliveries", type=int, default=200000, help="deliveries per fan-out run (at most)")
    ap.add_argument("--lat-count", type=int, default=1500)
    ap.add_argument("--pace-ms", type=float, default=2.0)
    ap.add_argument("--maxlen", type=int, default=1000, help="stream MAXLEN ~ (replay / gap recovery window)")
    ap.add_argument("--xcount", type=int, default=100, help="XREAD COUNT")
    ap.add_argument("--only", default="rtt,publish,fanout,fanin,latency")
    ap.add_argument("--out", help="JSON file (default bench/results/redis-primitives-<date>[-python].json)")
    # subscriber process
    ap.add_argument("--role", default="main", choices=("main", "sub"))
    ap.add_argument("--mode", default="pubsub")
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--channels", default="")
    ap.add_argument("--ready-key", default="")
    ap.add_argument("--sample", type=int, default=1)
    args = ap.parse_args()
    if args.report:
        sys.stdout.write(report(args.report))
        return 0
    if args.port is None:
        ap.error("--port is required (a redis-server you started on 127.0.0.1)")
    if args.compat:
        return compat(args)
    if args.role == "sub":
        return run_sub(args)

    r = client(args)
    info = r.info("server")
    spid = args.server_pid or int(info["process_id"])
    only = set(args.only.split(","))
    from redis.utils import HIREDIS_AVAILABLE
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
              "redis_py": redis.__version__, "gevent": gevent.__version__, "redis_server": info["redis_version"],
              "parser": "hiredis" if HIREDIS_AVAILABLE and args.parser == "auto" else "python",
              "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "payload_bytes": PAYLOAD,
              "args": {k: v for k, v in vars(args).items() if k not in ("role", "mode", "conns", "count",
                                                                        "channels", "ready_key", "sample")}}
    log("redis %s, redis-py %s, parser %s, python %s", info["redis_version"], redis.__version__,
        result["parser"], result["python"])
    if "rtt" in only:
        result["rtt"] = measure_rtt(args, r, spid)
    if "publish" in only:
        result["publish_side"] = measure_publish_side(args, r, spid)
    try:
        import hiredis  # noqa: F401
        skip = ()
    except ImportError:
        skip = ("raw",)
        log("hiredis not installed: the 'raw' reader is left out")
    if "fanout" in only:
        runs = [dict(mode=mode, conns=k) for mode in ("pubsub", "lowlevel", "raw", "rawpy", "stream")
                for k in (1, 10, 100)]
        runs += [dict(mode="pubsub", conns=10, batch=1), dict(mode="pubsub", conns=10, batch=100),
                 dict(mode="raw", conns=10, coalesce=10), dict(mode="raw", conns=10, coalesce=100),
                 dict(mode="rawpy", conns=10, coalesce=10), dict(mode="lowlevel", conns=10, coalesce=10),
                 dict(mode="raw", conns=100, coalesce=10),
                 dict(mode="stream", conns=10, coalesce=10)]
        result["fanout"] = [measure_fanout(args, r, spid, **run) for run in runs if run["mode"] not in skip]
    if "fanin" in only:
        result["fanin"] = [measure_fanout(args, r, spid, mode, 1, publishers=m)
                           for mode in ("pubsub", "raw", "rawpy") for m in (10, 100) if mode not in skip]
    if "latency" in only:
        result["latency"] = [measure_latency(args, r, spid, mode, k) for mode in ("pubsub", "lowlevel", "raw", "rawpy",
                                                                                  "stream") for k in (1, 10) if mode not in skip]
    result["loadavg_after"] = os.getloadavg()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   "redis-primitives-%s%s.json" % (time.strftime("%Y-%m-%d", time.gmtime()),
                                                                   "-python-parser" if result["parser"] == "python"
                                                                   else ""))
    with open(out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    log("wrote %s", out)


# -- compatibility check: runs on any CPython 3.6+ with any redis-py 4.3+ -----------------------------
def compat(args):
    """Does this redis-py work under gevent monkey-patching? Prints one line; exit status 0 if yes.

    Two greenlets block in BLPOP on two connections while a third keeps ticking; a PubSub is
    read in a greenlet; a Lua script and XADD run. (How docs/redis-design.md's version table
    was made: one venv per CPython with that Python's gevent pin and ``pip install redis``.)"""
    port = args.port
    r = redis.Redis(host="127.0.0.1", port=port)
    r.delete("compat:q")

    def blocker():
        return redis.Redis(host="127.0.0.1", port=port).blpop("compat:q", timeout=5)

    blocked = [gevent.spawn(blocker) for _ in range(2)]
    gevent.sleep(0.2)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(10)])
    ticker.join(timeout=5)
    r.rpush("compat:q", "a", "b")
    gevent.joinall(blocked, timeout=5)
    ok_block = all(g.value for g in blocked) and len(ticks) == 10
    p = r.pubsub()
    p.subscribe("compat:ch")
    got = []

    def listen():
        for m in p.listen():
            if m["type"] == "message":
                got.append(m["data"])
                if len(got) == 3:
                    return

    listener = gevent.spawn(listen)
    gevent.sleep(0.1)
    for i in range(3):
        r.publish("compat:ch", str(i))
    listener.join(timeout=5)
    ok_pubsub = got == [b"0", b"1", b"2"]
    ok_lua = isinstance(r.register_script("return redis.call('INCR', KEYS[1])")(keys=["compat:n"]), int)
    ok_xadd = bool(r.xadd("compat:st", {"d": "x"}, maxlen=10))
    r.delete("compat:q", "compat:n", "compat:st")
    print("python %s redis-py %s gevent %s blocking-ok %s pubsub-ok %s lua-ok %s xadd-ok %s" % (
        platform.python_version(), redis.__version__, gevent.__version__, ok_block, ok_pubsub, ok_lua, ok_xadd))
    return 0 if ok_block and ok_pubsub and ok_lua and ok_xadd else 1


# -- report: tables and the capacity estimate from one or more result files ---------------------
def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0


def _cell(values, fmt="%.1f"):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1 or min(values) == max(values):
        return fmt % values[0]
    return (fmt + " (" + fmt + "–" + fmt + ")") % (_median(values), min(values), max(values))


def _fan_key(row):
    return (row["mode"], row["subscriber_conns"], row["publishers"], row["pipeline"], row.get("coalesce", 1))


MODE_NAMES = {"pubsub": "redis-py PubSub.get_message, Lua publish", "lowlevel": "redis-py Connection.read_response",
              "raw": "bare socket + hiredis.Reader", "rawpy": "bare socket + pure-Python RESP parser",
              "stream": "XADD (Lua, id = seq) + XREAD BLOCK (redis-py)"}

#: the capacity scenarios: (name, rooms, subscribers per room, messages/s per room, subscribed nodes per room
#: besides the source's node)
SCENARIOS = (
    ("1 room × 100,000 subscribers, 1,000 msg/s", 1, 100000, 1000, 10),
    ("1,000 rooms × 100 subscribers, 10 msg/s, any node", 1000, 100, 10, 10),
    ("1,000 rooms × 100 subscribers, 10 msg/s, room affinity", 1000, 100, 10, 1),
    ("10,000 rooms × 10 subscribers, 10 msg/s, any node", 10000, 10, 10, 10 * (1 - 0.9 ** 10)),
    ("10,000 rooms × 10 subscribers, 10 msg/s, room affinity", 10000, 10, 10, 1),
    ("10,000 rooms × 10 subscribers, 100 msg/s, any node", 10000, 10, 100, 10 * (1 - 0.9 ** 10)),
)


def report(paths):
    runs = [json.load(open(p)) for p in paths]
    out = ["<!-- generated by: python bench/redis_primitives.py --report %s -->" % " ".join(
        os.path.relpath(p) for p in paths), ""]
    r0 = runs[0]
    out.append("redis-server %s, redis-py %s (%s parser), gevent %s, CPython %s, %d CPUs; %d run(s): %s. "
               "Cells: median (min–max) over the runs. Load average before each run: %s." % (
                   r0["redis_server"], r0["redis_py"], r0["parser"], r0["gevent"], r0["python"], r0["cpus"],
                   len(runs), ", ".join(r["date"] for r in runs),
                   ", ".join("%.1f" % r["loadavg_before"][0] for r in runs)))
    out += ["", "**Round trips** (one command at a time; µs)", "",
            "| command | p50 | p99 | client CPU/op | redis-server CPU/op |", "|---|---|---|---|---|"]
    for name in r0.get("rtt", {}):
        rows = [r["rtt"][name] for r in runs if name in r.get("rtt", {})]
        out.append("| %s | %s | %s | %s | %s |" % (name, _cell([x["p50_us"] for x in rows], "%.0f"),
                                                   _cell([x["p99_us"] for x in rows], "%.0f"),
                                                   _cell([x["client_cpu_us_per_op"] for x in rows]),
                                                   _cell([x["server_cpu_us_per_op"] for x in rows])))
    out += ["", "**Publish side**, no subscriber: CPU µs per command, pipelines of 1 / 10 / 100 commands", "",
            "| command | client ×1 | client ×10 | client ×100 | server ×1 | server ×10 | server ×100 |",
            "|---|---|---|---|---|---|---|"]
    names = []
    for key, row in r0.get("publish_side", {}).items():
        if row["command"] not in names:
            names.append(row["command"])
    for name in names:
        cells = []
        for side in ("client_cpu_us_per_op", "server_cpu_us_per_op"):
            for batch in (1, 10, 100):
                key = "%s x%d" % (name, batch)
                cells.append(_cell([r["publish_side"][key][side] for r in runs if key in r.get("publish_side", {})]))
        out.append("| %s | %s |" % (name, " | ".join(cells)))
    out += ["", "**Fan-out / fan-in**: K subscribed connections (≈ nodes) in one process, M publishing "
            "connections; pipeline = commands per round trip; coalesce = room messages per Redis message. "
            "Per-delivery CPU counts room messages × connections; 'gaps' = deliveries whose sequence number "
            "was not the next one (a node would close 4408).", "",
            "| reader | K | M | pipeline | coalesce | deliveries/s | publisher µs/msg | subscriber µs/delivery | "
            "redis-server µs/msg | redis-server µs/delivery | delivered | gaps | p50 ms (loaded) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = []
    for section in ("fanout", "fanin"):
        for row in r0.get(section, []):
            keys.append((section, _fan_key(row)))
    for section, key in keys:
        rows = [x for r in runs for x in r.get(section, []) if _fan_key(x) == key]
        out.append("| %s | %d | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            key[0], key[1], key[2], key[3], key[4], _cell([x["deliveries_per_s"] for x in rows], "%.0f"),
            _cell([x["publisher_cpu_us_per_msg"] for x in rows]),
            _cell([x["subscriber_cpu_us_per_delivery"] for x in rows]),
            _cell([x["server_cpu_us_per_msg"] for x in rows]), _cell([x["server_cpu_us_per_delivery"] for x in rows], "%.2f"),
            "/".join("%d%%" % round(100.0 * x["deliveries"] / max(1, x["expected_deliveries"])) for x in rows),
            "/".join(str(x["out_of_order"]) for x in rows),
            _cell([x["lat_p50_us"] / 1000.0 if x["lat_p50_us"] else None for x in rows], "%.1f")))
    out += ["", "Readers: " + "; ".join("`%s`: %s" % kv for kv in MODE_NAMES.items()) + ".", "",
            "**Latency**, paced: one message every %s ms, not pipelined (µs)" % r0["args"]["pace_ms"], "",
            "| reader | K | publish call p50 | one-way p50 | one-way p99 | delivered | gaps |", "|---|---|---|---|---|---|---|"]
    for row in r0.get("latency", []):
        rows = [x for r in runs for x in r.get("latency", [])
                if (x["mode"], x["subscriber_conns"]) == (row["mode"], row["subscriber_conns"])]
        out.append("| %s | %d | %s | %s | %s | %s | %s |" % (
            row["mode"], row["subscriber_conns"], _cell([x["publish_call_p50_us"] for x in rows], "%.0f"),
            _cell([x["one_way_p50_us"] for x in rows], "%.0f"), _cell([x["one_way_p99_us"] for x in rows], "%.0f"),
            "/".join("%d" % x["deliveries"] for x in rows), "/".join(str(x["out_of_order"]) for x in rows)))
    out += ["", capacity(runs)]
    return "\n".join(out) + "\n"


def _pick(runs, section, key, field):
    vals = []
    for r in runs:
        data = r.get(section, {})
        if isinstance(data, dict):
            if key in data:
                vals.append(data[key][field])
        else:
            vals += [x[field] for x in data if _fan_key(x) == key]
    return _median(vals)


def capacity(runs):
    """Redis CPU for 10 nodes / 100,000 subscribers, from the measured per-operation costs."""
    pub0 = _pick(runs, "publish_side", "raw PUBLISH (pre-encoded RESP, bare socket) x10", "server_cpu_us_per_op")
    k10 = _pick(runs, "fanout", ("raw", 10, 1, 10, 1), "server_cpu_us_per_msg")
    k100 = _pick(runs, "fanout", ("raw", 100, 1, 10, 1), "server_cpu_us_per_msg")
    per_node = (k100 - k10) / 90.0
    xadd = _pick(runs, "publish_side", "XADD MAXLEN~1000 x10", "server_cpu_us_per_op")
    lua = _pick(runs, "publish_side", "Lua seq+PUBLISH x10", "server_cpu_us_per_op")
    setnx = _pick(runs, "publish_side", "SET NX PX x10", "server_cpu_us_per_op")
    recv = _pick(runs, "fanout", ("rawpy", 100, 1, 10, 1), "subscriber_cpu_us_per_delivery")
    recv_c = _pick(runs, "fanout", ("rawpy", 10, 1, 10, 10), "subscriber_cpu_us_per_delivery")
    send = _pick(runs, "publish_side", "raw PUBLISH (pre-encoded RESP, bare socket) x10", "client_cpu_us_per_op")
    lines = ["**Capacity estimate: 10 nodes, 100,000 subscribers, one Redis** (from the medians above)", "",
             "Per-operation costs used: PUBLISH (pipelined ×10, no receiver) %.2f µs; each subscribed node adds "
             "%.2f µs per message (raw K=10 → K=100 slope); XADD MAXLEN~ ×10 %.2f µs (replay rooms only); "
             "a control Lua call (×10) %.1f µs; SET NX PX (×10) %.1f µs. Node side: receiving one Redis "
             "message %.1f µs (pure-Python parser, includes the bench's own per-message check), %.1f µs per "
             "room message when 10 are coalesced; sending one PUBLISH %.1f µs." % (
                 pub0, per_node, xadd, lua, setnx, recv, recv_c, send), "",
             "Redis CPU/s = Σ rooms × rate × (PUBLISH + subscribed remote nodes × per-node); a room whose "
             "subscribers are all on its source's node costs Redis nothing per message. Control plane: lease "
             "refresh (one pipelined Lua per room every lease/3 = 1.67 s), heartbeats (10 nodes, 1/s), and "
             "joins (one admission Lua each).", "",
             "| scenario | Redis msgs/s | remote nodes/room | Redis deliveries/s | Redis CPU (% of a core) | "
             "+ lease refresh | mass rejoin of all 100,000 (Redis CPU s) | node receive CPU (% of a core) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rooms, subs, rate, nodes in SCENARIOS:
        msgs = rooms * rate
        cpu = msgs * (pub0 + nodes * per_node) / 1e6
        lease = rooms / (5.0 / 3) * lua / 1e6
        rejoin = rooms * subs * lua / 1e6
        node_recv = msgs * nodes / 10.0 * recv / 1e6
        lines.append("| %s | %s | %.1f | %s | %.0f %% | %.1f %% | %.1f | %.0f %% |" % (
            name, "{:,.0f}".format(msgs), nodes, "{:,.0f}".format(msgs * nodes), 100 * cpu, 100 * lease, rejoin,
            100 * node_recv))
    limit = 0.5e6
    lines += ["", "Shard by room when the sum above passes about half a core (Redis is single-threaded; "
              "headroom for bursts, rejoins and persistence): at %.2f + n × %.2f µs per message that is "
              "%s room-messages/s with 10 subscribed nodes each, %s with 1." % (
                  pub0, per_node, "{:,.0f}".format(limit / (pub0 + 10 * per_node)),
                  "{:,.0f}".format(limit / (pub0 + per_node)))]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
