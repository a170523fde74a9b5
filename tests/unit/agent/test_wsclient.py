"""The WebSocket client's pure parts: URLs, the handshake check, masked frames, the session."""

import base64
import hashlib
import os

import pytest

from sphincter_lib.agent import wsclient
from sphincter_lib.proto import frames as wsproto
from sphincter_lib.closecodes import CloseCode
from sphincter_lib.errors import ProtocolError
from sphincter_lib.agent.wsclient import HandshakeError, check_handshake

KEY = "dGhlIHNhbXBsZSBub25jZQ=="           # RFC 6455 section 1.3
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def response(*extra, status="101 Switching Protocols", accept=ACCEPT):
    lines = ["HTTP/1.1 " + status, "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Accept: " + accept] + list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("url, parsed", [
    ("ws://localhost:4455", (False, "localhost", 4455, "/")),
    ("ws://h/path?x=1", (False, "h", 80, "/path?x=1")),
    ("wss://h.example", (True, "h.example", 443, "/")),
    ("ws://[::1]:8080/ws", (False, "::1", 8080, "/ws")),
    ("WS://h?room=A", (False, "h", 80, "/?room=A")),
])
def test_parse_url(url, parsed):
    assert wsclient.parse_url(url) == parsed


@pytest.mark.parametrize("url", ["http://h", "ws://", "ws://h:0", "ws://h:99999", "ws://h:x"])
def test_parse_url_rejects(url):
    with pytest.raises(ValueError):
        wsclient.parse_url(url)


def test_request_has_what_rfc6455_requires():
    req = wsclient.handshake_request("h", 4455, "/", KEY, ("obswebsocket.json",)).decode()
    assert req.startswith("GET / HTTP/1.1\r\n") and req.endswith("\r\n\r\n")
    for header in ("Host: h:4455", "Upgrade: websocket", "Connection: Upgrade",
                   "Sec-WebSocket-Key: " + KEY, "Sec-WebSocket-Version: 13",
                   "Sec-WebSocket-Protocol: obswebsocket.json"):
        assert header + "\r\n" in req
    assert "Host: h\r\n" in wsclient.handshake_request("h", 443, "/", KEY, tls=True).decode()


def test_accept_key_matches_the_rfc_example():
    assert base64.b64encode(hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode())
                            .digest()).decode() == ACCEPT
    assert check_handshake(response(), KEY) is None
    assert check_handshake(response("Sec-WebSocket-Protocol: obswebsocket.json"), KEY,
                           ("obswebsocket.json",)) == "obswebsocket.json"


@pytest.mark.parametrize("head, needle", [
    (response(status="403 Forbidden"), "403"),
    (response(accept="AAAA"), "Sec-WebSocket-Accept"),
    (response("Sec-WebSocket-Protocol: other"), "subprotocol"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP response"),
    (response().replace(b"Upgrade: websocket\r\n", b""), "Upgrade"),
    (response().replace(b"Connection: Upgrade\r\n", b"Connection: close\r\n"), "Connection"),
])
def test_bad_handshakes_are_one_line_errors(head, needle):
    with pytest.raises(HandshakeError) as exc:
        check_handshake(head, KEY, ("obswebsocket.json",))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200000])
def test_client_frames_are_masked_and_parse_back(size):
    payload = os.urandom(size)
    frame = wsclient.encode_client_frame(wsproto.BINARY, payload)
    assert frame[1] & 0x80                              # the mask bit
    parser = wsproto.FrameParser(max_message_bytes=1 << 20)   # the server's parser: requires masks
    assert parser.feed(frame) == [(wsproto.BINARY, payload)]


def test_session_reassembles_answers_pings_and_echoes_close():
    s = wsclient.ClientSession()
    data = (wsproto.encode_frame(wsproto.TEXT, b"hel", fin=False) + wsproto.encode_ping(b"p")
            + wsproto.encode_frame(wsproto.CONTINUATION, b"lo") + wsproto.encode_close(4009, "auth"))
    messages, replies = [], []
    for i in range(len(data)):                          # byte by byte
        m, r = s.receive(data[i:i + 1])
        messages += m
        replies += r
    assert messages == [(wsproto.TEXT, b"hello")]
    server = wsproto.FrameParser()
    events = server.feed(b"".join(replies))
    assert events[0] == (wsproto.PONG, b"p")
    assert events[1][0] == wsproto.CLOSE and events[1][1][:2] == (4009).to_bytes(2, "big")
    assert s.closed and (s.close_code, s.close_reason) == (4009, "auth")
    assert s.close_frame() is None                      # the echo was the one close frame


def test_session_limits_and_validates():
    s = wsclient.ClientSession(max_message_bytes=10)
    with pytest.raises(ProtocolError) as exc:
        s.receive(wsproto.encode_frame(wsproto.BINARY, b"x" * 11))
    assert exc.value.code == CloseCode.MESSAGE_TOO_BIG
    with pytest.raises(ProtocolError):
        wsclient.ClientSession().receive(wsproto.encode_frame(wsproto.TEXT, b"\xff"))
