"""Redis Cluster, pure parts (proto/slots.py, the Cluster names of proto/redis_keys.py)."""
import re

import pytest

from sphincter_lib.proto import redis_keys, resp, slots


def test_crc16_and_key_slots_match_redis():
    # the reference values of the Redis Cluster specification and of CLUSTER KEYSLOT
    assert slots.crc16(b"123456789") == 0x31C3
    assert slots.key_slot("123456789") == 12739
    assert slots.key_slot("foo") == 12182
    assert slots.key_slot("{user1000}.following") == slots.key_slot("{user1000}.followers") == slots.key_slot("user1000")
    assert slots.key_slot("foo{}{bar}") == slots.crc16(b"foo{}{bar}") % 16384      # empty tag: whole key
    assert slots.key_slot("foo{{bar}}zap") == slots.key_slot("{bar")                  # first { to first }
    assert slots.key_slot(b"{a}b") == slots.key_slot("a")


def test_cluster_detection_from_info():
    assert slots.cluster_enabled(b"# Cluster\r\ncluster_enabled:1\r\n")
    assert not slots.cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n")
    assert not slots.cluster_enabled("")


def test_cluster_slots_answer_and_the_map():
    reply = [[5461, 10922, [b"127.0.0.1", 7001, b"id2"], [b"127.0.0.1", 7004, b"id5"]],
             [0, 5460, [b"127.0.0.1", 7000, b"id1"]],
             [10923, 16383, [b"", 7002, b"id3"]]]
    ranges = slots.parse_slots(reply)
    assert ranges[0] == (0, 5460, ("127.0.0.1", 7000)) and ranges[2][2] == ("127.0.0.1", 7002)
    m = slots.SlotMap(ranges)
    assert m.complete() and m.owner(5461) == ("127.0.0.1", 7001) and m.shard(16383) == 10923
    assert m.shards == {0: ("127.0.0.1", 7000), 5461: ("127.0.0.1", 7001), 10923: ("127.0.0.1", 7002)}
    assert not slots.SlotMap(ranges[:2]).complete()
    for bad in (resp.Error("ERR This instance has cluster support disabled"), [], [[1, 0, [b"h", 1]]], [[0]]):
        with pytest.raises(ValueError):
            slots.parse_slots(bad)


def test_routing_key_of_pre_encoded_commands():
    assert slots.command_key(resp.command("SPUBLISH", "sph:m:{r01}AB", b"x" * 1000)) == b"sph:m:{r01}AB"
    assert slots.command_key(resp.command("EVAL", "return 1", 2, "k1", "k2", "a")) == b"k1"
    assert slots.command_key(resp.command("EVAL", "return 1", 0)) is None
    assert slots.command_key(resp.command("PING")) is None
    data = resp.command("HINCRBY", "sph:subs:{r02}X", "node", -1)
    for cut in range(len(data) // 2, len(data)):     # only the headers up to the key are read
        if cut > data.index(b"sph:subs") + len(b"sph:subs:{r02}X") + 2:
            assert slots.command_key(data[:cut]) == b"sph:subs:{r02}X"


def test_redirections():
    assert slots.redirection(resp.Error("MOVED 3999 127.0.0.1:6381")) == ("MOVED", 3999, ("127.0.0.1", 6381))
    assert slots.redirection(resp.Error("ASK 1 ::1:7000")) == ("ASK", 1, ("::1", 7000))
    assert slots.redirection(resp.Error("ERR no")) is None and slots.redirection(b"OK") is None


def test_a_rooms_names_share_one_slot_with_its_bucket_index_in_a_cluster():
    keys = redis_keys.Keys("sph", cluster=True)
    for code in ("ABCDEF", "XY12ZQ", "scores"):
        names = keys.room(code) + [keys.messages(code), keys.events(code), keys.writes(code)]
        assert len({slots.key_slot(n) for n in names}) == 1, names
        assert keys.room(code)[5] in keys.indexes
        assert keys.channel_room(keys.events(code)) == code
    assert len(keys.indexes) == redis_keys.CLUSTER_BUCKETS
    assert len({slots.key_slot(i) for i in keys.indexes}) > redis_keys.CLUSTER_BUCKETS // 2
    plain = redis_keys.Keys("sph")
    assert plain.room("AB")[0] == "sph:lease:{AB}" and plain.indexes == ["sph:rooms"] and plain.publish == "PUBLISH"
    assert keys.publish == "SPUBLISH" and slots.key_slot(keys.nodes) == slots.key_slot("nodes")


def test_cluster_scripts_publish_sharded_and_touch_no_other_slot():
    for name in ("OPEN", "CLAIM", "RESUME", "LEAVE", "CHECK", "REFRESH", "ADMIT", "WPUT", "WDONE", "ENSURE_NAMED"):
        text = redis_keys.script(name, cluster=True)
        assert "'PUBLISH'" not in text, name
        assert text.replace("SPUBLISH", "PUBLISH") == redis_keys.script(name), name
        # every key a script touches is one of KEYS (ADMIT's node keys: only in the plain variant,
        # guarded by ARGV[4] ~= '' which a Cluster node passes empty)
        assert not re.search(r"redis\.call\('\w+', '", text), name
