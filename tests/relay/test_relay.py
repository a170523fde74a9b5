"""The contract, from outside: a real server on loopback, real TCP sources, a real WebSocket client."""

import json
import os
import socket
import urllib.error
import urllib.request

import gevent
import pytest
import websocket

from conftest import (Source, mask_frame, raw_upgrade, read_to_eof, recv_close, subscribe, unit,
                      wait_for, ws_url)

TEXT, BINARY = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY


def http_get(relay, path):
    host, port = relay.ws_address
    try:
        with urllib.request.urlopen("http://%s:%d%s" % (host, port, path), timeout=unit(5)) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def joined(relay, code, n=1):
    wait_for(lambda: relay.registry.get(code) and len(relay.registry.get(code).subscribers) >= n,
             what="%d subscriber(s) in %s" % (n, code))


def test_banner_and_lines_reach_the_subscriber(relay):
    src = Source(relay)
    assert len(src.code) == 6
    ws = subscribe(relay, src.code.lower())          # codes are case-insensitive
    joined(relay, src.code)
    src.send(b"hello\r\n\n{\"a\": 1}\n\xff\x00bin\nlast")
    assert ws.recv_data() == (TEXT, b"hello")
    assert ws.recv_data() == (TEXT, b'{"a": 1}')
    assert ws.recv_data() == (BINARY, b"\xff\x00bin")
    src.close()
    assert ws.recv_data() == (TEXT, b"last")        # unterminated last line on close
    assert recv_close(ws) == (4410, "source closed")


def test_raw_framing_is_byte_exact(make_relay):
    relay = make_relay(framing="raw", max_message_bytes=1000)
    src = Source(relay)
    ws = subscribe(relay, src.code)
    joined(relay, src.code)
    payload = bytes(range(256)) * 40
    src.send(payload)
    src.close()
    got = b""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        assert opcode == BINARY and 0 < len(data) <= 1000
        got += data
    assert got == payload


def test_long_line_is_split(make_relay):
    relay = make_relay(max_message_bytes=10, subscriber_buffer_bytes=1000)
    src = Source(relay)
    ws = subscribe(relay, src.code)
    joined(relay, src.code)
    src.send(b"abcdefghijklmnopqrstuvwxyz\n")
    assert [ws.recv_data()[1] for _ in range(3)] == [b"abcdefghij", b"klmnopqrst", b"uvwxyz"]


def test_code_is_unknown_once_the_source_left(relay):
    src = Source(relay)
    code = src.code
    src.close()
    wait_for(lambda: len(relay.registry) == 0, what="room closed")
    ws = subscribe(relay, code)
    assert recv_close(ws) == (4404, "unknown room")


@pytest.mark.parametrize("query", ["room=ZZZZZZ", "room=", "", "room=%FF%FE"])
def test_unknown_room_is_closed_with_4404(relay, query):
    ws = websocket.create_connection(ws_url(relay, query), timeout=unit(5))
    assert recv_close(ws)[0] == 4404
    wait_for(lambda: relay.app.connections == 0, what="connection count back to 0")


def test_full_room_is_closed_with_4429(make_relay):
    relay = make_relay(max_subscribers_per_room=2)
    src = Source(relay)
    a, b = subscribe(relay, src.code), subscribe(relay, src.code)
    joined(relay, src.code, 2)
    c = subscribe(relay, src.code)
    assert recv_close(c) == (4429, "room full")
    src.send(b"still here\n")
    assert a.recv_data()[1] == b.recv_data()[1] == b"still here"


def test_too_many_rooms_gives_an_error_line(make_relay):
    relay = make_relay(max_rooms=1)
    first = Source(relay)
    refused = Source(relay, banner=False)
    assert refused.readline() == b"ERROR too many rooms\n"
    assert refused.sock.recv(10) == b""
    assert first.code


def test_banner_off_still_opens_a_room(make_relay):
    relay = make_relay(banner=False)
    src = Source(relay, banner=False)
    room = wait_for(lambda: relay.registry.rooms(), what="room")[0]
    ws = subscribe(relay, room.code)
    joined(relay, room.code)
    src.send(b"quiet\n")
    assert ws.recv_data()[1] == b"quiet"
    src.sock.settimeout(unit(0.2))
    with pytest.raises(socket.timeout):
        src.sock.recv(1)                            # the source received nothing


def test_http_endpoints(relay):
    status, body = http_get(relay, "/ws?room=AAAAAA")
    assert status == 400 and b"WebSocket" in body
    assert http_get(relay, "/nope")[0] == 404
    src = Source(relay)
    status, body = http_get(relay, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["rooms"] == 1 and health["subscribers"] == 0
    assert health["uptime_seconds"] >= 0
    src.close()


def test_bad_handshakes_get_clean_http_errors(relay):
    host, port = relay.ws_address
    cases = {
        b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n": b"400",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: !!notbase64!!\r\nSec-WebSocket-Version: 13\r\n\r\n": b"400",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n": b"426",
    }
    for request, status in cases.items():
        with socket.create_connection((host, port), timeout=unit(5)) as s:
            s.sendall(request)
            response = read_to_eof(s)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.split()[1] == status, response
        assert b"Traceback" not in response and body


def test_every_message_once_in_order_for_late_and_early_joiners(relay):
    src = Source(relay)
    early = subscribe(relay, src.code)
    joined(relay, src.code)
    src.send(b"".join(b"m%d\n" % i for i in range(100)))
    wait_for(lambda: relay.registry.get(src.code).messages == 100, what="100 published")
    late = subscribe(relay, src.code)
    joined(relay, src.code, 2)
    src.send(b"".join(b"m%d\n" % i for i in range(100, 200)))
    assert [early.recv_data()[1] for _ in range(200)] == [b"m%d" % i for i in range(200)]
    assert [late.recv_data()[1] for _ in range(100)] == [b"m%d" % i for i in range(100, 200)]


def test_client_ping_gets_pong_and_client_messages_are_discarded(relay):
    src = Source(relay)
    ws = subscribe(relay, src.code)
    joined(relay, src.code)
    ws.send("ignored by the relay")
    ws.ping(b"are you there")
    opcode, data = ws.recv_data(control_frame=True)
    assert (opcode, data) == (websocket.ABNF.OPCODE_PONG, b"are you there")
    src.send(b"after\n")
    assert ws.recv_data() == (TEXT, b"after")


def test_client_close_is_echoed(relay):
    src = Source(relay)
    ws = subscribe(relay, src.code)
    joined(relay, src.code)
    ws.send_close(status=4000, reason=b"bye")
    assert recv_close(ws)[0] == 4000
    wait_for(lambda: relay.registry.subscriber_count == 0, what="subscriber gone")


def test_oversized_client_message_is_closed_with_1009(make_relay):
    relay = make_relay(max_client_message_bytes=100)
    src = Source(relay)
    ws = subscribe(relay, src.code)
    joined(relay, src.code)
    ws.send("x" * 101)
    assert recv_close(ws)[0] == 1009


def test_protocol_errors_close_with_their_code(relay):
    src = Source(relay)
    for frame, code in [(mask_frame(1, b"\xff"), 1007), (b"\x81\x02hi", 1002)]:
        sock = raw_upgrade(relay, "room=" + src.code)
        sock.sendall(frame)
        data = read_to_eof(sock)
        assert data[0] == 0x88 and int.from_bytes(data[2:4], "big") == code
        sock.close()
    wait_for(lambda: relay.registry.subscriber_count == 0, what="subscribers gone")


def test_server_pings_and_drops_the_silent(make_relay):
    relay = make_relay(ping_interval=unit(0.2), ping_timeout=unit(0.3))
    src = Source(relay)
    lively = subscribe(relay, src.code)            # websocket-client answers pings while it reads
    silent = raw_upgrade(relay, "room=" + src.code)  # reads, never answers
    joined(relay, src.code, 2)
    seen = []

    def read_lively():
        while True:
            opcode, data = lively.recv_data(control_frame=True)
            seen.append((opcode, data))
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return

    reader = gevent.spawn(read_lively)
    first = silent.recv(2)
    assert first[0] == 0x89                        # a ping
    wait_for(lambda: relay.registry.subscriber_count == 1, timeout=unit(5), what="silent one dropped")
    wait_for(lambda: any(op == websocket.ABNF.OPCODE_PING for op, _ in seen), what="lively pinged")
    src.send(b"alive\n")
    wait_for(lambda: (TEXT, b"alive") in seen, what="lively still served")
    assert relay.registry.subscriber_count == 1
    reader.kill()


@pytest.mark.timeout(240)
def test_300_subscribers_2000_messages_no_loss(make_relay):
    relay = make_relay(log_level="info")
    src = Source(relay)
    n_subs, n_msgs = 300, 2000
    subs = [subscribe(relay, src.code, timeout=unit(60), bulk=True) for _ in range(n_subs)]
    joined(relay, src.code, n_subs)
    expected = [b"%d" % i for i in range(n_msgs)]

    def receive(ws):
        got = [ws.recv_data()[1] for _ in range(n_msgs)]
        return got == expected

    readers = [gevent.spawn(receive, ws) for ws in subs]
    for i in range(0, n_msgs, 100):
        src.send(b"".join(b"%d\n" % j for j in range(i, i + 100)))
    gevent.joinall(readers, timeout=unit(200), raise_error=True)
    assert all(r.value is True for r in readers)
    assert relay.stats.slow_cutoffs == 0


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.timeout(120)
def test_stalled_subscriber_is_cut_off_while_others_get_everything(make_relay):
    budget = 256 * 1024
    relay = make_relay(subscriber_buffer_bytes=budget, max_message_bytes=64 * 1024, log_level="info")
    src = Source(relay)
    stalled = raw_upgrade(relay, "room=" + src.code, rcvbuf=4096)    # never reads
    healthy = [subscribe(relay, src.code, timeout=unit(60), bulk=True) for _ in range(3)]
    joined(relay, src.code, 4)
    room = relay.registry.get(src.code)
    line = b"y" * 8191 + b"\n"
    total_lines = 4 * 1024                                         # 32 MiB through the relay
    peak = {"backlog": 0}
    received = [0] * len(healthy)
    rss_before = rss_bytes()

    def sender():
        # closed loop: never more than 64 KiB ahead of the slowest *healthy* subscriber
        for i in range(total_lines // 8):
            wait_for(lambda: min(received) >= (i - 1) * 8, timeout=unit(30), interval=0.001,
                     what="healthy subscribers to keep up")
            src.send(line * 8)
            peak["backlog"] = max(peak["backlog"], room.backlog_bytes)

    def receive(k, ws):
        while received[k] < total_lines:
            opcode, data = ws.recv_data()
            assert data == line[:-1]
            received[k] += 1
        return received[k]

    readers = [gevent.spawn(receive, k, ws) for k, ws in enumerate(healthy)]
    gevent.spawn(sender).get(timeout=unit(90))
    gevent.joinall(readers, timeout=unit(90), raise_error=True)
    assert [r.value for r in readers] == [total_lines] * 3
    assert relay.stats.slow_cutoffs == 1
    assert peak["backlog"] <= budget + 64 * 1024
    assert rss_bytes() - rss_before < 64 << 20
    assert len(room.subscribers) == 3
    # best effort: the stalled one finds its stream ended (a 4408 close frame, or just EOF)
    stalled.settimeout(unit(5))
    while stalled.recv(1 << 20):
        pass


def test_shutdown_closes_subscribers_with_1001_and_tells_sources(make_relay):
    relay = make_relay()
    src = Source(relay)
    ws = subscribe(relay, src.code)
    joined(relay, src.code)
    src.send(b"before shutdown\n")
    wait_for(lambda: relay.registry.get(src.code).messages == 1, what="message published")
    stopper = gevent.spawn(relay.stop)
    assert ws.recv_data()[1] == b"before shutdown"     # queued messages still delivered
    assert recv_close(ws) == (1001, "server shutting down")
    assert src.readline() == b"ERROR server shutting down\n"
    stopper.get(timeout=unit(10))


def server_frames(data):
    """Split a server-to-client byte stream into (opcode, payload) frames (unmasked)."""
    frames, i = [], 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            n, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif n == 127:
            n, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        if j + n > len(data):
            break
        frames.append((op, data[j:j + n]))
        i = j + n
    return frames


@pytest.mark.timeout(120)
def test_slow_but_moving_subscriber_gets_4408(make_relay):
    # with flow control a lone subscriber is its room's fastest and slows the source down
    # instead (tests/relay/test_flow.py); without it, a subscriber that falls behind is cut
    budget = 256 * 1024
    relay = make_relay(subscriber_buffer_bytes=budget, max_message_bytes=64 * 1024,
                       close_timeout=unit(5), log_level="info", flow_control=False)
    src = Source(relay)
    slow = raw_upgrade(relay, "room=" + src.code, rcvbuf=16384)
    joined(relay, src.code)
    received = bytearray()

    def read_slowly():
        slow.settimeout(unit(30))
        while True:
            chunk = slow.recv(16384)
            if not chunk:
                return
            received.extend(chunk)
            gevent.sleep(0.002)

    reader = gevent.spawn(read_slowly)
    line = b"z" * 4095 + b"\n"
    for _ in range(2048):                       # 8 MiB, far faster than the reader
        src.send(line * 1)
        if relay.stats.slow_cutoffs:
            break
    reader.get(timeout=unit(60))
    assert relay.stats.slow_cutoffs == 1
    frames = server_frames(bytes(received))
    assert frames[-1][0] == 0x8 and int.from_bytes(frames[-1][1][:2], "big") == 4408, frames[-1][:1]
    assert all(f == (1, line[:-1]) for f in frames[:-1])     # whole messages, in order, no gaps


def test_large_messages_arrive_whole_in_order(make_relay):
    relay = make_relay(framing="raw", max_message_bytes=256 * 1024, subscriber_buffer_bytes=64 << 20)
    src = Source(relay)
    ws = subscribe(relay, src.code, bulk=True)
    joined(relay, src.code)
    payload = bytes(range(256)) * (4 * 4096)          # 4 MiB: large (zero-copy) and small frames
    src.send(payload)
    src.close()
    got = bytearray()
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        assert 0 < len(data) <= 256 * 1024
        got += data
    assert got == payload


def test_connections_leave_no_descriptors_behind(relay):
    src = Source(relay)
    fds = lambda: len(os.listdir("/proc/self/fd"))
    before = fds()
    for _ in range(3):
        subs = [subscribe(relay, src.code) for _ in range(30)]
        joined(relay, src.code, 30)
        src.send(b"x\n")
        for ws in subs:
            assert ws.recv() == "x"
            ws.close()
        wait_for(lambda: relay.registry.subscriber_count == 0 and relay.app.connections == 0,
                 what="subscribers gone")
    wait_for(lambda: fds() <= before + 2, what="descriptors released (%d -> %d)" % (before, fds()))


def test_a_burst_bigger_than_one_write_batch_arrives_without_more_traffic(relay):
    src = Source(relay)
    subs = [subscribe(relay, src.code, bulk=True) for _ in range(3)]
    joined(relay, src.code, 3)
    line = b"q" * 8191 + b"\n"
    src.send(line * 40)                       # 320 KiB at once: several 64 KiB batches
    for ws in subs:                           # no further publish, no close: all must still come
        assert [ws.recv_data()[1] for _ in range(40)] == [line[:-1]] * 40
