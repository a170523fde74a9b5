"""obs-websocket 5 session logic (sans-IO), and connect's other pure parts."""

import base64
import hashlib
import json
import random

import pytest

from sphincter_lib.proto import obsws
from sphincter_lib.agent.connect import Backoff
from sphincter_lib.agent.relay_link import BannerParser
from sphincter_lib.agent.local import LineSplitter


def hello(auth=True):
    d = {"obsWebSocketVersion": "5.5.0", "rpcVersion": 1}
    if auth:
        d["authentication"] = {"challenge": "+IxH4CnCiqpX1rM9scsNynZzbOe4KhDeYcTNS3PDaeY=",
                               "salt": "lM1GncleQOaCu9lT1yeUZhFYnqhsLLP1G5lAGo3ixaI="}
    return json.dumps({"op": 0, "d": d})


def test_auth_string_follows_the_documented_steps():
    password, salt, challenge = "supersecretpassword", "lM1Gncl", "+IxH4Cn"
    secret = base64.b64encode(hashlib.sha256(password.encode() + salt.encode()).digest()).decode()
    expected = base64.b64encode(hashlib.sha256((secret + challenge).encode()).digest()).decode()
    assert obsws.auth_string(password, salt, challenge) == expected
    assert obsws.auth_string("p\u00e4ss", "s", "c") != obsws.auth_string("pass", "s", "c")


def test_identify_with_authentication_and_subscriptions():
    s = obsws.ObsSession(password="supersecretpassword")
    [(kind, text)] = s.from_obs(hello())
    msg = json.loads(text)
    assert kind == "send" and msg["op"] == 1
    assert msg["d"]["rpcVersion"] == 1 and msg["d"]["eventSubscriptions"] == obsws.EVENTS_ALL == 2047
    assert msg["d"]["authentication"] == obsws.auth_string(
        "supersecretpassword", "lM1GncleQOaCu9lT1yeUZhFYnqhsLLP1G5lAGo3ixaI=",
        "+IxH4CnCiqpX1rM9scsNynZzbOe4KhDeYcTNS3PDaeY=")
    assert s.from_obs('{"op": 2, "d": {"negotiatedRpcVersion": 1}}') == [("identified", 1)]
    assert s.identified


def test_no_authentication_field_when_obs_asks_none():
    s = obsws.ObsSession(password="ignored", event_subscriptions=4)
    msg = json.loads(s.from_obs(hello(auth=False))[0][1])
    assert "authentication" not in msg["d"] and msg["d"]["eventSubscriptions"] == 4


def test_password_required():
    with pytest.raises(obsws.ObsError, match="requires a password"):
        obsws.ObsSession().from_obs(hello())


def identified(**kw):
    s = obsws.ObsSession(password="x", **kw)
    s.from_obs(hello())
    s.from_obs('{"op": 2, "d": {"negotiatedRpcVersion": 1}}')
    return s


def test_events_and_responses_are_relayed_unchanged():
    s = identified()
    event = '{"op": 5, "d": {"eventType": "CurrentProgramSceneChanged", "eventIntent": 4, "eventData": {"sceneName": "A"}}}'
    assert s.from_obs(event) == [("relay", event)]
    response = '{"op":7,"d":{"requestType":"GetVersion","requestId":"1","requestStatus":{"result":true,"code":100}}}'
    assert s.from_obs(response) == [("relay", response)]
    assert s.from_obs("not json")[0][0] == "drop"


def test_writer_requests_need_allow_requests():
    request = b'{"op": 6, "d": {"requestType": "GetVersion", "requestId": "1"}}'
    assert identified().from_room(request)[0][0] == "drop"
    assert identified(allow_requests=True).from_room(request) == [("send", request.decode())]
    assert identified(allow_requests=True).from_room(b'{"op": 1, "d": {}}')[0][0] == "drop"
    assert identified(allow_requests=True).from_room(b"\xff")[0][0] == "drop"
    assert identified(allow_requests=True).from_room(b"   ") == []


def test_close_codes_are_described():
    assert "wrong obs-websocket password" in obsws.describe_close(4009)
    assert obsws.describe_close(None) == "connection ended"


# --- connect's pure parts ------------------------------------------------------------------

def test_backoff_is_capped_exponential_with_jitter():
    b = Backoff(0.5, 4.0, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    for d, ceiling in zip(delays, [0.5, 1, 2, 4, 4, 4, 4, 4]):
        assert ceiling / 2 <= d <= ceiling
    b.reset()
    assert b.next() <= 0.5


def test_banner_parser_whole_and_byte_by_byte():
    data = b"ROOM K7PQ2X\nRESUME K7PQ2X abcdefghijklmnopqrstuv\nWRITE keykeykeykeykeykey\nROOM not a line\n\xff"
    expected = [("room", "K7PQ2X"), ("resume", "K7PQ2X", "abcdefghijklmnopqrstuv"),
                ("write", "keykeykeykeykeykey"), ("data", b"ROOM not a line\n\xff")]
    assert BannerParser().feed(data) == expected
    p, events = BannerParser(), []
    for i in range(len(data)):
        events += p.feed(data[i:i + 1])
    data_bytes = b"".join(e[1] for e in events if e[0] == "data")
    assert [e for e in events if e[0] != "data"] == expected[:3]
    assert data_bytes == expected[3][1]


def test_banner_parser_without_write_back_reads_error_lines():
    assert BannerParser().feed(b"ROOM ABCDEF\nERROR replaced by a newer source\n") == [
        ("room", "ABCDEF"), ("error", "replaced by a newer source")]


def test_line_splitter_bounds_memory():
    s = LineSplitter(4)
    assert s.feed(b"ab\ncdefgh") == [b"ab", b"cdef"]
    assert s.feed(b"i\r\n\n") == [b"ghi"]
    assert s.feed(b"123456789\n") == [b"1234", b"5678", b"9"]


def test_initial_requests_follow_identified():
    s = obsws.ObsSession(password="x", initial_requests=("GetCurrentProgramScene",))
    s.from_obs(hello())
    actions = s.from_obs('{"op": 2, "d": {"negotiatedRpcVersion": 1}}')
    assert actions[0] == ("identified", 1)
    assert json.loads(actions[1][1]) == {"op": 6, "d": {"requestType": "GetCurrentProgramScene",
                                                        "requestId": "sphincter-GetCurrentProgramScene"}}


def test_banner_parser_split_at_every_offset():
    data = (b"ROOM K7PQ2X\r\nRESUME K7PQ2X abcdefghijklmnopqrstuv\nWRITE wkwkwkwkwkwkwkwkwkwk\n"
            b"payload\nROOM x\n\x00")
    whole = BannerParser().feed(data)
    for i in range(len(data) + 1):
        p = BannerParser()
        events = p.feed(data[:i]) + p.feed(data[i:])
        control = [e for e in events if e[0] != "data"]
        assert control == [e for e in whole if e[0] != "data"], i
        assert b"".join(e[1] for e in events if e[0] == "data") == b"payload\nROOM x\n\x00", i


def test_line_splitter_split_at_every_offset():
    data = b"one\r\ntwo\n\nthree-is-long\nfour"
    for i in range(len(data) + 1):
        s = LineSplitter(5)
        assert s.feed(data[:i]) + s.feed(data[i:]) + s.feed(b"\n") == [
            b"one", b"two", b"three", b"-is-l", b"ong", b"four"], i
