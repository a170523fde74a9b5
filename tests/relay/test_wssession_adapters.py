"""The WebSocket session's adapters over real connections (the sans-IO session itself is
tests/unit/proto/test_wssession.py): close handshakes and a ping before a broken frame, against
an in-process relay on real sockets."""

import time

from sphincter_lib.proto import frames as wsproto
from conftest import Source, mask_frame, parse_server_frames, raw_upgrade, read_to_eof, unit, wait_for


def close_payload(code, reason=b""):
    return code.to_bytes(2, "big") + reason


def read_frame(sock):
    """One (unmasked, short) server frame from a raw socket: (opcode, payload)."""
    head = b""
    while len(head) < 2:
        chunk = sock.recv(2 - len(head))
        assert chunk, "connection closed before a frame"
        head += chunk
    n = head[1] & 0x7F
    assert n < 126, head
    payload = b""
    while len(payload) < n:
        chunk = sock.recv(n - len(payload))
        assert chunk, "connection closed inside a frame"
        payload += chunk
    return head[0] & 0x0F, payload


def eof_after_our_close(sock, code):
    """Send our close; return the seconds until the server ends the TCP connection."""
    sock.sendall(mask_frame(wsproto.CLOSE, close_payload(code)))
    t0 = time.monotonic()
    assert read_to_eof(sock) == b""                         # nothing after its close frame
    return time.monotonic() - t0


def test_server_close_waits_for_the_clients_then_drops_at_once(make_relay):
    relay = make_relay(close_timeout=unit(30))              # a timeout would show
    src = Source(relay)
    sock = raw_upgrade(relay, "room=" + src.code)
    wait_for(lambda: relay.registry.subscriber_count == 1, what="subscriber joined")
    src.send(b"last\n")
    src.close()
    assert read_frame(sock) == (wsproto.TEXT, b"last")
    assert read_frame(sock) == (wsproto.CLOSE, close_payload(4410) + b"source closed")
    assert relay.app.connections == 1                       # CLOSING: waiting for ours
    assert eof_after_our_close(sock, 4410) < unit(5)
    wait_for(lambda: relay.app.connections == 0, what="connection closed")
    wait_for(lambda: relay.registry.subscriber_count == 0, what="subscriber gone")
    assert relay.stats.close_codes[4410] == 1


def test_refusal_waits_for_the_clients_close_then_drops_at_once(make_relay):
    relay = make_relay(close_timeout=unit(30))
    sock = raw_upgrade(relay, "room=NOSUCH")
    assert read_frame(sock) == (wsproto.CLOSE, close_payload(4404) + b"unknown room")
    assert eof_after_our_close(sock, 4404) < unit(5)
    assert relay.stats.close_codes[4404] == 1


def test_subscriber_ping_before_a_broken_frame_is_answered_then_closed(relay):
    src = Source(relay)
    sock = raw_upgrade(relay, "room=" + src.code)
    sock.sendall(mask_frame(wsproto.PING, b"p") + b"\x81\x02hi")      # one write: usually one read
    data = read_to_eof(sock)
    frames = parse_server_frames(data)
    assert frames[-1] == (wsproto.CLOSE, close_payload(1002) + b"client frame not masked")
    assert frames[:-1] in ([], [(wsproto.PONG, b"p")])     # answered when both came in one read
    wait_for(lambda: relay.registry.subscriber_count == 0, what="subscriber gone")
