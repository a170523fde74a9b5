"""Redis mode's pure parts: RESP encoding/parsing, the batch format, key names."""

import pytest

from sphincter_lib.proto import redis_keys, resp
from sphincter_lib.cluster.link import Endpoint, hide_password


def test_command_is_an_array_of_bulk_strings():
    assert resp.command("PUBLISH", "ch", b"\x00hi") == b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$3\r\n\x00hi\r\n"
    assert resp.command("HINCRBY", "k", "n", -1).endswith(b"$2\r\n-1\r\n")


def test_parser_gives_every_reply_type():
    data = b"+OK\r\n-ERR nope\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n$0\r\n\r\n*-1\r\n"
    assert resp.Parser().feed(data) == [b"OK", resp.Error("ERR nope"), 42, b"abc", None, [1, b""], None]


def test_parser_waits_for_whole_replies_fed_a_byte_at_a_time():
    push = resp.command("message", "sph:m:{ABC}", b"x" * 1000)    # same shape as a pub/sub push
    parser, out = resp.Parser(), []
    for i in range(len(push)):
        out.extend(parser.feed(push[i:i + 1]))
    assert out == [[b"message", b"sph:m:{ABC}", b"x" * 1000]]
    assert parser.feed(b"") == []


def test_parser_refuses_garbage_and_huge_bulks():
    with pytest.raises(resp.RespError):
        resp.Parser().feed(b"?what\r\n")
    with pytest.raises(resp.RespError):
        resp.Parser(max_bulk=10).feed(b"$11\r\n")


def test_batches_round_trip_and_carry_epoch_and_seq():
    frames = [b"\x81\x02hi", (b"\x82\x7e\x01\x00", b"y" * 256), b""]
    data = redis_keys.encode_batch(7, 123456, 1 << 40, frames)
    assert redis_keys.decode_batch(data) == (7, 123456, 1 << 40,
                                             [b"\x81\x02hi", b"\x82\x7e\x01\x00" + b"y" * 256, b""])
    with pytest.raises(ValueError):
        redis_keys.decode_batch(data[:-1])
    with pytest.raises(ValueError):
        redis_keys.decode_batch(b"nope")


def test_keys_share_the_room_hash_tag():
    keys = redis_keys.Keys("sph")
    room = keys.room("ABC123")
    assert all("{ABC123}" in k for k in room[:5]) and room[5] == "sph:rooms"
    assert keys.channel_room(keys.messages("ABC123")) == "ABC123"
    assert keys.node("n1") == "sph:node:n1" and keys.to_node("n1") == "sph:n:n1"


def test_endpoint_reads_the_url_and_hides_the_password():
    e = Endpoint("rediss://user:s%40cret@redis.example:6380/3")
    assert (e.tls, e.host, e.port, e.username, e.password, e.db) == (True, "redis.example", 6380, "user",
                                                                     "s@cret", 3)
    assert "s%40cret" not in str(e) and "***" in str(e)
    assert hide_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert Endpoint("redis://h").port == 6379 and Endpoint("redis://h").db == 0
