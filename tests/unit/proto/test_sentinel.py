"""Redis Sentinel's pure part (issue 22): addresses, answers, the order sentinels are asked in."""

import pytest

from sphincter_lib.proto import resp, sentinel


def test_addresses_parse_with_default_port_ipv6_and_no_repeats():
    assert sentinel.parse_sentinels("a:1, b ,[::1]:26380,a:1,,") == (
        ("a", 1), ("b", 26379), ("::1", 26380))
    assert sentinel.parse_sentinels("") == ()
    assert sentinel.parse_sentinels("[fe80::1]") == (("fe80::1", 26379),)


@pytest.mark.parametrize("bad", ["a:0", "a:70000", "a:x", "::1:5", "[::1", "[::1]x", ":5", "a b:1", "u@h:1"])
def test_bad_addresses_are_one_line_errors(bad):
    with pytest.raises(ValueError) as err:
        sentinel.parse_sentinels(bad)
    assert "\n" not in str(err.value)


def test_the_sentinel_that_answered_is_asked_first():
    s = sentinel.Sentinels([("a", 1), ("b", 2), ("c", 3)])
    order = list(s)
    s.answered(("c", 3))
    assert order == [("a", 1), ("b", 2), ("c", 3)]          # a snapshot
    assert list(s) == [("c", 3), ("a", 1), ("b", 2)]
    s.answered(("x", 9))                                     # unknown: nothing moves
    assert list(s) == [("c", 3), ("a", 1), ("b", 2)]
    assert str(sentinel.Sentinels([("::1", 5), ("h", 6)])) == "[::1]:5,h:6"
    with pytest.raises(ValueError):
        sentinel.Sentinels([])


def test_master_query_and_answers():
    assert sentinel.master_query("mymaster") == resp.command("SENTINEL", "get-master-addr-by-name", "mymaster")
    parse = lambda data: resp.Parser().feed(data)[0]      # noqa: E731
    assert sentinel.master_address(parse(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n")) == ("127.0.0.1", 6380)
    for bad in (b"*-1\r\n", b"$-1\r\n", b"-ERR No such master with that name\r\n", b":1\r\n",
                b"*2\r\n$1\r\nh\r\n$1\r\nx\r\n", b"*2\r\n$0\r\n\r\n$2\r\n10\r\n", b"*2\r\n$1\r\nh\r\n$1\r\n0\r\n"):
        with pytest.raises(sentinel.SentinelError) as err:
            sentinel.master_address(parse(bad))
        assert "\n" not in str(err.value)


def test_role_and_readonly():
    assert sentinel.role([b"master", 10, []]) == "master"
    assert sentinel.role([b"slave", b"127.0.0.1", 6379, b"connected", 10]) == "slave"
    assert sentinel.role(resp.Error("ERR unknown command")) == ""
    assert sentinel.role(None) == ""
    assert sentinel.is_readonly(resp.Error("READONLY You can't write against a read only replica."))
    assert not sentinel.is_readonly(resp.Error("ERR x"))
    assert not sentinel.is_readonly(b"OK")


def test_switch_master_announcements():
    from sphincter_lib.proto import sentinel as s
    assert s.switch_query() == resp.command("SUBSCRIBE", "+switch-master")
    push = [b"message", b"+switch-master", b"mymaster 127.0.0.1 6379 127.0.0.1 6380"]
    assert s.switched(push, "mymaster") == ("127.0.0.1", 6380)
    assert s.switched(push, "other") is None
    assert s.switched([b"subscribe", b"+switch-master", 1], "mymaster") is None
    assert s.switched([b"message", b"+sdown", b"mymaster 127.0.0.1 6379 127.0.0.1 6380"], "mymaster") is None
    assert s.switched([b"message", b"+switch-master", b"mymaster 127.0.0.1 6379 127.0.0.1 x"], "mymaster") is None
