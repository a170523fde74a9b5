"""Redis mode, in one process: several relays (nodes) on one real redis-server.

Fast checks of the room model across nodes (each node is a full Relay with its own
ports, its own RedisRoomModel and Redis connections). The subprocess tier, with
SIGKILL and Redis restarts, is tests/relay/test_cluster.py.
"""

import json
import os
import socket
import urllib.request

import gevent
import pytest
import websocket

from conftest import Source, recv_close, subscribe, unit, wait_for
from rediskit import RedisServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def nodes(redis_server, make_relay):
    """``nodes(n, **settings)``: n relays sharing ``redis_server``. ``redis_server`` comes first so
    that it is torn down last: relays stopped after their Redis wait for it (2.5 s each test)."""
    def make(n=2, **overrides):
        overrides.setdefault("redis_lease", 1.5)
        return [make_relay(redis_url=redis_server.url, node_name="n%d" % (i + 1), **overrides)
                for i in range(n)]
    return make


def lines(ws, n):
    return [ws.recv() for _ in range(n)]


def http_json(relay, path, headers=None):
    host, port = relay.ws_address
    req = urllib.request.Request("http://%s:%d%s" % (host, port, path), headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=unit(5)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_messages_cross_nodes_in_order_each_once(nodes):
    a, b, c = nodes(3)
    src = Source(a)
    subs = [subscribe(r, src.code) for r in (a, b, c)]
    n = 2000
    src.send(b"".join(b"m%d\n" % i for i in range(n)))
    want = ["m%d" % i for i in range(n)]
    for ws in subs:
        assert lines(ws, n) == want
    src.close()
    for ws in subs:
        assert recv_close(ws)[0] == 4410


def test_unknown_room_everywhere_is_4404_and_codes_are_unique(nodes):
    a, b = nodes(2)
    codes = {Source(r).code for r in (a, b) for _ in range(10)}
    assert len(codes) == 20
    ws = subscribe(b, "ZZZZZZ")
    assert recv_close(ws)[0] == 4404


def test_resume_on_another_node_keeps_subscribers(nodes):
    a, b = nodes(2, room_grace=unit(5))
    src = Source(a)
    line = src.readline()
    assert line.startswith(b"RESUME ")
    _, code, key = line.split()
    ws = subscribe(b, src.code)
    src.send(b"one\n")
    assert ws.recv() == "one"
    src.close()
    wait_for(lambda: http_json(b, "/status?room=%s" % src.code)[1].get("source") == "offline",
             what="offline on b")
    again = socket.create_connection(b.tcp_address, timeout=unit(5))
    again.sendall(b"RESUME %s %s\n" % (code, key))
    f = again.makefile("rb")
    assert f.readline() == b"ROOM %s\n" % code
    assert f.readline().startswith(b"RESUME %s " % code)
    again.sendall(b"two\n")
    assert ws.recv() == "two"
    f.close()
    again.close()


def test_named_room_takeover_across_nodes(nodes, tmp_path):
    rooms = tmp_path / "rooms"
    rooms.write_text("stage s3cret-token-1234\n")
    a, b = nodes(2, rooms_file=str(rooms))
    ws = subscribe(b, "stage")
    first = socket.create_connection(a.tcp_address, timeout=unit(5))
    first.sendall(b"AUTH s3cret-token-1234\n")
    f1 = first.makefile("rb")
    assert f1.readline() == b"ROOM stage\n"
    first.sendall(b"from-a\n")
    assert ws.recv() == "from-a"
    second = socket.create_connection(b.tcp_address, timeout=unit(5))
    second.sendall(b"AUTH s3cret-token-1234\n")
    f2 = second.makefile("rb")
    assert f2.readline() == b"ROOM stage\n"
    assert f1.readline() == b"ERROR replaced by a newer source\n"
    second.sendall(b"from-b\n")
    assert ws.recv() == "from-b"


def test_replay_on_another_node(nodes):
    a, b = nodes(2, replay=3)
    src = Source(a)
    src.send(b"".join(b"r%d\n" % i for i in range(10)))
    wait_for(lambda: a.registry.get(src.code).messages == 10)
    gevent.sleep(0.05)            # the batch leaves a's pipe
    ws = subscribe(b, src.code)
    assert lines(ws, 3) == ["r7", "r8", "r9"]
    src.send(b"r10\n")
    assert ws.recv() == "r10"


def test_write_back_across_nodes_and_held_for_the_next_source(nodes):
    a, b = nodes(2, write_back=True, room_grace=unit(5))
    src = Source(a)
    resume = src.readline().split()
    write = src.readline().split()
    assert write[0] == b"WRITE"
    writer = websocket.create_connection(
        "ws://%s:%d/ws?room=%s&key=%s" % (b.ws_address + (src.code, write[1].decode())), timeout=unit(5))
    writer.send("hello source")
    assert src.readline() == b"hello source\n"
    src.close()
    wait_for(lambda: http_json(b, "/status?room=%s" % src.code)[1].get("source") == "offline")
    writer.send("while away")
    again = socket.create_connection(b.tcp_address, timeout=unit(5))
    again.sendall(b"RESUME %s %s\n" % (resume[1], resume[2]))
    f = again.makefile("rb")
    assert f.readline().startswith(b"ROOM ")
    assert f.readline().startswith(b"RESUME ")
    assert f.readline() == b"WRITE %s\n" % write[1]
    assert f.readline() == b"while away\n"


def test_a_raw_writer_on_another_node_sends_64k_by_default(nodes):
    """--framing raw --write-back on: a writer's limit follows --max-message-bytes (issue 18)
    on every node; the message crosses Redis whole."""
    a, b = nodes(2, framing="raw", write_back=True)
    src = Source(a)
    write = src.readline().split()
    assert write[0] == b"WRITE"
    writer = websocket.create_connection(
        "ws://%s:%d/ws?room=%s&key=%s" % (b.ws_address + (src.code, write[1].decode())), timeout=unit(5))
    payload = os.urandom(64 * 1024)
    writer.send_binary(payload)
    writer.send_binary(b"<end>")
    got = b""
    while len(got) < len(payload) + 5:
        chunk = src.sock.recv(1 << 16)
        assert chunk, "source closed after %d bytes" % len(got)
        got += chunk
    assert got == payload + b"<end>"


def test_max_subscribers_is_relay_wide(nodes):
    a, b = nodes(2, max_subscribers_per_room=2)
    src = Source(a)
    keep = [subscribe(a, src.code), subscribe(b, src.code)]
    ws = subscribe(b, src.code)
    assert recv_close(ws)[0] == 4429
    assert len(keep) == 2


def test_presence_long_poll_wakes_on_another_node(nodes):
    a, b = nodes(2, room_grace=unit(5))
    src = Source(a)
    src.readline()
    result = gevent.spawn(http_json, b, "/status?room=%s&source=online&wait=10" % src.code)
    gevent.sleep(0.2)
    assert not result.ready()
    src.close()
    status, body = result.get(timeout=unit(5))
    assert status == 200 and body["source"] == "offline" and body["state"] == "waiting"


def test_health_metrics_api_name_the_node(nodes):
    a, b = nodes(2, admin_token="t0ken-for-the-api-1234")
    src = Source(a)
    status, health = http_json(b, "/healthz")
    assert status == 200 and health["node"] == "n2" and health["redis"] == "ok"
    status, listing = http_json(b, "/api/rooms", {"Authorization": "Bearer t0ken-for-the-api-1234"})
    assert status == 200 and listing["node"] == "n2"
    assert [r["code"] for r in listing["rooms"]] == [src.code]
    assert listing["rooms"][0]["source_node"] == "n1"
    host, port = b.ws_address
    text = urllib.request.urlopen("http://%s:%d/metrics" % (host, port)).read().decode()
    assert 'sphincter_node_info{node="n2"} 1.0' in text
    assert "sphincter_redis_up 1.0" in text


def test_stopping_node_closes_only_its_own_subscribers(nodes):
    a, b = nodes(2)
    src = Source(a)
    on_a, on_b = subscribe(a, src.code), subscribe(b, src.code)
    src.send(b"x\n")
    assert on_a.recv() == on_b.recv() == "x"
    a.stop()
    assert recv_close(on_a)[0] == 1001
    assert recv_close(on_b)[0] == 4410


def test_a_node_with_no_subscriber_in_a_room_receives_nothing_of_it(nodes):
    a, b = nodes(2)
    src = Source(a)
    src.send(b"".join(b"z%d\n" % i for i in range(100)))
    ws = subscribe(a, src.code)
    src.send(b"last\n")
    assert ws.recv() == "last"
    assert b.stats.redis_batches_in == 0


def test_named_room_write_key_is_the_same_on_every_node(nodes, tmp_path):
    rooms = tmp_path / "rooms"
    rooms.write_text("desk desk-token-123456\n")
    a, b = nodes(2, rooms_file=str(rooms), write_back=True)
    src = socket.create_connection(a.tcp_address, timeout=unit(5))
    src.sendall(b"AUTH desk-token-123456\n")
    f = src.makefile("rb")
    assert f.readline() == b"ROOM desk\n"
    write = f.readline().split()
    assert write[0] == b"WRITE"
    writer = websocket.create_connection(
        "ws://%s:%d/ws?room=desk&key=%s" % (b.ws_address + (write[1].decode(),)), timeout=unit(5))
    writer.send("to the desk")
    assert f.readline() == b"to the desk\n"


def test_a_tunnel_across_nodes_never_drops_its_reader(nodes):
    """Flow control across nodes: a reader on another node that stops reading for a while makes
    the source wait (TCP backpressure) instead of being cut."""
    import hashlib
    a, b = nodes(2, framing="raw", subscriber_buffer_bytes=1 << 20)
    src = Source(a)
    ws = subscribe(b, src.code, bulk=True)
    total = 24 << 20
    chunk = bytes(range(256)) * 256
    sent = hashlib.sha256()

    def feed():
        left = total
        while left:
            piece = chunk[:min(len(chunk), left)]
            src.send(piece)
            sent.update(piece)
            left -= len(piece)
    feeder = gevent.spawn(feed)
    gevent.sleep(unit(1.5))                     # the reader does not read meanwhile
    got, n = hashlib.sha256(), 0
    while n < total:
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY, (opcode, data[:40])
        got.update(data)
        n += len(data)
    feeder.get(timeout=unit(10))
    assert got.hexdigest() == sent.hexdigest()
    assert a.registry.get(src.code).source_pauses >= 1
    assert b.stats.slow_cutoffs == 0
