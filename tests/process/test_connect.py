"""``sphincter connect`` end to end: the real relay, the real ``sphincter.py connect`` process,
a local TCP service (or stdin, or an obs-websocket double), real WebSocket subscribers; a TCP
proxy in the middle to cut the relay link."""

import hashlib
import json
import os
import random
import socket
import subprocess
import sys

import gevent
import gevent.event
import pytest
import websocket
from gevent.server import StreamServer

from conftest import subscribe, unit, wait_for, ws_url
from testkit import stop_process
from obs_double import ObsDouble

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(ROOT, "sphincter.py")
TEXT = websocket.ABNF.OPCODE_TEXT


# --- helpers ---------------------------------------------------------------------------

class Connect:
    """``python sphincter.py connect ...`` as a child process; its log goes to a file."""

    def __init__(self, tmp_path, *args, stdin=subprocess.DEVNULL, env=None):
        self.log_path = str(tmp_path / ("connect-%d.log" % random.randrange(1 << 30)))
        self._err = open(self.log_path, "w")
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, ENTRY, "connect", "--retry-min", str(unit(0.1)), "--retry-max",
             str(unit(0.5)), "--stats-interval", "0", "--log-level", "debug"] + list(args),
            stdin=stdin, stdout=subprocess.PIPE, stderr=self._err, env=e)

    def stdout_line(self, timeout=None):
        with gevent.Timeout(timeout or unit(10), AssertionError("no line on stdout; log:\n" + self.log())):
            return self.proc.stdout.readline().decode()

    def room(self):
        line = self.stdout_line()
        assert line.startswith("ROOM "), (line, self.log())
        return line.split()[1]

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_log(self, needle, count=1, timeout=None):
        wait_for(lambda: self.log().count(needle) >= count, timeout=timeout or unit(10),
                 what="%r x%d in the connect log" % (needle, count))

    def stop(self):
        code = stop_process(self.proc)
        self._err.close()
        return code


@pytest.fixture
def connects():
    started = []

    def start(*args, **kwargs):
        c = Connect(*args, **kwargs)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()
    for c in started:                                # network trouble is one line, never a traceback
        assert "Traceback" not in c.log(), c.log()


class Service:
    """A local TCP service on a fixed port: keeps what it receives; ``send`` goes to the newest
    connection; ``stop``/``start`` is a restart."""

    def __init__(self, port=0):
        self.port = port
        self.conns = []
        self.received = bytearray()
        self.accepted = 0
        self.server = None
        self.on_connect = None      # called (in the handler) with each new socket
        self.reading = gevent.event.Event()     # clear it to stop reading (a slow service)
        self.reading.set()

    def start(self):
        self.server = StreamServer(("127.0.0.1", self.port), self._handle)
        self.server.start()
        self.port = self.server.server_port
        return self

    def _handle(self, sock, address):
        self.conns.append(sock)
        self.accepted += 1
        if self.on_connect is not None:
            gevent.spawn(self.on_connect, sock)
        try:
            while True:
                self.reading.wait()
                data = sock.recv(256 * 1024)
                if not data:
                    return
                self.received += data
        except OSError:
            pass
        finally:
            sock.close()

    def send(self, data):
        wait_for(lambda: self.conns, what="connect's connection to the service")
        self.conns[-1].sendall(data)

    def stop(self):
        self.server.stop(timeout=0)
        for sock in self.conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns = []


@pytest.fixture
def service():
    s = Service().start()
    yield s
    s.stop()


class Proxy:
    """A TCP proxy we control between ``connect`` and the relay; ``cut()`` breaks every link."""

    def __init__(self, target):
        self.target = target
        self.pairs = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.address = ("127.0.0.1", self.server.server_port)

    def _handle(self, client, address):
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        self.pairs.append((client, upstream))
        gevent.joinall([gevent.spawn(self._pipe, client, upstream), gevent.spawn(self._pipe, upstream, client)])
        client.close()
        upstream.close()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return len(pairs)

    def stop(self):
        self.cut()
        self.server.stop(timeout=0)


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def relay_arg(relay):
    return "%s:%d" % relay.tcp_address


def recv_text(ws):
    op, data = ws.recv_data()
    assert op == TEXT, (op, data)
    return data.decode()


# --- the TCP tunnel ----------------------------------------------------------------------

def test_tcp_service_lines_reach_the_room(make_relay, service, connects, tmp_path):
    relay = make_relay()
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port)
    code = c.room()
    c.wait_log("local service tcp:127.0.0.1:%d connected" % service.port)
    ws = subscribe(relay, code)
    wait_for(lambda: len(relay.registry.get(code).subscribers) == 1, what="subscriber joined")
    service.send(b"hello\nworld\n")
    assert [recv_text(ws), recv_text(ws)] == ["hello", "world"]
    assert "the relay has no grace period" in c.log()
    assert c.stop() == 0


def test_raw_50mib_byte_exact_with_flow_control(make_relay, service, connects, tmp_path):
    """50 MiB from the local service to a subscriber, sha256 equal; the room's flow control
    (small buffers) makes connect wait for the subscriber all along."""
    relay = make_relay(framing="raw", subscriber_buffer_bytes=1 << 20, max_message_bytes=256 * 1024)
    total = 50 << 20
    block = os.urandom(1 << 20)
    go = gevent.event.Event()
    sent = hashlib.sha256()

    def produce(sock):
        go.wait()
        for i in range(total // len(block)):
            chunk = block[i:] + block[:i]
            sent.update(chunk)
            sock.sendall(chunk)

    service.on_connect = produce
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port)
    code = c.room()
    ws = subscribe(relay, code, timeout=unit(30), bulk=True)
    wait_for(lambda: len(relay.registry.get(code).subscribers) == 1, what="subscriber joined")
    got, n, stalled = hashlib.sha256(), 0, False
    go.set()
    with gevent.Timeout(unit(50)):
        while n < total:
            op, data = ws.recv_data()
            got.update(data)
            n += len(data)
            if n > (5 << 20) and not stalled:       # a slow reader for a moment: the room
                stalled = True                       # stops reading connect, which stops
                gevent.sleep(unit(0.5))              # reading the service; nothing is lost
                assert rss_mib(c.proc.pid) < 100     # nor piled up in connect
    assert n == total
    assert got.hexdigest() == sent.hexdigest()
    assert relay.registry.stats.source_pauses > 0


def test_local_service_restart_keeps_the_room(make_relay, connects, tmp_path):
    relay = make_relay()
    svc = Service().start()
    port = svc.port
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % port)
    code = c.room()
    ws = subscribe(relay, code)
    wait_for(lambda: len(relay.registry.get(code).subscribers) == 1, what="subscriber joined")
    svc.send(b"before\n")
    assert recv_text(ws) == "before"
    svc.stop()                                   # the service goes away ...
    c.wait_log("local service tcp:127.0.0.1:%d lost" % port)
    c.wait_log("Connection refused")             # ... connect keeps trying ...
    svc2 = Service(port).start()                 # ... and it comes back
    try:
        svc2.send(b"after\n")
        assert recv_text(ws) == "after"
        assert relay.registry.get(code) is not None
        assert c.log().count("relay connected") == 1, c.log()   # the relay link stayed up
    finally:
        svc2.stop()


def test_relay_link_cut_resumes_the_same_room(make_relay, service, connects, tmp_path):
    relay = make_relay(room_grace=unit(30))
    proxy = Proxy(relay.tcp_address)
    try:
        c = connects(tmp_path, "--relay", "%s:%d" % proxy.address, "--from", "tcp:127.0.0.1:%d" % service.port)
        code = c.room()
        ws = subscribe(relay, code)
        wait_for(lambda: len(relay.registry.get(code).subscribers) == 1, what="subscriber joined")
        service.send(b"one\n")
        assert recv_text(ws) == "one"
        for n in (2, 3):                          # two blips in a row
            assert proxy.cut() == 1
            c.wait_log("relay connected: room %s" % code, count=n)
            service.send(b"blip %d\n" % n)
            assert recv_text(ws) == "blip %d" % n
        assert "room code changed" not in c.log()
        assert service.accepted == 1               # the local service never noticed
    finally:
        proxy.stop()


def test_relay_restart_without_grace_gets_a_new_room_and_says_so(make_relay, service, connects, tmp_path):
    relay = make_relay()
    proxy = Proxy(relay.tcp_address)
    try:
        c = connects(tmp_path, "--relay", "%s:%d" % proxy.address, "--from", "tcp:127.0.0.1:%d" % service.port)
        first = c.room()
        proxy.cut()
        second = c.room()                          # a new code is printed again
        assert second != first
        c.wait_log("the room code changed from %s to %s" % (first, second))
    finally:
        proxy.stop()


def test_relay_down_at_start_then_up(connects, service, tmp_path, make_relay):
    relay = make_relay()
    proxy = Proxy(relay.tcp_address)
    address = proxy.address
    proxy.stop()                                   # nothing listens there yet
    c = connects(tmp_path, "--relay", "%s:%d" % address, "--from", "tcp:127.0.0.1:%d" % service.port)
    c.wait_log("retrying in", count=2)
    proxy2 = Proxy(relay.tcp_address)
    proxy2.server.stop()
    proxy2.server = StreamServer(address, proxy2._handle)
    proxy2.server.start()
    try:
        assert len(c.room()) == 6
    finally:
        proxy2.stop()


def test_tls_to_the_relay_with_a_ca_file_and_server_name(make_relay, service, connects, tmp_path):
    from hardening_util import make_cert
    cert, key = make_cert(str(tmp_path), cn="relay.test")
    relay = make_relay(source_tls_cert=cert, source_tls_key=key)
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port,
                 "--tls", "--tls-ca", cert, "--tls-server-name", "relay.test")
    code = c.room()
    ws = subscribe(relay, code)
    wait_for(lambda: len(relay.registry.get(code).subscribers) == 1, what="subscriber joined")
    service.send(b"over tls\n")
    assert recv_text(ws) == "over tls"
    bad = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port,
                   "--tls", "--tls-ca", cert, "--tls-server-name", "other.test")
    # one line per attempt, retried (CPython 3.6 reports a wrong name as a CertificateError)
    bad.wait_log("certificate verify failed" if sys.version_info >= (3, 7) else "doesn't match", count=2)
    assert "Traceback" not in bad.log()


def test_relay_restart_gives_a_new_room_when_the_old_one_is_gone(make_relay, service, connects, tmp_path):
    relay = make_relay(room_grace=unit(30))
    tcp_port = relay.tcp_address[1]
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port)
    first = c.room()
    relay.stop()                                   # SIGTERM-like: ERROR server shutting down
    c.wait_log("ERROR server shutting down")
    relay2 = make_relay(room_grace=unit(30), tcp_port=tcp_port)
    second = c.room()                              # RESUME refused: a new room, announced
    assert second != first
    c.wait_log("room %s is gone" % first)
    ws = subscribe(relay2, second)
    wait_for(lambda: len(relay2.registry.get(second).subscribers) == 1, what="subscriber joined")
    service.send(b"new room\n")
    assert recv_text(ws) == "new room"


def test_two_connects_for_one_named_room_the_older_one_stops(make_relay, service, connects, tmp_path):
    rooms = tmp_path / "rooms.txt"
    rooms.write_text("scene 0123456789abcdef\n")
    relay = make_relay(rooms_file=str(rooms))
    env = {"SPHINCTER_CONNECT_TOKEN": "0123456789abcdef"}
    old = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port, env=env)
    assert old.room() == "scene"
    new = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port, env=env)
    assert new.room() == "scene"
    assert old.proc.wait(timeout=unit(10)) == 1     # no takeover ping-pong
    assert "replaced by a newer source" in old.log()
    assert new.proc.poll() is None


def test_keepalive_keeps_a_quiet_source_past_the_idle_timeout(make_relay, service, connects, tmp_path):
    relay = make_relay(source_idle_timeout=unit(1))
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port,
                 "--keepalive", str(unit(0.3)))
    code = c.room()
    ws = subscribe(relay, code)
    wait_for(lambda: len(relay.registry.get(code).subscribers) == 1, what="subscriber joined")
    service.send(b"first\n")
    assert recv_text(ws) == "first"
    gevent.sleep(unit(2.5))                           # quiet for 2.5 idle timeouts
    service.send(b"half a li")                        # mid-line: no keep-alive may cut it
    gevent.sleep(unit(0.7))                           # (2 keep-alive periods, < the idle timeout)
    service.send(b"ne\n")
    assert recv_text(ws) == "half a line"
    assert c.log().count("relay connected") == 1, c.log()
    assert relay.registry.get(code).messages == 2     # the newlines were never published


# --- stdin / stdout ------------------------------------------------------------------------

def test_stdin_to_the_room_banner_on_stderr(make_relay, connects, tmp_path):
    relay = make_relay()
    r, w = os.pipe()
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "-", stdin=r)
    os.close(r)
    c.wait_log("ROOM ")
    code = [l for l in c.log().splitlines() if l.startswith("ROOM ")][0].split()[1]
    ws = subscribe(relay, code)
    wait_for(lambda: len(relay.registry.get(code).subscribers) == 1, what="subscriber joined")
    os.write(w, b"from stdin\n")
    assert recv_text(ws) == "from stdin"
    lines = [b"line %05d %s" % (i, b"x" * 200) for i in range(5000)]      # ~1 MiB, then EOF
    from gevent import os as gos                   # a cooperative write: the relay is in this process
    gos.make_nonblocking(w)

    def feed(data):
        view = memoryview(data)
        while view:
            view = view[gos.nb_write(w, view):]
        os.close(w)

    writer_g = gevent.spawn(feed, b"\n".join(lines) + b"\n")
    assert [recv_text(ws).encode() for _ in lines] == lines   # all of it, before the room closes
    writer_g.get()                                 # end of input: connect exits 0
    assert c.proc.wait(timeout=unit(10)) == 0
    assert c.proc.stdout.read() == b""             # stdout carries data only


# --- relay options -------------------------------------------------------------------------

def test_named_room_with_token(make_relay, service, connects, tmp_path):
    rooms = tmp_path / "rooms.txt"
    rooms.write_text("scene 0123456789abcdef replay=1\n")
    relay = make_relay(rooms_file=str(rooms))
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port,
                 env={"SPHINCTER_CONNECT_TOKEN": "0123456789abcdef"})
    assert c.room() == "scene"
    service.send(b"{\"scene\": \"Live\"}\n")
    wait_for(lambda: service.conns, what="service connection")
    ws = subscribe(relay, "scene")
    assert json.loads(recv_text(ws)) == {"scene": "Live"}       # replayed on join


def test_wrong_token_exits_1_with_one_line(make_relay, service, connects, tmp_path):
    relay = make_relay(source_tokens=(b"right-token-123",))
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port,
                 "--token", "wrong-token-456")
    assert c.proc.wait(timeout=unit(10)) == 1
    assert "ERROR unauthorized" in c.log()
    assert "Traceback" not in c.log()


@pytest.mark.parametrize("args, needle", [
    (["--from", "-"], "--relay"),
    (["--relay", "localhost", "--from", "-"], "--relay"),
    (["--relay", "localhost:9000", "--from", "udp:1"], "--from"),
    (["--relay", "localhost:9000", "--from", "tcp:host"], "--from"),
    (["--relay", "localhost:9000", "--from", "-", "--retry-min", "x"], "--retry-min"),
    (["--relay", "localhost:9000", "--from", "-", "--obs-allow-requests"], "--obs-allow-requests"),
    (["--relay", "localhost:9000", "--from", "-", "--tls-ca", "/nonexistent"], "--tls-ca"),
    (["--relay", "localhost:9000", "--from", "-", "--framing", "raw", "--keepalive", "5"], "--keepalive"),
    (["--relay", "localhost:9000", "--from", "obs://h", "--local-connect", "on-write"], "--local-connect"),
])
def test_bad_options_exit_2_with_one_line(args, needle):
    p = subprocess.run([sys.executable, ENTRY, "connect"] + args, capture_output=True, text=True,
                       timeout=unit(30))
    assert p.returncode == 2, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr


def test_config_file_env_and_command_line_precedence(make_relay, service, connects, tmp_path):
    relay = make_relay()
    conf = tmp_path / "connect.conf"
    conf.write_text("relay = 127.0.0.1:1\nfrom = tcp:127.0.0.1:%d\nlog-format = json\n" % service.port)
    c = connects(tmp_path, "-c", str(conf), env={"SPHINCTER_CONNECT_RELAY": relay_arg(relay)})
    assert len(c.room()) == 6                       # env beat the file's relay
    c.wait_log('"msg": "relay connected: room ')    # the file's log format
    p = subprocess.run([sys.executable, ENTRY, "connect", "-c", str(conf), "--relay", "x"],
                       capture_output=True, text=True, timeout=unit(30))
    assert p.returncode == 2 and "--relay" in p.stderr          # the command line beat both


# --- obs-websocket 5 -----------------------------------------------------------------------

@pytest.fixture
def obs():
    double = ObsDouble(password="s3cret pass").start()
    yield double
    double.stop()


def test_obs_events_reach_the_room_unchanged_and_survive_an_obs_restart(make_relay, obs, connects, tmp_path):
    relay = make_relay(replay=1)
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "obs://127.0.0.1:%d" % obs.port,
                 env={"SPHINCTER_OBS_PASSWORD": "s3cret pass"})
    code = c.room()
    wait_for(lambda: len(obs.requests) == 1, what="the initial GetCurrentProgramScene")
    wait_for(lambda: relay.registry.get(code).messages == 1, what="its response published")
    ws = subscribe(relay, code)                         # replay=1: the current scene at once
    first = json.loads(recv_text(ws))
    assert first["op"] == 7 and first["d"]["responseData"]["currentProgramSceneName"] == "Intro"
    obs.emit("CurrentProgramSceneChanged", {"sceneName": "Starting \u2728"})
    line = recv_text(ws)
    assert json.loads(line) == {"op": 5, "d": {"eventType": "CurrentProgramSceneChanged", "eventIntent": 4,
                                               "eventData": {"sceneName": "Starting \u2728"}}}
    port = obs.port
    obs.stop()                                          # OBS quits ...
    c.wait_log("local service obs://127.0.0.1:%d lost" % port)
    obs.start()                                         # ... and starts again, same port
    c.wait_log("obs identified", count=2)
    assert json.loads(recv_text(ws))["op"] == 7         # the state again, after the restart
    obs.emit("CurrentProgramSceneChanged", {"sceneName": "Live"})
    assert json.loads(recv_text(ws))["d"]["eventData"] == {"sceneName": "Live"}
    assert c.log().count("relay connected") == 1
    late = subscribe(relay, code)                       # the last value is replayed on load
    assert json.loads(recv_text(late))["d"]["eventData"] == {"sceneName": "Live"}


def test_plain_websocket_service_messages_become_lines(make_relay, connects, tmp_path):
    """--from ws://: any WebSocket service (here the obs double, spoken to as a plain service:
    its Hello message arrives in the room as one line, unchanged)."""
    double = ObsDouble(password=None).start()
    try:
        relay = make_relay(replay=1)
        c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "ws://127.0.0.1:%d/" % double.port)
        code = c.room()
        wait_for(lambda: relay.registry.get(code).messages >= 1, what="hello published")
        ws = subscribe(relay, code)
        assert json.loads(recv_text(ws))["d"]["obsWebSocketVersion"] == "5.9.9-double"
    finally:
        double.stop()


def test_obs_wrong_password_is_reported_and_retried(make_relay, obs, connects, tmp_path):
    relay = make_relay()
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "obs://127.0.0.1:%d" % obs.port,
                 "--obs-password", "wrong")
    c.room()                                            # the relay side is up regardless
    c.wait_log("4009 authentication failed: wrong obs-websocket password", count=2)
    assert obs.auth_failures >= 2
    assert "Traceback" not in c.log()


def test_obs_without_password_when_obs_needs_one(make_relay, obs, connects, tmp_path):
    relay = make_relay()
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "obs://127.0.0.1:%d" % obs.port,
                 env={"SPHINCTER_OBS_PASSWORD": ""})
    c.wait_log("obs requires a password", count=2)   # one line per attempt, retried
    assert "Traceback" not in c.log() and c.proc.poll() is None


def test_obs_kick_stops_connect(make_relay, obs, connects, tmp_path):
    relay = make_relay()
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "obs://127.0.0.1:%d" % obs.port,
                 "--obs-password", "s3cret pass")
    c.room()
    c.wait_log("obs identified")
    obs.kick()
    assert c.proc.wait(timeout=unit(10)) == 1
    assert "4011 session invalidated" in c.log()


# --- the relay's side of the wire, scripted (what connect must understand) ---------------

class FakeRelay:
    """A source port that answers each connection with ``script(sock, first_bytes)``."""

    def __init__(self, script):
        self.script = script
        self.firsts = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.address = "127.0.0.1:%d" % self.server.server_port

    def _handle(self, sock, address):
        sock.settimeout(unit(0.3))
        try:
            first = sock.recv(4096)
        except socket.timeout:
            first = b""
        sock.settimeout(None)
        self.firsts.append(first)
        try:
            self.script(sock, first)
        finally:
            sock.close()

    def stop(self):
        self.server.stop(timeout=0)


def test_write_back_bytes_after_the_write_line_reach_the_service(service, connects, tmp_path):
    """After a WRITE line everything is data, even bytes that look like banner lines."""
    done = gevent.event.Event()

    def script(sock, first):
        sock.sendall(b"ROOM ABCDEF\nRESUME ABCDEF k3yk3yk3yk3yk3yk3yk3yk\nWRITE wk" + b"x" * 20 + b"\n")
        sock.sendall(b"ROOM not a banner\nWRITE neither\n\x00\xff")
        done.wait()

    fake = FakeRelay(script)
    try:
        c = connects(tmp_path, "--relay", fake.address, "--from", "tcp:127.0.0.1:%d" % service.port)
        assert c.room() == "ABCDEF"
        assert c.stdout_line() == "WRITE wk%s\n" % ("x" * 20)
        wait_for(lambda: bytes(service.received) == b"ROOM not a banner\nWRITE neither\n\x00\xff",
                 what="write-back at the service")
    finally:
        done.set()
        fake.stop()


def test_resume_line_is_sent_after_a_drop_and_error_tail_after_write_stops(service, connects, tmp_path):
    """Connect sends RESUME <CODE> <KEY> (with its AUTH line) when it reconnects; an ERROR line
    right before the relay closes is understood even after a WRITE line."""
    calls = []

    def script(sock, first):
        calls.append(first)
        if len(calls) == 1:
            sock.sendall(b"ROOM ABCDEF\nRESUME ABCDEF key1key1key1key1key1ke\nWRITE wkwkwkwkwkwkwkwkwkwk\n")
            return                                        # a drop
        sock.sendall(b"ROOM ABCDEF\nRESUME ABCDEF key2key2key2key2key2ke\nWRITE wkwkwkwkwkwkwkwkwkwk\n"
                     b"data\nERROR replaced by a newer source\n")

    fake = FakeRelay(script)
    try:
        c = connects(tmp_path, "--relay", fake.address, "--from", "tcp:127.0.0.1:%d" % service.port,
                     "--token", "tok-123456")
        assert c.proc.wait(timeout=unit(10)) == 1
        assert calls[0] == b"AUTH tok-123456\n"
        assert calls[1] == b"AUTH tok-123456\nRESUME ABCDEF key1key1key1key1key1ke\n"
        assert "replaced by a newer source" in c.log()
    finally:
        fake.stop()


# --- write-back: writers -> the local service ---------------------------------------------

def writer(relay, code, key, timeout=None, bulk=False):
    return websocket.create_connection(ws_url(relay, "room=%s&key=%s" % (code, key)),
                                       timeout=timeout or unit(5), skip_utf8_validation=bulk)


def room_and_key(c):
    code = c.room()
    line = c.stdout_line()
    assert line.startswith("WRITE "), (line, c.log())
    return code, line.split()[1]


def test_two_way_raw_50mib_each_way_byte_exact(make_relay, service, connects, tmp_path):
    """The tunnel, both directions at once: 50 MiB service -> writer and 50 MiB writer ->
    service through relay + connect, sha256 equal both ways, with flow control both ways."""
    relay = make_relay(framing="raw", write_back=True, subscriber_buffer_bytes=1 << 20,
                       max_message_bytes=256 * 1024, max_client_message_bytes=256 * 1024,
                       write_queue_bytes=1 << 20)
    total, block = 50 << 20, os.urandom(1 << 20)
    go = gevent.event.Event()
    down_sent, up_sent = hashlib.sha256(), hashlib.sha256()

    def chunks():
        for i in range(total // len(block)):
            yield block[i:] + block[:i]

    def produce(sock):
        go.wait()
        for chunk in chunks():
            down_sent.update(chunk)
            sock.sendall(chunk)

    service.on_connect = produce
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port,
                 "--framing", "raw")
    code, key = room_and_key(c)
    ws = writer(relay, code, key, timeout=unit(30), bulk=True)
    wait_for(lambda: len(relay.registry.get(code).subscribers) == 1, what="writer joined")

    def upload():
        for chunk in chunks():
            up_sent.update(chunk)
            for i in range(0, len(chunk), 256 * 1024):
                ws.send_binary(chunk[i:i + 256 * 1024])

    go.set()
    up = gevent.spawn(upload)
    got, n = hashlib.sha256(), 0
    with gevent.Timeout(unit(55)):
        while n < total:
            op, data = ws.recv_data()
            got.update(data)
            n += len(data)
        up.get()
        wait_for(lambda: len(service.received) >= total, timeout=unit(30), what="upload at the service")
    assert n == total and got.hexdigest() == down_sent.hexdigest()
    assert len(service.received) == total
    assert hashlib.sha256(service.received).hexdigest() == up_sent.hexdigest()


def test_a_stalled_service_pauses_writers_without_buffering(make_relay, service, connects, tmp_path):
    """Backpressure toward the service: while it reads nothing, connect holds one chunk, the
    relay's write queue fills and the writer is no longer read; nothing is lost or piled up."""
    relay = make_relay(framing="raw", write_back=True, max_client_message_bytes=64 * 1024)
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port,
                 "--framing", "raw")
    code, key = room_and_key(c)
    wait_for(lambda: service.conns, what="connect's connection to the service")
    service.reading.clear()
    total = 128 << 20                 # well above what loopback socket buffers hold (~10 MiB a hop)
    payload = os.urandom(total)
    w = writer(relay, code, key, timeout=unit(30), bulk=True)
    sent = [0]

    def upload():
        for i in range(0, total, 65536):
            w.send_binary(payload[i:i + 65536])
            sent[0] = i + 65536

    up = gevent.spawn(upload)
    def settled():                                   # the writer stopped: buffers are full
        now = sent[0]
        gevent.sleep(unit(0.3))
        return sent[0] == now

    wait_for(settled, timeout=unit(15), what="the writer to be held")
    # what is in flight: the kernel's socket buffers on three loopback hops (autotuned, up to
    # about 10 MiB each), the relay's write queue (1 MiB) and one chunk in connect
    assert sent[0] < total // 2, sent[0]
    assert rss_mib(c.proc.pid) < 100, rss_mib(c.proc.pid)
    service.reading.set()
    with gevent.Timeout(unit(40)):
        up.get()
    wait_for(lambda: len(service.received) >= total, timeout=unit(40), what="everything at the service")
    assert bytes(service.received) == payload


def test_stdout_gets_the_write_back_with_from_stdin(make_relay, connects, tmp_path):
    relay = make_relay(write_back=True)
    r, wfd = os.pipe()
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "-", "--stats-interval", "0.2", stdin=r)
    os.close(r)
    c.wait_log("WRITE ")
    lines = c.log().splitlines()
    code = [l for l in lines if l.startswith("ROOM ")][0].split()[1]
    key = [l for l in lines if l.startswith("WRITE ")][0].split()[1]
    w = writer(relay, code, key)
    w.send("to stdout")
    with gevent.Timeout(unit(10)):
        assert c.proc.stdout.readline() == b"to stdout\n"
    c.wait_log("status: relay connected (room %s), local connected" % code)
    os.close(wfd)
    assert c.proc.wait(timeout=unit(10)) == 0


def test_write_back_lines_reach_the_service(make_relay, service, connects, tmp_path):
    relay = make_relay(write_back=True)
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port)
    code, key = room_and_key(c)
    c.wait_log("local service tcp:127.0.0.1:%d connected" % service.port)
    w = writer(relay, code, key)
    w.send("left")
    w.send_binary(b"\xff\x00")
    wait_for(lambda: bytes(service.received) == b"left\n\xff\x00\n", what="write-back at the service")


def test_write_back_refused_without_key_or_with_a_wrong_key(make_relay, service, connects, tmp_path):
    relay = make_relay(write_back=True)
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port)
    code, key = room_and_key(c)
    c.wait_log("local service tcp:127.0.0.1:%d connected" % service.port)
    plain = subscribe(relay, code)                  # no key: what it sends is discarded
    plain.send("not for the source")
    bad = writer(relay, code, key[:-1] + ("A" if key[-1] != "A" else "B"))
    op, data = bad.recv_data(control_frame=True)
    assert op == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 4403
    good = writer(relay, code, key)
    good.send("marker")
    wait_for(lambda: bytes(service.received) == b"marker\n", what="only the keyed writer's line")


def test_write_back_to_a_websocket_service_and_back(make_relay, connects, tmp_path):
    """--from ws://: write-back lines become messages to the local WebSocket service (here the
    relay's own test echo endpoint), whose messages come back into the room as lines."""
    relay = make_relay(write_back=True)
    echo = make_relay(test_echo_endpoint=True)
    host, port = echo.ws_address
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "ws://%s:%d/_test/echo" % (host, port))
    code, key = room_and_key(c)
    c.wait_log("/_test/echo connected")
    w = writer(relay, code, key)
    w.send("ping \u00e9")
    assert recv_text(w) == "ping \u00e9"


def test_obs_requests_need_allow_requests(make_relay, obs, connects, tmp_path):
    relay = make_relay(write_back=True)
    request = {"op": 6, "d": {"requestType": "SetCurrentProgramScene", "requestId": "r1",
                              "requestData": {"sceneName": "BRB"}}}
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "obs://127.0.0.1:%d" % obs.port,
                 "--obs-password", "s3cret pass", "--obs-initial-requests", "")
    code, key = room_and_key(c)
    c.wait_log("obs identified")
    w = writer(relay, code, key)
    w.send(json.dumps(request))
    c.wait_log("obs request from a writer dropped")
    assert obs.requests == []
    c.stop()

    c2 = connects(tmp_path, "--relay", relay_arg(relay), "--from", "obs://127.0.0.1:%d" % obs.port,
                  "--obs-password", "s3cret pass", "--obs-allow-requests", "--obs-initial-requests", "")
    code, key = room_and_key(c2)
    c2.wait_log("obs identified")
    w = writer(relay, code, key)
    w.send(json.dumps(request))
    w.send(json.dumps({"op": 1, "d": {"rpcVersion": 1}}))     # not a request: dropped
    got = [json.loads(recv_text(w)) for _ in range(2)]
    by_op = {m["op"]: m["d"] for m in got}
    assert by_op[7]["requestId"] == "r1" and by_op[7]["requestStatus"]["result"] is True
    assert by_op[5]["eventData"] == {"sceneName": "BRB"}
    assert obs.requests == [request["d"]]
    c2.wait_log("writers may only send requests")


# --- the example overlay, in a real browser ------------------------------------------------

def test_obs_scene_overlay_in_chromium(make_relay, obs, connects, tmp_path):
    """examples/obs-scene.html opened from disk (as OBS does): OBS double -> connect -> named
    room with replay -> the page shows the current scene at once, then each scene change."""
    from cdp_browser import Browser, find_chromium
    from testkit import require_program
    binary = require_program("chromium", find_chromium())
    rooms = tmp_path / "rooms.txt"
    rooms.write_text("scene scene-token-0123 replay=10\n")
    relay = make_relay(rooms_file=str(rooms))
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "obs://127.0.0.1:%d" % obs.port,
                 "--obs-events", "4", env={"SPHINCTER_CONNECT_TOKEN": "scene-token-0123",
                                           "SPHINCTER_OBS_PASSWORD": "s3cret pass"})
    assert c.room() == "scene"
    wait_for(lambda: relay.registry.get("scene").messages == 1, what="the current scene published")
    b = Browser(binary)
    try:
        host, port = relay.ws_address
        b.navigate("file://%s/examples/obs-scene.html?relay=http://%s:%d/&room=scene&label=Now%%20showing"
                   % (ROOT, host, port))
        b.wait_for("document.getElementById('value').textContent === 'Intro'", what="replayed scene")
        obs.emit("CurrentProgramSceneChanged", {"sceneName": "Caf\u00e9 live"})
        b.wait_for("document.getElementById('value').textContent === 'Caf\u00e9 live'", what="scene change")
        b.call("Emulation.setDefaultBackgroundColorOverride", color={"r": 40, "g": 90, "b": 60, "a": 1})
        b.screenshot(os.path.join(ROOT, "artifacts", "obs-scene.png"))
        assert not b.errors, b.errors
    finally:
        b.close()


def test_readme_documents_every_connect_option():
    from sphincter_lib.agent.options import OPTIONS
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## `sphincter connect`"):readme.index("## OBS overlay in five minutes")]
    for opt in OPTIONS:
        assert "`--%s`" % opt.name in section, opt.name
        assert opt.env in section or opt.env.rsplit("_", 1)[1] in section, opt.env


NGINX_WS = """
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location = /ws {{
      proxy_pass http://127.0.0.1:{ws_port};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      proxy_buffering off;
    }}
"""


def test_tunnel_a_tcp_service_over_wss_through_nginx(make_relay, service, connects, tmp_path):
    """README 'Tunnel a local TCP service over WSS': a named room with a fixed write key, raw
    framing, the source link over TLS, the client over wss:// through a real nginx; bytes
    both ways, byte-exact."""
    from hardening_util import make_cert
    from nginxkit import Nginx
    cert, key = make_cert(str(tmp_path), cn="localhost")
    rooms = tmp_path / "rooms.txt"
    rooms.write_text("console 7d1e0c9a3b5f4e2a8c6d0b1f write=Xq3vN8sLp2Rt6Wy0Zb4Kc7Hm\n")
    relay = make_relay(framing="raw", write_back=True, max_client_message_bytes=256 * 1024,
                       rooms_file=str(rooms), source_tls_cert=cert, source_tls_key=key)
    total = 4 << 20
    down = os.urandom(total)
    up = os.urandom(total)
    joined = gevent.event.Event()
    service.on_connect = lambda sock: (joined.wait(), sock.sendall(down))   # a room without
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port,
                 "--framing", "raw", "--tls", "--tls-ca", cert,
                 env={"SPHINCTER_CONNECT_TOKEN": "7d1e0c9a3b5f4e2a8c6d0b1f"})
    assert c.room() == "console"
    with Nginx(str(tmp_path / "nginx"), NGINX_WS.format(cert=cert, key=key, ws_port=relay.ws_address[1]),
               listen_options=" ssl") as proxy:
        ws = websocket.create_connection(
            "wss://127.0.0.1:%d/ws?room=console&key=Xq3vN8sLp2Rt6Wy0Zb4Kc7Hm" % proxy.port, timeout=unit(20),
            sslopt={"ca_certs": cert, "check_hostname": False}, skip_utf8_validation=True)
        wait_for(lambda: len(relay.registry.get("console").subscribers) == 1, what="client joined")
        joined.set()                                   # subscribers drops what its source sends
        sender = gevent.spawn(lambda: [ws.send_binary(up[i:i + 65536]) for i in range(0, total, 65536)])
        got = b""
        with gevent.Timeout(unit(30)):
            while len(got) < total:
                got += ws.recv_data()[1]
            sender.get()
        wait_for(lambda: len(service.received) >= total, timeout=unit(20), what="upload at the service")
        assert got == down
        assert bytes(service.received) == up
        ws.close()


def test_local_connect_on_write_for_client_speaks_first_tunnels(make_relay, service, connects, tmp_path):
    """--local-connect on-write: the service is connected when a writer's data arrives (and
    again after it closed), so its answer goes to a room that has its client."""
    relay = make_relay(write_back=True)

    def answer(sock):
        wait_for(lambda: service.received.endswith(b"\n"), what="a request line")
        sock.sendall(b"answer to " + bytes(service.received).split(b"\n")[-2] + b"\n")
        sock.shutdown(socket.SHUT_RDWR)             # one request per connection, like HTTP/1.0
        del service.received[:]

    service.on_connect = answer
    c = connects(tmp_path, "--relay", relay_arg(relay), "--from", "tcp:127.0.0.1:%d" % service.port,
                 "--local-connect", "on-write")
    code, key = room_and_key(c)
    w = writer(relay, code, key)
    wait_for(lambda: len(relay.registry.get(code).subscribers) == 1, what="writer joined")
    assert service.accepted == 0                     # nothing connected before a write
    for n in (1, 2):
        w.send("request %d" % n)
        assert recv_text(w) == "answer to request %d" % n
        c.wait_log("connecting again on the next write-back data", count=n)
        assert service.accepted == n
