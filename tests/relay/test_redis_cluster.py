"""Redis Cluster (issue 22): a real Cluster of six ``redis-server`` processes (3 primaries, 3
replicas, ``redis-cli --cluster create``: tests/clusterkit.py), real Sphincter nodes each given
another Cluster node as ``--redis-url``, real sockets and WebSocket clients.

The Cluster is detected; rooms spread over the shards, each room's keys and channels on one slot
(sharded pub/sub); messages cross nodes in order; relay-wide counts (``--max-rooms``,
``--max-subscribers-per-room``, the room listing) hold over the shards; and a shard's primary
SIGKILLed under load is survived as a Sentinel failover: every subscriber saw every message in
order, or a gapless prefix then 4408, never a silent gap. The Cluster is shared by every test
that asks for it (tests/conftest.py; it takes ~10 s to create); each test has its own ``--redis-prefix``.
"""
import pytest

from conftest import unit
from clusterkit import slot_of  # (the redis_cluster fixture: tests/conftest.py)
from test_cluster import ADMIN, Reader, assert_no_gap, close_of, get_json, numbered, source, wait_for
from test_failover import survive_failover_under_load

pytestmark = pytest.mark.timeout(90)


def room_slot(cluster, code):
    from sphincter_lib.proto.redis_keys import Keys
    return slot_of(Keys(cluster.prefix, cluster=True).room(code.upper())[1])


def test_rooms_spread_over_the_shards_and_fan_out_across_nodes(redis_cluster):
    cluster = redis_cluster
    nodes = cluster.nodes(3)
    for node in nodes:
        assert "redis cluster: 3 shard(s)" in node.log(), node.log_tail(20)
    rooms = []
    for i in range(6):
        src, code, _ = source(cluster, nodes[i % 3])
        rooms.append((src, code, [Reader(cluster, nodes[(i + 1) % 3], code), Reader(cluster, nodes[(i + 2) % 3], code)]))
    shards = {cluster.redis.primary_of(room_slot(cluster, code)).port for _, code, _ in rooms}
    for src, code, readers in rooms:
        src.send(numbered(0, 200))
    for src, code, readers in rooms:
        for r in readers:
            r.wait_count(200)
            assert_no_gap(r, 200)
    print("6 rooms on %d shard(s)" % len(shards))
    # a room's keys are on one slot, of the shard its bucket hashes to (no cross-slot command ran)
    _, code, _ = rooms[0]
    primary = cluster.redis.primary_of(room_slot(cluster, code))
    from clusterkit import _raw
    found = _raw(primary.port, "KEYS", "%s:*%s" % (cluster.prefix, code.upper()))
    assert found and all(slot_of(k) == room_slot(cluster, code) for k in found), found
    for node in nodes:
        assert "Traceback" not in node.log(), node.log_tail(30)


def test_relay_wide_counts_and_named_rooms_over_the_shards(redis_cluster, tmp_path):
    cluster = redis_cluster
    path = tmp_path / "rooms.txt"
    path.write_text("scores score-token-456\n")
    n1, n2, n3 = cluster.nodes(3, "--max-rooms", "3", "--max-subscribers-per-room", "2",
                               "--admin-token", ADMIN, "--rooms-file", str(path))
    named, _, _ = source(cluster, n1, b"AUTH score-token-456\n")
    on_scores = Reader(cluster, n2, "scores")
    named.send(b"goal\n")
    on_scores.wait_for_message(b"goal")
    opened = [source(cluster, node) for node in (n1, n2, n3)]   # on 3 nodes, in 1 to 3 buckets
    codes = [code for _, code, _ in opened]
    from test_lifecycle import Src
    late = Src(n3.tcp, b"\n")                    # (named rooms do not count)
    cluster.on_teardown(late.close)
    assert late.line() == b"ERROR too many rooms\n"
    full = [Reader(cluster, n1, codes[0]), Reader(cluster, n2, codes[0])]
    assert close_of(cluster, n3, "room=" + codes[0]) == (4429, "room full")
    auth = {"Authorization": "Bearer " + ADMIN}
    wait_for(lambda: {r["code"] for r in get_json(n3, "/api/rooms", headers=auth)[1]["rooms"]} >= set(codes),
             timeout=unit(5), what="every room listed by n3")
    listed = {r["code"]: r for r in get_json(n3, "/api/rooms", headers=auth)[1]["rooms"]}
    assert listed[codes[0]]["relay_subscribers"] == 2, listed[codes[0]]
    assert listed[codes[1]]["source_node"] == "n2", listed[codes[1]]
    assert len(full) == 2 and not any(r.closed.is_set() for r in full)


@pytest.mark.parametrize("case", [
    "test_write_back_from_writers_on_other_nodes",
    "test_replay_for_a_late_joiner_on_another_node",
    "test_resume_on_another_node_within_the_grace_keeps_every_subscriber",
    "test_sigkill_of_the_owning_node_ends_its_rooms_elsewhere_within_the_lease",
])
def test_the_single_redis_contract_holds_on_a_cluster(redis_cluster, case):
    """A few of test_cluster.py's cases (one Redis) as they are, on the Cluster: write-back through
    the room's shard, the replay log, RESUME on another node, an owner's death seen elsewhere."""
    import test_cluster
    getattr(test_cluster, case)(redis_cluster)


def test_a_shard_primary_killed_under_load_is_survived_never_a_gap(redis_cluster):
    servers = redis_cluster.redis

    def fail(code):
        slot = room_slot(redis_cluster, code)
        return servers.wait_failover(slot, servers.kill_primary_of(slot))
    survive_failover_under_load(redis_cluster, "shard failover", fail)
