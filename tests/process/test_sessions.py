"""Session rooms (issue 20) end to end: the real relay with ``--sessions on``, the real
``sphincter connect --sessions`` process, a local service that speaks first (each connection its
own greeting), real WebSocket clients (websocket-client)."""

import hashlib
import os
import socket
import subprocess
import sys
import time

import gevent
import gevent.event
import pytest
import websocket
from gevent.server import StreamServer

from conftest import unit, wait_for
from testkit import stop_process
from test_pipe import ENTRY, RelayProcess, clean_env, relays  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(120)
BINARY = websocket.ABNF.OPCODE_BINARY


class GreetingEcho:
    """A service that speaks first: ``HELLO <n>\\n`` (n counts connections), then echoes; it
    records what each connection received before its EOF."""

    def __init__(self, echo=True):
        self.count = 0
        self.echo = echo
        self.tail = os.urandom(500000)
        self.received = {}
        self.ended = {}
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.port = self.server.address[1]

    def handle(self, sock, address):
        self.count += 1
        n = self.count
        got = bytearray()
        self.ended[n] = gevent.event.Event()
        try:
            sock.sendall(b"HELLO %d\n" % n)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                got += data
                if self.echo:
                    sock.sendall(data)
                if got.endswith(b"BYE\n"):            # close from the service side, after a tail
                    sock.sendall(self.tail)
                    break
        except OSError:
            pass
        finally:
            self.received[n] = bytes(got)
            self.ended[n].set()
            sock.close()

    def stop(self):
        self.server.stop()


class Agent:
    def __init__(self, tmp_path, relay, port, *extra):
        self.log_path = str(tmp_path / ("agent-%d.log" % port))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, ENTRY, "connect", "--relay", "%s:%d" % relay.tcp, "--from",
             "tcp:127.0.0.1:%d" % port, "--sessions", "--retry-min", "0.1", "--retry-max", "0.5",
             "--stats-interval", "0", "--log-level", "debug"] + list(extra),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, env=clean_env())

    def banner(self):
        with gevent.Timeout(unit(15), AssertionError("no banner; log:\n" + self.log())):
            room = self.proc.stdout.readline().decode().split()
            key = self.proc.stdout.readline().decode().split()
        assert room[0] == "ROOM" and key[0] == "WRITE", (room, key)
        return room[1], key[1]

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        code = stop_process(self.proc)
        self._log.close()
        return code


@pytest.fixture
def tunnel(relays, tmp_path):
    made = []

    def make(*relay_args, echo=True, agent_args=()):
        relay = relays("--sessions", "on", "--session-open-burst", "500", *relay_args)
        service = GreetingEcho(echo)
        agent = Agent(tmp_path, relay, service.port, *agent_args)
        made.append((agent, service))
        code, key = agent.banner()
        return relay, service, agent, code, key

    yield make
    for agent, service in made:
        agent.stop()
        service.stop()
        assert "Traceback" not in agent.log(), agent.log()


def client(relay, code, key, **kw):
    url = "ws://%s:%d/ws?room=%s" % (relay.ws[0], relay.ws[1], code) + ("&key=%s" % key if key else "")
    return websocket.create_connection(url, timeout=unit(15), **kw)


def read_exactly(ws, n):
    got = bytearray()
    while len(got) < n:
        opcode, data = ws.recv_data()
        assert opcode == BINARY, opcode
        got += data
    return bytes(got)


def close_code(ws):
    """Read until the server's close frame; its code."""
    while True:
        frame = ws.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            try:
                ws.send_close(int.from_bytes(frame.data[:2], "big"))     # the closing handshake
            except (OSError, websocket.WebSocketException):
                pass
            return int.from_bytes(frame.data[:2], "big"), frame.data[2:].decode()


def test_greeting_bytes_both_ways_and_the_service_closing(tunnel):
    relay, service, agent, code, key = tunnel()
    assert len(key) >= 22                          # 128 bits, URL-safe
    ws = client(relay, code, key)
    assert read_exactly(ws, 8) == b"HELLO 1\n"
    data = os.urandom(1 << 20)
    sender = gevent.spawn(lambda: [ws.send_binary(data[i:i + 100000]) for i in range(0, len(data), 100000)])
    echoed = read_exactly(ws, len(data))
    sender.get()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
    ws2 = client(relay, code, key)                 # a second client: its own connection
    assert read_exactly(ws2, 8) == b"HELLO 2\n"
    ws2.send("text é")                             # text messages arrive as their bytes
    assert read_exactly(ws2, len("text é".encode())) == "text é".encode()
    ws.close()                                     # the client closes: the service gets EOF
    assert service.ended[1].wait(unit(10))
    assert service.received[1] == data
    ws2.close()
    wait_for(lambda: "session %s." % code in relay.log() and "client closed" in relay.log(),
             timeout=unit(10), what="the session's log line")


def test_the_service_closing_delivers_every_byte_then_1000(tunnel):
    relay, service, agent, code, key = tunnel()
    ws = client(relay, code, key, subprotocols=["binary"])
    assert ws.getsubprotocol() == "binary"
    assert read_exactly(ws, 8) == b"HELLO 1\n"
    payload = os.urandom(300000) + b"BYE\n"
    ws.send_binary(payload)
    assert read_exactly(ws, len(payload) + len(service.tail)) == payload + service.tail
    assert close_code(ws) == (1000, "service closed")
    wait_for(lambda: "service closed" in relay.log(), timeout=unit(10), what="the log line")


def test_wrong_or_no_key_4403(tunnel):
    relay, service, agent, code, key = tunnel()
    for k in ("", "wrong" * 5):
        ws = client(relay, code, k)
        assert close_code(ws)[0] == 4403
    assert service.count == 0


def test_service_down_4502(tunnel):
    relay, service, agent, code, key = tunnel()
    service.stop()
    ws = client(relay, code, key)
    got = close_code(ws)
    assert got[0] == 4502 and "service unreachable" in got[1], got


def test_a_service_that_never_accepts_is_4502_within_the_agents_dial_timeout(relays, tmp_path):
    """A service host that drops the agent's SYNs: 4502 after --session-dial-timeout, not 4504."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)                          # never accepted: once its queue is full, SYNs are dropped
    queued = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(full.getsockname())
        queued.append(c)
    relay = relays("--sessions", "on", "--session-open-timeout", "8")
    agent = Agent(tmp_path, relay, full.getsockname()[1], "--session-dial-timeout", "1")
    try:
        code, key = agent.banner()
        started = time.monotonic()
        got = close_code(client(relay, code, key))
        assert got[0] == 4502 and "service unreachable" in got[1], got
        assert time.monotonic() - started < unit(6), "4502 came after the relay's open timeout"
    finally:
        agent.stop()
        for c in queued:
            c.close()
        full.close()


def test_a_quiet_session_is_pinged_so_proxies_keep_it(tunnel):
    """--ping-interval: a session where nothing flows gets pings (nginx's proxy_read_timeout does
    not cut it); the client's pongs reach nobody, and the session goes on."""
    relay, service, agent, code, key = tunnel("--ping-interval", "0.3")
    ws = client(relay, code, key)
    assert read_exactly(ws, 8) == b"HELLO 1\n"
    with gevent.Timeout(unit(5), AssertionError("no ping on a quiet session")):
        opcode, _ = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PING
    ws.pong(b"")                                        # websocket-client answers; an extra pong is harmless
    ws.send_binary(b"still here")
    got = bytearray()
    while len(got) < 10:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == BINARY:
            got += data
    assert bytes(got) == b"still here"
    ws.close()


def test_agent_that_never_answers_4504(relays):
    relay = relays("--sessions", "on", "--session-open-timeout", "1")
    control = socket.create_connection(relay.tcp)
    control.sendall(b"SESSIONS\n")
    f = control.makefile("rb")
    code = f.readline().split()[1].decode()
    key = f.readline().split()[1].decode()
    assert f.readline() == b"SESSIONS\n"
    ws = client(relay, code, key)
    assert f.readline().startswith(b"OPEN ")
    assert close_code(ws)[0] == 4504
    control.close()


def test_sessions_off_refuses_the_sessions_line(relays):
    relay = relays()
    control = socket.create_connection(relay.tcp)
    control.sendall(b"SESSIONS\n")
    control.settimeout(unit(10))
    got = b""
    while b"ERROR" not in got:
        data = control.recv(4096)
        if not data:
            break
        got += data
    assert b"ERROR sessions are off\n" in got, got
    control.close()


def test_limit_per_room_4429(tunnel):
    relay, service, agent, code, key = tunnel("--max-sessions-per-room", "2")
    a, b = client(relay, code, key), client(relay, code, key)
    read_exactly(a, 8), read_exactly(b, 8)
    c = client(relay, code, key)
    assert close_code(c) == (4429, "too many sessions")
    a.close()
    b.close()


def test_relay_wide_limit_4503(tunnel):
    relay, service, agent, code, key = tunnel("--max-sessions", "1")
    a = client(relay, code, key)
    read_exactly(a, 8)
    assert close_code(client(relay, code, key)) == (4503, "too many sessions")
    a.close()


def test_hundred_sessions_each_its_own_greeting_and_bytes(tunnel):
    relay, service, agent, code, key = tunnel("--max-sources-per-ip", "8")

    def one(i):
        ws = client(relay, code, key)
        hello = read_exactly(ws, 7)
        while not hello.endswith(b"\n"):
            hello += read_exactly(ws, 1)
        data = os.urandom(1 << 20)
        sender = gevent.spawn(lambda: [ws.send_binary(data[j:j + 65536]) for j in range(0, len(data), 65536)])
        echoed = read_exactly(ws, len(data))
        sender.get()
        ws.close()
        return hello, hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()

    slow = client(relay, code, key)                # a client that reads nothing: 128 MiB echoed at it
    chunk = os.urandom(65536)
    slow_sender = gevent.spawn(lambda: [slow.send_binary(chunk) for _ in range(2048)])
    jobs = [gevent.spawn(one, i) for i in range(100)]
    gevent.joinall(jobs, timeout=unit(100), raise_error=True)
    results = [j.value for j in jobs]
    assert all(ok for _, ok in results)
    assert len(set(h for h, _ in results)) == 100
    assert not slow_sender.ready()                 # still held back by its own service connection
    slow_sender.kill()
    slow.sock.close()


def test_per_address_session_opens_are_limited(relays, tmp_path):
    relay = relays("--sessions", "on", "--session-open-rate", "0.01", "--session-open-burst", "2")
    service = GreetingEcho()
    agent = Agent(tmp_path, relay, service.port)
    try:
        code, key = agent.banner()
        a, b = client(relay, code, key), client(relay, code, key)
        read_exactly(a, 8), read_exactly(b, 8)
        assert close_code(client(relay, code, key)) == (4429, "too many session opens")
        a.close()
        b.close()
    finally:
        agent.stop()
        service.stop()


def api_rooms(relay, token):
    import json
    import urllib.request
    req = urllib.request.Request("http://%s:%d/api/rooms" % relay.ws, headers={"Authorization": "Bearer " + token})
    return json.loads(urllib.request.urlopen(req, timeout=unit(10)).read())["rooms"]


def test_metrics_and_api_show_sessions(tunnel):
    import json
    import urllib.request
    relay, service, agent, code, key = tunnel("--admin-token", "a" * 20)
    ws = client(relay, code, key)
    read_exactly(ws, 8)
    base = "http://%s:%d" % relay.ws
    req = urllib.request.Request(base + "/api/rooms", headers={"Authorization": "Bearer " + "a" * 20})
    rooms = json.loads(urllib.request.urlopen(req, timeout=unit(10)).read())["rooms"]
    mine = [r for r in rooms if r["code"] == code]
    assert mine and mine[0]["kind"] == "sessions" and mine[0]["sessions"] == 1, rooms
    text = urllib.request.urlopen(base + "/metrics", timeout=unit(10)).read().decode()
    assert "sphincter_sessions_open 1.0" in text and "sphincter_session_rooms 1.0" in text
    ws.close()
    wait_for(lambda: 'sphincter_sessions_ended_total{outcome="client_closed"} 1.0' in
             urllib.request.urlopen(base + "/metrics", timeout=unit(10)).read().decode(),
             timeout=unit(10), what="the ended session in /metrics")


def test_a_named_session_room_with_its_write_key(relays, tmp_path):
    rooms = tmp_path / "rooms.txt"
    rooms.write_text("vnc s3cret-token sessions=on write=0123456789abcdefghij\n"
                     "feed other-token\n")
    relay = relays("--rooms-file", str(rooms), "--admin-token", "a" * 20)  # --sessions off: only vnc tunnels
    listed = api_rooms(relay, "a" * 20)
    assert sorted((r["code"], r.get("kind", "broadcast")) for r in listed) == [
        ("feed", "broadcast"), ("vnc", "sessions")], listed      # each room once, as what it is
    ws = client(relay, "vnc", "0123456789abcdefghij")
    assert close_code(ws)[0] == 4502                # no agent yet
    service = GreetingEcho()
    agent = Agent(tmp_path, relay, service.port, "--token", "s3cret-token")
    try:
        assert agent.banner() == ("vnc", "0123456789abcdefghij")
        ws = client(relay, "VNC", "0123456789abcdefghij")
        assert read_exactly(ws, 8) == b"HELLO 1\n"
        ws.send_binary(b"ping")
        assert read_exactly(ws, 4) == b"ping"
        ws.close()
        control = socket.create_connection(relay.tcp)   # an ephemeral session room: refused
        control.sendall(b"SESSIONS\n")
        control.settimeout(unit(10))
        assert control.recv(100) == b"ERROR sessions are off\n"
        control.close()
    finally:
        agent.stop()
        service.stop()


def test_sigterm_closes_sessions_with_1001(tunnel):
    relay, service, agent, code, key = tunnel()
    ws = client(relay, code, key)
    assert read_exactly(ws, 8) == b"HELLO 1\n"
    relay.proc.terminate()
    assert close_code(ws) == (1001, "server shutting down")
    assert relay.proc.wait(unit(15)) == 0
