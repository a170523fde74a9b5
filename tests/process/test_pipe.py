"""``sphincter pipe`` end to end (issue 20, the client helper): the real relay process
(``--framing raw --write-back on``), a TCP source as the service side, the real
``python sphincter.py pipe`` process; wss:// against the relay's own ``--tls-cert`` with an
``openssl``-made certificate; a real HTTP proxy (tinyproxy); a small handshake recorder for
``--header``."""

import base64
import hashlib
import os
import random
import re
import socket
import subprocess
import sys

import gevent
import gevent.event
import pytest
from gevent.server import StreamServer

from conftest import unit, wait_for
from testkit import require_program, stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(ROOT, "sphincter.py")

pytestmark = pytest.mark.timeout(90)


def clean_env(extra=None):
    """The environment without SPHINCTER_* settings or proxies (a proxy set on the test
    machine must not reach the relay on 127.0.0.1)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SPHINCTER_") and k.lower() not in ("http_proxy", "https_proxy",
                                                                     "no_proxy", "all_proxy")}
    env.update(extra or {})
    return env


# --- the relay, a source, the pipe -----------------------------------------------------------

class RelayProcess:
    """``python sphincter.py --framing raw --write-back on`` on free loopback ports."""

    def __init__(self, tmp_path, *args):
        self.cert = args[list(args).index("--tls-cert") + 1] if "--tls-cert" in args else None
        self.log_path = str(tmp_path / ("relay-%d.log" % random.randrange(1 << 30)))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, ENTRY, "--tcp-host", "127.0.0.1", "--ws-host", "127.0.0.1",
             "--tcp-port", "0", "--ws-port", "0", "--framing", "raw", "--write-back", "on",
             "--log-level", "debug"] + list(args),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log, env=clean_env())
        m = wait_for(lambda: self.proc.poll() is None and re.search(
            r"listening tcp=([\d.]+):(\d+) ws=([\d.]+):(\d+)", self.log()) or self._died(),
            timeout=unit(20), what="the relay's 'listening' line")
        self.tcp = (m.group(1), int(m.group(2)))
        self.ws = (m.group(3), int(m.group(4)))

    def _died(self):
        assert self.proc.poll() is None, "the relay exited:\n" + self.log()
        return None

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        stop_process(self.proc)
        self._log.close()


@pytest.fixture
def relays(tmp_path):
    started = []

    def start(*args):
        r = RelayProcess(tmp_path, *args)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
    for r in started:
        assert "Traceback" not in r.log(), r.log()


@pytest.fixture
def relay(relays):
    return relays()


class Source:
    """The service side: a TCP source of the relay; reads its banner (ROOM, WRITE)."""

    def __init__(self, relay):
        self.sock = socket.create_connection(relay.tcp, timeout=unit(10))
        self.code = self._line("ROOM ")
        self.key = self._line("WRITE ")
        self.relay = relay

    def _line(self, prefix):
        line = b""
        while not line.endswith(b"\n"):
            chunk = self.sock.recv(1)
            assert chunk, "the relay closed during the banner: %r" % line
            line += chunk
        text = line.decode().strip()
        assert text.startswith(prefix), text
        return text[len(prefix):]

    def url(self, key=None, scheme="ws", host=None):
        host = host or "%s:%d" % self.relay.ws
        return "%s://%s/ws?room=%s&key=%s" % (scheme, host, self.code, self.key if key is None else key)

    def read_exactly(self, n, timeout=None):
        got = bytearray()
        with gevent.Timeout(timeout or unit(30), AssertionError("the source got %d bytes" % len(got))):
            while len(got) < n:
                chunk = self.sock.recv(1 << 20)
                assert chunk, "the relay closed the source after %d bytes" % len(got)
                got += chunk
        return bytes(got)

    def close(self):
        self.sock.close()


class Pipe:
    """``python sphincter.py pipe ...``; stdin and stdout are pipes, stderr a file."""

    def __init__(self, tmp_path, *args, env=None, stdin=subprocess.PIPE):
        self.err_path = str(tmp_path / ("pipe-%d.err" % random.randrange(1 << 30)))
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen([sys.executable, ENTRY, "pipe"] + list(args), stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=self._err, env=clean_env(env))

    def stderr(self):
        with open(self.err_path) as f:
            return f.read()

    def wait(self, timeout=None):
        try:
            with gevent.Timeout(timeout or unit(20)):
                return self.proc.wait()
        except gevent.Timeout:
            raise AssertionError("sphincter pipe did not exit; stderr:\n" + self.stderr())

    def stop(self):
        stop_process(self.proc)
        self._err.close()


@pytest.fixture
def pipes(tmp_path):
    started = []

    def start(*args, **kwargs):
        p = Pipe(tmp_path, *args, **kwargs)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
    for p in started:                    # an expected failure is one line, never a traceback
        assert "Traceback" not in p.stderr(), p.stderr()


def run_pipe(*args, env=None, stdin=b"", timeout=None):
    return subprocess.run([sys.executable, ENTRY, "pipe"] + list(args), input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(env),
                          timeout=timeout or unit(30))


def one_line(stderr):
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert "Traceback" not in text
    return text


def subscribers(relay, n):
    """Wait until the relay counts ``n`` subscribers (its /healthz)."""
    import json
    import urllib.request

    import ssl
    context = ssl.create_default_context(cafile=relay.cert) if relay.cert else None
    url = ("https" if relay.cert else "http") + "://%s:%d/healthz" % relay.ws

    def count():
        with urllib.request.urlopen(url, timeout=unit(5), context=context) as r:
            return json.loads(r.read())["subscribers"] == n
    wait_for(count, timeout=unit(10), interval=0.02, what="%d subscribers" % n)


def stream(data, out, chunk=100 * 1000):
    """Write ``data`` to the file ``out`` in pieces, then close it (a greenlet's work)."""
    for i in range(0, len(data), chunk):
        out.write(data[i:i + chunk])
        out.flush()
    out.close()


def read_all(f):
    got = bytearray()
    while True:
        chunk = f.read1(1 << 20) if hasattr(f, "read1") else f.read(1 << 20)
        if not chunk:
            return bytes(got)
        got += chunk


def sha(data):
    return hashlib.sha256(data).hexdigest()


# --- both directions, byte exact; the ends ------------------------------------------------------

def test_stdin_reaches_the_service_exactly_then_eof_closes_1000_and_exits_0(relay, pipes):
    src = Source(relay)
    data = os.urandom(5 << 20)
    p = pipes(src.url())
    writer = gevent.spawn(stream, data, p.proc.stdin)
    assert sha(src.read_exactly(len(data))) == sha(data)
    writer.get(timeout=unit(10))
    assert p.wait() == 0, p.stderr()
    assert p.stderr() == ""                              # quiet by default
    assert p.proc.stdout.read() == b""


def test_the_service_reaches_stdout_exactly_and_its_end_exits_0(relay, pipes):
    src = Source(relay)
    p = pipes(src.url())
    subscribers(relay, 1)
    data = os.urandom(4 << 20)
    reader = gevent.spawn(read_all, p.proc.stdout)
    src.sock.sendall(data)
    src.close()                                          # the service ends: every byte, then the close
    assert sha(reader.get(timeout=unit(30))) == sha(data)
    assert p.wait() == 0, p.stderr()
    assert p.stderr() == ""


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def stalled(progress, quiet=None):
    """Wait until ``progress()`` (a count) stops growing for ``quiet`` seconds: the writer is
    held back by flow control. Bounded by a deadline."""
    quiet = quiet or unit(0.5)
    last, since = [progress()], [gevent.get_hub().loop.now()]

    def check():
        now, value = gevent.get_hub().loop.now(), progress()
        if value != last[0]:
            last[0], since[0] = value, now
        return now - since[0] >= quiet
    wait_for(check, timeout=unit(30), interval=0.05, what="the writer to be held back")


def test_backpressure_both_ways_keeps_pipe_small(relays, pipes):
    """A service that does not read holds pipe's input back (nothing piles up in pipe), and so
    does a reader of pipe's output that does not read; then everything arrives, exact."""
    relay = relays("--subscriber-buffer-bytes", "1MiB")
    src = Source(relay)
    p = pipes(src.url())
    subscribers(relay, 1)
    up = os.urandom(40 << 20)
    written = [0]

    def write_up():
        for i in range(0, len(up), 1 << 16):
            p.proc.stdin.write(up[i:i + (1 << 16)])
            p.proc.stdin.flush()
            written[0] = i
    writer = gevent.spawn(write_up)
    stalled(lambda: written[0])                          # the service reads nothing yet
    assert written[0] < len(up) - (8 << 20)
    assert rss_mib(p.proc.pid) < 100
    assert sha(src.read_exactly(len(up), timeout=unit(60))) == sha(up)
    writer.get(timeout=unit(10))

    down = os.urandom(40 << 20)
    sent = [0]

    def send_down():
        for i in range(0, len(down), 1 << 16):
            src.sock.sendall(down[i:i + (1 << 16)])
            sent[0] = i
    sender = gevent.spawn(send_down)
    stalled(lambda: sent[0])                             # nobody reads pipe's stdout yet
    assert sent[0] < len(down) - (8 << 20)
    assert rss_mib(p.proc.pid) < 100
    got = hashlib.sha256()
    n = 0
    with gevent.Timeout(unit(60)):
        while n < len(down):
            chunk = p.proc.stdout.read1(1 << 20)
            assert chunk
            got.update(chunk)
            n += len(chunk)
    assert got.hexdigest() == sha(down)
    sender.get(timeout=unit(10))


def test_both_ways_at_once_like_a_protocol_session(relay, pipes):
    """A request/answer exchange over the session (what ssh does through ProxyCommand)."""
    src = Source(relay)
    p = pipes(src.url(), "--log-level", "info")
    subscribers(relay, 1)
    for i in range(20):
        question = b"question %d " % i + os.urandom(random.randrange(1, 200000))
        p.proc.stdin.write(question)
        p.proc.stdin.flush()
        assert src.read_exactly(len(question)) == question
        answer = b"answer %d " % i + os.urandom(random.randrange(1, 200000))
        src.sock.sendall(answer)
        got = bytearray()
        with gevent.Timeout(unit(10)):
            while len(got) < len(answer):
                got += p.proc.stdout.read1(1 << 20)
        assert bytes(got) == answer
    p.proc.stdin.close()
    assert p.wait() == 0
    assert "session ended: end of input: closed (1000)" in p.stderr()


def test_a_wrong_key_exits_1_naming_4403(relay):
    src = Source(relay)
    r = run_pipe(src.url(key="not-the-key"), stdin=b"secret")
    assert r.returncode == 1
    assert "4403" in one_line(r.stderr) and "wrong write key" in r.stderr.decode()


def test_no_such_room_exits_1_naming_4404(relay):
    r = run_pipe("ws://%s:%d/ws?room=NOROOM&key=x" % relay.ws)
    assert r.returncode == 1
    assert "4404" in one_line(r.stderr)


@pytest.mark.parametrize("url,needle", [
    ("ws://127.0.0.1:%d/ws?room=X", "cannot connect to 127.0.0.1:"),
    ("ws://nosuch.invalid/ws?room=X", "cannot resolve nosuch.invalid"),
    ("ws://127.0.0.1:%d/nowhere", "the relay refused the WebSocket"),
])
def test_connection_failures_are_one_line_and_exit_1(relay, url, needle):
    if "%d" in url:
        if "nowhere" in url:
            url = url % relay.ws[1]
        else:
            with socket.socket() as s:           # a port nothing listens on
                s.bind(("127.0.0.1", 0))
                url = url % s.getsockname()[1]
    r = run_pipe(url)
    assert r.returncode == 1
    assert needle in one_line(r.stderr), r.stderr


@pytest.mark.parametrize("args,needle", [
    (["http://example.org/ws"], "argument URL"),
    ([], "URL"),
    (["ws://h/ws", "--header", "no colon"], "--header"),
    (["ws://h/ws", "--header", "Sec-WebSocket-Key: x"], "--header"),
    (["ws://h/ws", "--proxy", "socks5://p:1080"], "--proxy"),
    (["ws://h/ws", "--listen", "nowhere"], "--listen"),
    (["ws://h/ws", "--close-timeout", "-1"], "--close-timeout"),
    (["ws://h/ws", "--read-size", "2MiB"], "--read-size"),
    (["wss://h/ws", "--tls-ca", "/nonexistent/ca.pem"], "--tls-ca"),
])
def test_bad_options_exit_2_naming_the_option(args, needle):
    r = run_pipe(*args)
    assert r.returncode == 2
    assert needle in one_line(r.stderr)


def test_a_bad_proxy_variable_is_named():
    r = run_pipe("wss://h/ws", env={"HTTPS_PROXY": "socks5://p:1080"})
    assert r.returncode == 2
    assert "HTTPS_PROXY" in one_line(r.stderr)


def test_help_lists_every_option():
    r = run_pipe("--help")
    assert r.returncode == 0
    out = r.stdout.decode()
    assert out.startswith("usage: sphincter pipe")
    for option in ("--listen", "--header", "--tls-ca", "--proxy", "--connect-timeout",
                   "--close-timeout", "SPHINCTER_PIPE_HEADER"):
        assert option in out


# --- --listen -------------------------------------------------------------------------------------

def listening(p):
    with gevent.Timeout(unit(10), AssertionError("no LISTENING line")):
        line = p.proc.stdout.readline().decode()
    m = re.match(r"LISTENING ([\d.]+):(\d+)$", line.strip())
    assert m, line
    return m.group(1), int(m.group(2))


def recv_exactly(sock, n):
    got = bytearray()
    with gevent.Timeout(unit(10), AssertionError("got %d of %d bytes" % (len(got), n))):
        while len(got) < n:
            chunk = sock.recv(n - len(got))
            assert chunk, "closed after %d bytes" % len(got)
            got += chunk
    return bytes(got)


def test_listen_gives_each_local_connection_its_own_session(relay, pipes):
    src = Source(relay)
    p = pipes(src.url(), "--listen", "127.0.0.1:0", "--log-level", "info")
    address = listening(p)
    a = socket.create_connection(address, timeout=unit(10))
    b = socket.create_connection(address, timeout=unit(10))
    subscribers(relay, 2)                                # two WebSockets
    a.sendall(b"from a\n")
    assert src.read_exactly(7) == b"from a\n"
    b.sendall(b"from b\n")
    assert src.read_exactly(7) == b"from b\n"
    src.sock.sendall(b"to all")                          # a room: each session gets it
    assert recv_exactly(a, 6) == b"to all"
    assert recv_exactly(b, 6) == b"to all"
    a.shutdown(socket.SHUT_WR)                           # a's input ends: its session closes 1000
    with gevent.Timeout(unit(10)):
        assert a.recv(100) == b""                        # and pipe closes a
    subscribers(relay, 1)
    src.sock.sendall(b"to b")                            # b's session goes on
    assert recv_exactly(b, 4) == b"to b"
    b.sendall(b"still b")
    assert src.read_exactly(7) == b"still b"
    assert p.proc.poll() is None
    wait_for(lambda: "session ended: end of input: closed (1000)" in p.stderr(), what="a's end")


def test_listen_a_refused_session_is_a_log_line_and_the_listener_goes_on(relay, pipes):
    src = Source(relay)
    p = pipes(src.url(key="wrong"), "--listen", "127.0.0.1:0")
    address = listening(p)
    for _ in range(2):
        c = socket.create_connection(address, timeout=unit(10))
        with gevent.Timeout(unit(10)):
            assert c.recv(100) == b""                    # the local connection is closed
        c.close()
    wait_for(lambda: p.stderr().count("4403 wrong write key") == 2, what="two log lines")
    assert p.proc.poll() is None


@pytest.mark.parametrize("listen", [False, True])
def test_sigterm_closes_the_sessions_and_exits_0(relay, pipes, listen):
    import signal
    src = Source(relay)
    p = pipes(src.url(), *(["--listen", "127.0.0.1:0"] if listen else []))
    if listen:
        local = socket.create_connection(listening(p), timeout=unit(10))
    subscribers(relay, 1)
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait() == 0, p.stderr()
    subscribers(relay, 0)                                # its WebSocket closed
    if listen:
        with gevent.Timeout(unit(10)):
            assert local.recv(100) == b""                # and the local connection too
    assert p.stderr() == ""


def test_listen_on_a_busy_port_is_one_line_exit_1(relay):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = run_pipe("ws://%s:%d/ws?room=X" % relay.ws, "--listen", "127.0.0.1:%d" % busy.getsockname()[1])
    assert r.returncode == 1
    assert "cannot listen on 127.0.0.1:" in one_line(r.stderr)


# --- --header ----------------------------------------------------------------------------------------

class HandshakeRecorder:
    """A WebSocket server that records each handshake's request head and accepts it; then, by
    default, sends one binary message and closes 1000 (``then(sock)``: something else). A real
    socket, so what pipe sends is seen as sent."""

    def __init__(self, then=None):
        self.then = then
        self.heads = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.server_port

    def _handle(self, sock, _address):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        text = head.decode("latin-1")
        self.heads.append(text)
        key = re.search(r"(?im)^sec-websocket-key:\s*(\S+)", text).group(1)
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
        if self.then is not None:
            return self.then(sock)
        sock.sendall(b"\x82\x05hello" + b"\x88\x02\x03\xe8")      # binary 'hello', close 1000
        sock.close()

    def stop(self):
        self.server.stop(timeout=0)


def test_headers_reach_the_server(pipes):
    server = HandshakeRecorder()
    try:
        p = pipes("ws://127.0.0.1:%d/ws?room=R&key=K" % server.port,
                  "--header", "Authorization: Bearer t0ken", "--header", "Cookie: a=1; b=2")
        assert p.wait() == 0, p.stderr()                # stdin stays open: the server ends it
    finally:
        server.stop()
    assert (p.proc.stdout.read(), p.stderr()) == (b"hello", "")
    head = server.heads[0]
    assert head.startswith("GET /ws?room=R&key=K HTTP/1.1\r\n")
    assert "\r\nAuthorization: Bearer t0ken\r\n" in head
    assert "\r\nCookie: a=1; b=2\r\n" in head
    assert "Sec-WebSocket-Protocol" not in head          # pipe offers no subprotocol


def read_frame(sock):
    """One client frame (masked, as a client must send it): ``(opcode, payload)``."""
    def exactly(n):
        got = b""
        while len(got) < n:
            chunk = sock.recv(n - len(got))
            assert chunk, "pipe closed the connection"
            got += chunk
        return got
    b0, b1 = exactly(2)
    assert b1 & 0x80, "an unmasked client frame"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(exactly(2), "big")
    elif n == 127:
        n = int.from_bytes(exactly(8), "big")
    mask = exactly(4)
    return b0 & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(exactly(n)))


def test_pings_are_answered_and_messages_are_binary(pipes):
    seen = gevent.event.AsyncResult()

    def then(sock):
        with gevent.Timeout(unit(10)):
            sock.sendall(b"\x89\x04ping")                # ping 'ping'
            frames = sorted([read_frame(sock), read_frame(sock)])   # the pong, and the
            sock.sendall(b"\x88\x02\x03\xe8")                        # bytes of stdin
            seen.set(frames)
        sock.close()

    server = HandshakeRecorder(then)
    try:
        p = pipes("ws://127.0.0.1:%d/ws" % server.port)
        p.proc.stdin.write(b"up")
        p.proc.stdin.flush()
        assert seen.get(timeout=unit(10)) == [(0x2, b"up"), (0xA, b"ping")]
        assert p.wait() == 0, p.stderr()
    finally:
        server.stop()


def test_no_answer_to_our_close_is_exit_1_after_close_timeout(pipes):
    held = []

    def then(sock):                                      # reads, never answers
        held.append(sock)
        while sock.recv(4096):
            pass

    server = HandshakeRecorder(then)
    try:
        r = run_pipe("ws://127.0.0.1:%d/ws" % server.port, "--close-timeout", str(unit(0.5)),
                     stdin=b"bye")
    finally:
        server.stop()
        for sock in held:
            sock.close()
    assert r.returncode == 1
    assert "no close frame from the relay within" in one_line(r.stderr)


def test_stdin_may_be_a_file(relay, tmp_path):
    src = Source(relay)
    data = os.urandom(3 << 20)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    with open(str(path), "rb") as f:
        p = subprocess.Popen([sys.executable, ENTRY, "pipe", src.url()], stdin=f,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        assert sha(src.read_exactly(len(data))) == sha(data)
        with gevent.Timeout(unit(20)):
            out, err = p.communicate()
        assert (p.returncode, out, err) == (0, b"", b"")
    finally:
        stop_process(p)


def test_stdout_going_away_ends_with_0(relay, pipes):
    src = Source(relay)
    p = pipes(src.url())
    subscribers(relay, 1)
    p.proc.stdout.close()                                # like `sphincter pipe URL | head -c 10`
    src.sock.sendall(os.urandom(1 << 20))
    assert p.wait() == 0, p.stderr()
    assert p.stderr() == ""
    subscribers(relay, 0)


# --- wss:// with --tls-ca --------------------------------------------------------------------------

def make_certificate(directory, *names):
    """A self-signed certificate (its own CA) for ``names`` (DNS names, IP addresses)."""
    openssl = require_program("openssl")
    cert, key = str(directory / ("%s.pem" % names[0])), str(directory / ("%s.key" % names[0]))
    san = ",".join(("IP:" if n[0].isdigit() else "DNS:") + n for n in names)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=%s" % names[0], "-addext", "subjectAltName=" + san,
                    "-keyout", key, "-out", cert], executable=openssl, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=unit(60))
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"), "localhost", "127.0.0.1")


def test_wss_with_tls_ca_both_ways(relays, pipes, certificate):
    cert, key = certificate
    relay = relays("--tls-cert", cert, "--tls-key", key)
    src = Source(relay)
    p = pipes(src.url(scheme="wss"), "--tls-ca", cert)
    subscribers(relay, 1)
    data = os.urandom(1 << 20)
    p.proc.stdin.write(data)
    p.proc.stdin.flush()
    assert sha(src.read_exactly(len(data))) == sha(data)
    reader = gevent.spawn(read_all, p.proc.stdout)
    src.sock.sendall(data[::-1])
    src.close()
    assert sha(reader.get(timeout=unit(20))) == sha(data[::-1])
    assert p.wait() == 0, p.stderr()


def test_wss_verifies_the_certificate_and_the_host_name(relays, certificate, tmp_path):
    cert, key = certificate
    relay = relays("--tls-cert", cert, "--tls-key", key)
    src = Source(relay)
    r = run_pipe(src.url(scheme="wss"))                  # the system's CAs do not know it
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "TLS with 127.0.0.1:%d failed: certificate verify failed" % relay.ws[1] in line, line
    other, other_key = make_certificate(tmp_path, "other.example")
    relay = relays("--tls-cert", other, "--tls-key", other_key)
    r = run_pipe(Source(relay).url(scheme="wss"), "--tls-ca", other)
    assert r.returncode == 1                             # trusted, but not for 127.0.0.1
    line = one_line(r.stderr)
    assert "TLS with 127.0.0.1:%d failed:" % relay.ws[1] in line and "127.0.0.1" in line, line


# --- through a real HTTP proxy (tinyproxy) -------------------------------------------------------------

class Tinyproxy:
    def __init__(self, tmp_path, *lines):
        program = require_program("tinyproxy")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = tmp_path / ("tinyproxy-%d.conf" % self.port)
        conf.write_text("\n".join(["Port %d" % self.port, "Listen 127.0.0.1", "Timeout 60",
                                   "LogLevel Info", "MaxClients 50", "Allow 127.0.0.1"]
                                  + list(lines)) + "\n")
        self.log_path = str(tmp_path / ("tinyproxy-%d.log" % self.port))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([program, "-d", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)

        def up():
            assert self.proc.poll() is None, "tinyproxy exited:\n" + self.log()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=unit(1)).close()
                return True
            except OSError:
                return False
        wait_for(up, timeout=unit(10), interval=0.05, what="tinyproxy listening")

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def connects(self):
        return len(re.findall(r"CONNECT 127\.0\.0\.1:\d+", self.log()))

    def stop(self):
        stop_process(self.proc)
        self._log.close()


@pytest.fixture
def tinyproxies(tmp_path):
    started = []

    def start(*lines):
        t = Tinyproxy(tmp_path, *lines)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


def roundtrip(relay, src, *args, env=None):
    """One session through pipe: bytes up, bytes down, the service's end; returns the result."""
    data = os.urandom(300000)
    p = subprocess.Popen([sys.executable, ENTRY, "pipe", src.url()] + list(args),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=clean_env(env))
    try:
        subscribers(relay, 1)
        p.stdin.write(data)
        p.stdin.flush()
        assert src.read_exactly(len(data)) == data
        src.sock.sendall(data[::-1])
        src.close()                 # pipe's stdin stays open: closing it would race the data
        with gevent.Timeout(unit(20)):
            out = read_all(p.stdout)
            err = p.stderr.read()
            p.wait()
        assert out == data[::-1]
        return p.returncode, err
    finally:
        stop_process(p)


@pytest.mark.parametrize("how", ["--proxy", "HTTP_PROXY", "http_proxy"])
def test_through_a_real_http_proxy(relay, tinyproxies, how):
    proxy = tinyproxies()
    url = "http://127.0.0.1:%d" % proxy.port
    args, env = (["--proxy", url], None) if how == "--proxy" else ([], {how: url})
    status, err = roundtrip(relay, Source(relay), *args, env=env)
    assert (status, err) == (0, b"")
    wait_for(lambda: proxy.connects() == 1, what="the proxy's CONNECT in its log")


def test_no_proxy_and_direct_bypass_the_proxy(relay, tinyproxies):
    proxy = tinyproxies()
    url = "http://127.0.0.1:%d" % proxy.port
    assert roundtrip(relay, Source(relay), env={"HTTP_PROXY": url, "NO_PROXY": "localhost,127.0.0.1"}) == (0, b"")
    assert roundtrip(relay, Source(relay), "--proxy", "direct", env={"HTTP_PROXY": url}) == (0, b"")
    assert proxy.connects() == 0


def test_proxy_authentication(relay, tinyproxies):
    proxy = tinyproxies("BasicAuth alice s3cret")
    status, err = roundtrip(relay, Source(relay), "--proxy", "http://alice:s3cret@127.0.0.1:%d" % proxy.port)
    assert (status, err) == (0, b"")
    r = run_pipe(Source(relay).url(), "--proxy", "http://alice:wrong@127.0.0.1:%d" % proxy.port)
    assert r.returncode == 1
    line = one_line(r.stderr)
    # 407 by the book; tinyproxy 1.11 answers a CONNECT with bad credentials 401
    assert re.search(r"the proxy refused the tunnel: 40[17] ", line) and "wrong" not in line, line


def test_a_proxy_that_refuses_the_port_is_one_line(relay, tinyproxies):
    proxy = tinyproxies("ConnectPort 443")
    r = run_pipe(Source(relay).url(), "--proxy", "http://127.0.0.1:%d" % proxy.port)
    assert r.returncode == 1
    assert "the proxy refused the tunnel: 403" in one_line(r.stderr), r.stderr


def test_wss_through_the_proxy(relays, tinyproxies, certificate):
    cert, key = certificate
    relay = relays("--tls-cert", cert, "--tls-key", key)
    proxy = tinyproxies()
    src = Source(relay)
    r_env = {"HTTPS_PROXY": "http://127.0.0.1:%d" % proxy.port, "HTTP_PROXY": "http://127.0.0.1:1"}
    p = subprocess.Popen([sys.executable, ENTRY, "pipe", src.url(scheme="wss"), "--tls-ca", cert],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=clean_env(r_env))
    try:
        subscribers(relay, 1)
        src.sock.sendall(b"over tls, through the proxy")
        src.close()
        with gevent.Timeout(unit(20)):
            out, err = read_all(p.stdout), p.stderr.read()
            p.wait()
        assert (p.returncode, out, err) == (0, b"over tls, through the proxy", b"")
    finally:
        stop_process(p)
    assert proxy.connects() == 1
