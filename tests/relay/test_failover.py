"""Redis behind Sentinel, and fencing (issue 22): real ``redis-server`` (a primary and a replica)
and three real ``redis-sentinel`` processes (tests/sentinelkit.py), real Sphincter nodes given
``--redis-sentinels``, real sockets and WebSocket clients.

The primary is SIGKILLed while a source feeds a room under load: the sentinels promote the
replica, the nodes find it by themselves and carry on; every subscriber saw its messages in
order, each once, or a gapless prefix and then 4408 (never a silent gap); after it, a new
subscriber continues; new rooms open; /healthz is ok again.
"""
import signal
import time

import gevent
import gevent.event
import pytest

from conftest import unit
from rediskit import cluster  # noqa: F401  (the fixture)
from sentinelkit import sentinel_cluster  # noqa: F401  (the fixture)
from test_cluster import Reader, assert_no_gap, get_json, http, numbered, source, wait_for

pytestmark = pytest.mark.timeout(120)

LEASE = "3"


def pump(cluster, src, sent, stop, limit=40000, step=10, pause=0.01):
    """Feed ``src`` numbered lines (~1000/s) until ``stop``; ``sent[0]``: lines sent so far."""
    def run():
        while not stop.is_set() and sent[0] < limit:
            try:
                src.send(numbered(sent[0], sent[0] + step))
            except OSError:
                return
            sent[0] += step
            gevent.sleep(pause)
    feeder = gevent.spawn(run)
    cluster.on_teardown(feeder.kill)
    return feeder


def resubscribed(cluster, node, code, count, attempts=5):
    """A subscriber that got ``count`` messages: one that joins while its node is still settling
    after a failover may be told 4408 (a batch it could not check was lost); it subscribes again,
    as a browser does."""
    for _ in range(attempts):
        reader = Reader(cluster, node, code)
        wait_for(lambda: len(reader.got) >= count or reader.closed.is_set(), timeout=unit(15),
                 what="%d messages on %s" % (count, node.name))
        if len(reader.got) >= count:
            return reader
        assert reader.close == (4408, "missed messages"), reader.close
        assert_no_gap_from(reader)
    pytest.fail("%s: no subscriber got %d messages in %d attempts" % (node.name, count, attempts))


def assert_no_gap_from(reader):
    nums = reader.numbers()
    if nums:
        assert nums == list(range(nums[0], nums[0] + len(nums))), "gap on %s" % reader.node.name


def healthy(node):
    status, body = http(node, "/healthz")
    return status == 200 and b'"redis": "ok"' in body.replace(b'":"', b'": "')


def test_failover_under_load_never_shows_a_gap(sentinel_cluster):
    redis = sentinel_cluster.redis
    survive_failover_under_load(sentinel_cluster, "failover",
                                lambda code: redis.wait_failover(redis.kill_primary()))


def survive_failover_under_load(cluster, what, fail):
    """Two nodes, a room fed ~1000 lines/s, three readers; ``fail(code)`` kills the primary that
    holds the room and returns the promoted one. Every reader then got every message in order, or
    a gapless prefix and 4408; the source's own node never misses; a room opened after the
    failover crosses the nodes; a late joiner sees no gap. (Sentinel here; a Cluster's shard in
    test_redis_cluster.py.)"""
    n1, n2 = cluster.nodes(2, "--redis-lease", LEASE)
    src, code, _ = source(cluster, n1)
    readers = [Reader(cluster, node, code) for node in (n1, n2, n2)]
    sent, stop = [0], gevent.event.Event()
    feeder = pump(cluster, src, sent, stop)
    for r in readers:
        r.wait_count(200)
    killed = time.monotonic()
    new = fail(code)
    promoted = time.monotonic()
    for node in (n1, n2):
        wait_for(lambda: healthy(node), timeout=unit(15), what="%s: /healthz ok after the failover" % node.name)
    recovered = time.monotonic()
    print("%s: promoted %.2fs after the kill, nodes ok %.2fs after the kill (new primary :%d)"
          % (what, promoted - killed, recovered - killed, new.port))
    mark = sent[0]
    fresh = resubscribed(cluster, n2, code, 100)         # joins after the failover: what follows
    other, other_code, _ = source(cluster, n2)          # a new room opens
    on_n1 = Reader(cluster, n1, other_code)
    other.send(b"after the failover\n")
    on_n1.wait_for_message(b"after the failover")
    for r in readers:                                  # each is told or carries on past the mark
        wait_for(lambda: r.closed.is_set() or (r.got and int(r.got[-1]) >= mark), timeout=unit(15),
                 what="%s: past the failover" % r.node.name)
    stop.set()
    feeder.join(timeout=unit(5))
    src.close()
    total = sent[0]
    for r in readers:
        close = r.wait_close(timeout=15)
        print("%s: %d of %d messages, then %r" % (r.node.name, len(r.got), total, close))
        if close[0] == 4410:
            assert_no_gap(r, total)
        else:
            assert close == (4408, "missed messages"), (r.node.name, close)
            assert_no_gap(r)
    assert readers[0].close[0] == 4410, "the source's own node never misses: %r" % (readers[0].close,)
    assert fresh.wait_close()[0] == 4410
    nums = fresh.numbers()
    assert nums == list(range(nums[0], total)), "the late joiner saw a gap"
    for node in (n1, n2):
        assert "Traceback" not in node.log(), node.log_tail(40)
    assert http(n1, "/healthz")[0] == 200


def test_a_manual_failover_is_followed_and_the_old_primary_never_used(sentinel_cluster):
    """SENTINEL FAILOVER under load: the old primary lives on as a replica (where a PUBLISH would
    reach nobody); every node moves to the new primary, and every subscriber is whole or told."""
    cluster = sentinel_cluster
    n1, n2 = cluster.nodes(2, "--redis-lease", LEASE)
    src, code, _ = source(cluster, n1)
    readers = [Reader(cluster, node, code) for node in (n1, n2)]
    sent, stop = [0], gevent.event.Event()
    feeder = pump(cluster, src, sent, stop)
    for r in readers:
        r.wait_count(100)
    old = cluster.redis.primary()
    assert cluster.redis.sentinels[0].query("SENTINEL", "FAILOVER", "mymaster") == b"OK"
    new = cluster.redis.wait_failover(old)
    for node in (n1, n2):                         # within a heartbeat (--redis-lease / 3)
        wait_for(lambda: "is now 127.0.0.1:%d" % new.port in node.log(), timeout=unit(5),
                 what="%s moves to the new primary" % node.name)
    for node in (n1, n2):
        wait_for(lambda: healthy(node), timeout=unit(15), what="%s: /healthz ok after the failover" % node.name)
    mark = sent[0]
    for r in readers:
        wait_for(lambda: r.closed.is_set() or (r.got and int(r.got[-1]) >= mark + 100), timeout=unit(15),
                 what="%s: past the failover" % r.node.name)
    stop.set()
    feeder.join(timeout=unit(5))
    src.close()
    for r in readers:
        close = r.wait_close(timeout=15)
        if close[0] == 4410:
            assert_no_gap(r, sent[0])
        else:
            assert close == (4408, "missed messages"), (r.node.name, close)
            assert_no_gap(r)
    assert readers[0].close[0] == 4410


def test_a_failover_is_followed_when_the_sentinels_announce_it():
    """+switch-master: with a heartbeat of 10 s (--redis-lease 30), a SENTINEL FAILOVER that breaks
    no connection at first is followed within a couple of seconds of the promotion, from the
    sentinels' announcement, and the room carries on."""
    from sentinelkit import SentinelCluster
    cluster = SentinelCluster()
    try:
        n1 = cluster.node("--redis-lease", "30")
        src, code, _ = source(cluster, n1)
        reader = Reader(cluster, n1, code)
        src.send(numbered(0, 10))
        reader.wait_count(10)
        old = cluster.redis.primary()
        assert cluster.redis.sentinels[0].query("SENTINEL", "FAILOVER", "mymaster") == b"OK"
        new = cluster.redis.wait_failover(old)
        promoted = time.monotonic()
        wait_for(lambda: "is now 127.0.0.1:%d" % new.port in n1.log(), timeout=unit(4),
                 what="n1 moves to the new primary before its next heartbeat")
        print("followed %.2fs after the sentinels agreed" % (time.monotonic() - promoted))
        assert "+switch-master" in n1.log(), n1.log_tail(20)
        wait_for(lambda: healthy(n1), timeout=unit(4), what="n1: /healthz ok before its next heartbeat")
        print("whole again %.2fs after the sentinels agreed" % (time.monotonic() - promoted))
        src.send(numbered(10, 20))
        reader.wait_count(20)
        assert reader.numbers() == list(range(20))
    finally:
        cluster.close()


def test_after_a_failover_rooms_named_rooms_and_counts_are_rebuilt(sentinel_cluster, tmp_path):
    """What the new primary may lack (replication is asynchronous; here the nodes rebuild it in
    any case): the named room is live again with its source, the relay-wide subscriber count
    holds (--max-subscribers-per-room 2: a third is 4429), and rooms keep delivering."""
    cluster = sentinel_cluster
    path = tmp_path / "rooms.txt"
    path.write_text("scores score-token-456\n")
    n1, n2 = cluster.nodes(2, "--redis-lease", LEASE, "--rooms-file", str(path),
                           "--max-subscribers-per-room", "2")
    named, _, _ = source(cluster, n1, b"AUTH score-token-456\n")
    src, code, _ = source(cluster, n2)
    on_scores = Reader(cluster, n2, "scores")
    full = [Reader(cluster, n1, code), Reader(cluster, n2, code)]
    named.send(b"before\n")
    src.send(b"0\n")
    on_scores.wait_for_message(b"before")
    for r in full:
        r.wait_for_message(b"0")
    old = cluster.redis.kill_primary()
    cluster.redis.wait_failover(old)
    for node in (n1, n2):
        wait_for(lambda: healthy(node), timeout=unit(15), what="%s: /healthz ok after the failover" % node.name)
    for node in (n1, n2):
        wait_for(lambda: get_json(node, "/status?room=scores")[1].get("source") == "online",
                 timeout=unit(8), what="%s: scores online after the failover" % node.name)
    named.send(b"after\n")
    src.send(b"1\n")
    on_scores.wait_for_message(b"after")
    for r in full:
        r.wait_for_message(b"1")
    third = Reader(cluster, n1, code)
    assert third.wait_close()[0] == 4429, third.close
    assert on_scores.got == [b"before", b"after"]


# ---- fencing: a node whose lease lapsed never publishes as the room's owner -------------------

def test_a_stopped_node_never_publishes_as_owner_after_a_takeover(cluster):
    """SIGSTOP the source's node beyond its lease while its source keeps sending; the source
    resumes on another node; SIGCONT: what the stopped node read is never published (no
    subscriber sees it), its source is hung up, and every subscriber's sequence is whole."""
    n1, n2 = cluster.nodes(2, "--redis-lease", "1.5", "--room-grace", "30")
    src, code, extra = source(cluster, n1, expect=("RESUME",))
    remote, local = Reader(cluster, n2, code), Reader(cluster, n1, code)
    src.send(numbered(0, 100))
    remote.wait_count(100)
    local.wait_count(100)
    n1.signal(signal.SIGSTOP)
    try:
        src.send(b"".join(b"stale-%d\n" % i for i in range(50)))   # in n1's kernel buffer
        time.sleep(1.5 * 1.5)                                        # beyond n1's lease
        again, code2, _ = source(cluster, n2, b"RESUME %s %s\n" % (code.encode(), extra["RESUME"].encode()),
                                 expect=("RESUME",))
        assert code2 == code
        again.send(numbered(100, 200))
        remote.wait_count(200)
    finally:
        n1.signal(signal.SIGCONT)
    src.sock.settimeout(unit(10))
    assert src.line() == b"ERROR replaced by a newer source\n", n1.log_tail(20)
    assert src.eof()
    again.send(numbered(200, 300))
    remote.wait_count(300)
    assert remote.numbers() == list(range(300)), "n2: %r" % remote.got[95:110]
    # the stopped node's own subscriber: what it got is whole and in order, or it was told
    wait_for(lambda: local.closed.is_set() or len(local.got) >= 300, timeout=unit(10),
             what="n1's subscriber carries on or is told")
    assert not any(m.startswith(b"stale") for m in local.got), "n1 showed what it read while fenced"
    assert_no_gap(local)
    if local.closed.is_set():
        assert local.close[0] == 4408, local.close
    log = n1.log()
    assert "leases not renewed" in log, n1.log_tail(30)
    assert "Traceback" not in log, n1.log_tail(30)


def test_a_node_cut_off_beyond_its_lease_pauses_its_source_then_carries_on(cluster):
    """Redis unreachable for longer than the lease, nobody takes the room: the source is not
    read meanwhile (TCP backpressure), nothing is lost, and it carries on once Redis is back."""
    n1, n2 = cluster.nodes(2, "--redis-lease", "1", "--room-grace", "30")
    src, code, _ = source(cluster, n1, expect=("RESUME",))
    local = Reader(cluster, n1, code)
    src.send(numbered(0, 10))
    local.wait_count(10)
    cluster.redis.stop()
    wait_for(lambda: "leases not renewed" in n1.log(), timeout=unit(5), what="n1 pauses its source")
    src.send(numbered(10, 20))                    # read only once Redis confirms the room
    time.sleep(0.5)
    assert len(local.got) == 10, "n1 published while its lease had lapsed: %r" % local.got[10:]
    cluster.redis.restart()
    local.wait_count(20, timeout=15)
    assert local.numbers() == list(range(20))
    wait_for(lambda: healthy(n2), timeout=unit(10), what="n2 back on Redis")
    remote = Reader(cluster, n2, code)
    src.send(numbered(20, 30))
    wait_for(lambda: remote.got and remote.got[-1] == b"29", timeout=unit(10), what="n2 gets 29")
    nums = remote.numbers()           # from where it joined (a batch resent after the restart may
    assert nums == list(range(nums[0], 30)) and nums[0] <= 20, nums   # come first), in order
    assert "leases renewed" in n1.log(), n1.log_tail(30)


def test_a_stopped_node_nobody_replaced_takes_its_room_back(cluster):
    """SIGSTOP the source's node beyond its lease, nobody resumes the room elsewhere: its room
    goes waiting on the other node; SIGCONT: the node takes the room back (same epoch: no other
    source came) and its source carries on, every line in order on the other node."""
    n1, n2 = cluster.nodes(2, "--redis-lease", "1", "--room-grace", "30")
    src, code, _ = source(cluster, n1, expect=("RESUME",))
    remote = Reader(cluster, n2, code)
    src.send(numbered(0, 50))
    remote.wait_count(50)
    n1.signal(signal.SIGSTOP)
    try:
        src.send(numbered(50, 100))                     # in n1's kernel buffer
        wait_for(lambda: get_json(n2, "/status?room=" + code)[1].get("source") == "offline",
                 timeout=unit(8), what="n2 sees the room waiting")
    finally:
        n1.signal(signal.SIGCONT)
    wait_for(lambda: get_json(n2, "/status?room=" + code)[1].get("source") == "online",
             timeout=unit(8), what="n2 sees the room live again")
    src.send(numbered(100, 150))
    remote.wait_count(150)
    assert remote.numbers() == list(range(150))
    assert not remote.closed.is_set()
    src.sock.settimeout(0.2)
    with pytest.raises(OSError):                        # nothing from the relay: not hung up
        src.sock.recv(100)


def test_sentinels_with_a_password(tmp_path):
    """--redis-sentinel-password: sentinels with requirepass answer a node that has it; a node
    without it never finds the primary and says why in one line."""
    from sentinelkit import SentinelCluster
    cluster = SentinelCluster(sentinel_password="sentinel-secret-1")
    try:
        good = cluster.node("--redis-sentinel-password", "sentinel-secret-1")
        wait_for(lambda: healthy(good), timeout=unit(10), what="the node with the password is up")
        bad = cluster.node()
        time.sleep(1)
        assert http(bad, "/healthz")[0] == 503
        line = next(l for l in bad.log().splitlines() if "no sentinel names primary" in l)
        assert "NOAUTH" in line or "Authentication" in line or "AUTH" in line, line
    finally:
        cluster.close()
