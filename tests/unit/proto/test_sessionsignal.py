"""Session rooms across nodes (issue 20, Redis mode): session ids naming a node, the messages
between nodes, the records in Redis, the PROXY line of a forwarded data link."""

import secrets

import pytest

from sphincter_lib.proto import sessionsignal as sg
from sphincter_lib.proto.sessionwire import valid_sid

TAG = "0a1b2c3d"


def test_a_sid_names_its_node_and_keeps_the_grammar():
    for _ in range(200):                        # token_urlsafe has '-' and '_': the tag is by position
        sid = sg.make_sid(secrets.token_urlsafe(16), TAG)
        assert valid_sid(sid) and len(sid) == 30 and sg.sid_tag(sid) == TAG
    assert sg.sid_tag(secrets.token_urlsafe(16)) == ""          # a single node's id: no tag
    assert sg.sid_tag("a" * 22 + "0A1B2C3D") == ""                # tags are lowercase hex
    assert sg.sid_tag("a" * 22 + "0a1b2c3") == "" and sg.sid_tag("bad!") == ""
    with pytest.raises(ValueError):
        sg.make_sid("short", TAG)
    with pytest.raises(ValueError):
        sg.make_sid("a" * 22, "nothex!!")


def test_messages_round_trip():
    sid = sg.make_sid("b" * 22, TAG)
    assert sg.parse_message(sg.open_message("ABC123", sid, TAG)) == ("open", "ABC123", sid, TAG)
    assert sg.parse_message(sg.refused_message(sid, sg.AGENT, "connection\nrefused é")) == (
        "refused", sid, "agent", "connection refused")
    assert sg.parse_message(sg.refused_message(sid, sg.ROOM, "too many sessions")) == (
        "refused", sid, "room", "too many sessions")
    assert sg.parse_message(sg.refused_message(sid, "odd", "")) == ("refused", sid, "agent", "refused")
    assert sg.parse_message(sg.ended_message("ABC123", sid)) == ("ended", "ABC123", sid)


@pytest.mark.parametrize("text", ["", "open", "open ABC " + "b" * 30, "open AB!C %s %s" % ("b" * 30, TAG),
                                  "open ABC %s nottag" % ("b" * 30), "refused short agent x",
                                  "refused %s other x" % ("b" * 30), "ended ABC", "hello there"])
def test_anything_else_is_ignored(text):
    assert sg.parse_message(text) is None


def test_records():
    digest = sg.key_digest("k" * 22)
    assert len(digest) == 64 and "k" not in digest
    assert sg.parse_room_record(sg.room_record(TAG, digest, "n1")) == (TAG, digest, "n1")
    assert sg.parse_room_record(sg.room_record(TAG, digest, "")) == (TAG, digest, "-")
    assert sg.parse_room_record("x y z") is None and sg.parse_room_record(None) is None
    assert sg.parse_node_record(sg.node_record("10.0.0.2", 9001, True, "n2")) == ("10.0.0.2", 9001, True, "n2")
    assert sg.parse_node_record(sg.node_record("::1", 9001, False, "n2")) == ("::1", 9001, False, "n2")
    assert sg.parse_node_record("h 0 1 n") is None and sg.parse_node_record("h 70000 1 n") is None
    assert sg.parse_node_record("h 9001 2 n") is None and sg.parse_node_record("") is None
    assert sg.room_key("sph", "abc") == "sph:sroom:{ABC}"
    assert sg.node_key("sph", TAG) == "sph:snode:" + TAG and sg.channel("sph", TAG) == "sph:sn:" + TAG


def test_proxy_line_names_the_agent():
    assert sg.proxy_line("10.1.2.3:4567", ("127.0.0.1", 9001)) == b"PROXY TCP4 10.1.2.3 127.0.0.1 4567 9001\r\n"
    assert sg.proxy_line("[2001:db8::1]:4567", ("::1", 9001)) == b"PROXY TCP6 2001:db8::1 ::1 4567 9001\r\n"
    assert sg.proxy_line("10.1.2.3:4567", ("::1", 9001)) == b"PROXY UNKNOWN\r\n"
    assert sg.proxy_line("unix-socket", ("127.0.0.1", 9001)) == b"PROXY UNKNOWN\r\n"
    assert len(sg.proxy_line("[%s]:65535" % ("ffff:" * 7 + "ffff"), ("ffff:" * 7 + "ffff", 65535))) <= 107


def test_a_named_rooms_key_is_the_same_on_every_node_and_secret():
    key = sg.named_key(b"desk-token-0123456789", "desk")
    assert key == sg.named_key(b"desk-token-0123456789", "DESK") and len(key) == 24
    assert key != sg.named_key(b"another-token-0123456", "desk") != sg.named_key(b"desk-token-0123456789", "den")
    assert sg.parse_message(sg.replaced_message("desk")) == ("replaced", "desk")
    assert sg.parse_message("replaced bad code") is None
