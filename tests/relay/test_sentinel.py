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


def healthy(node):
    status, body = http(node, "/healthz")
    return status == 200 and b'"redis": "ok"' in body.replace(b'":"', b'": "')


def test_failover_under_load_never_shows_a_gap(sentinel_cluster):
    cluster = sentinel_cluster
    n1, n2 = cluster.nodes(2, "--redis-lease", LEASE)
    src, code, _ = source(cluster, n1)
    readers = [Reader(cluster, node, code) for node in (n1, n2, n2)]
    sent, stop = [0], gevent.event.Event()
    feeder = pump(cluster, src, sent, stop)
    for r in readers:
        r.wait_count(200)
    old = cluster.redis.kill_primary()
    killed = time.monotonic()
    new = cluster.redis.wait_failover(old)
    promoted = time.monotonic()
    for node in (n1, n2):
        wait_for(lambda: healthy(node), timeout=unit(15), what="%s: /healthz ok after the failover" % node.name)
    recovered = time.monotonic()
    print("failover: promoted %.2fs after the kill, nodes ok %.2fs after the kill (new primary :%d)"
          % (promoted - killed, recovered - killed, new.port))
    mark = sent[0]
    fresh = Reader(cluster, n2, code)                   # joins after the failover: what follows
    fresh.wait_count(100, timeout=15)
    other, other_code, _ = source(cluster, n2)          # a new room opens, on the new primary
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
