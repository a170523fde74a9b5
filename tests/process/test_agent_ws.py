"""``sphincter connect --relay ws://...``/``wss://...`` (issue 20, "Through port 443"): the agent's
links over WebSocket on the relay's HTTP port (``--ws-sources on``, ``/ws?source=1``).

The real relay and ``python sphincter.py connect`` processes; (a) a broadcast source over ws://
reaching a viewer, its end of input passed on as the link's FIN; (b) a session room over wss://
through a real nginx running the shipped ``conf/nginx-sphincter.conf`` block and a real HTTP
proxy (tinyproxy, ``HTTPS_PROXY``), to a service that speaks first: bytes both ways exact;
(c) ``--ws-sources off``: the documented 4403; (d) a bad ``--relay`` URL: one line naming it."""

import hashlib
import os
import re
import subprocess
import sys
import time

import gevent
import pytest
import websocket

from conftest import unit, wait_for
from nginxkit import free_port, nginx_binary
from testkit import stop_process
from test_pipe import (ENTRY, Tinyproxy, clean_env, make_certificate, relays,  # noqa: F401
                       tinyproxies)
from test_sessions import GreetingEcho, close_code, read_exactly

pytestmark = pytest.mark.timeout(90)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Connect:
    """``python sphincter.py connect ARGS`` with its stdout (banner) and log."""

    def __init__(self, tmp_path, *args, env=None, stdin=subprocess.DEVNULL):
        self.log_path = str(tmp_path / ("connect-%d.log" % free_port()))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, ENTRY, "connect", "--retry-min", "0.1", "--retry-max", "0.5",
             "--stats-interval", "0", "--log-level", "debug"] + list(args),
            stdin=stdin, stdout=subprocess.PIPE, stderr=self._log, env=clean_env(env))

    def lines(self, n, out=None):
        out = out or self.proc.stdout
        with gevent.Timeout(unit(15), AssertionError("no banner; log:\n" + self.log())):
            return [out.readline().decode().split() for _ in range(n)]

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        code = stop_process(self.proc)
        self._log.close()
        return code


@pytest.fixture
def connects(tmp_path):
    started = []

    def start(*args, **kw):
        c = Connect(tmp_path, *args, **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()
        assert "Traceback" not in c.log(), c.log()


def text_messages(ws, n):
    got = []
    while len(got) < n:
        opcode, data = ws.recv_data()
        got.append(data)
    return got


# --- (a) a broadcast source over ws:// ------------------------------------------------------------

def test_a_broadcast_source_over_ws_reaches_a_viewer_and_its_end_closes_the_room(relays, connects):
    relay = relays("--framing", "lines", "--ws-sources", "on", "--ping-interval", "0.05")
    # --from -: stdin to the room; the banner goes to stderr, so read it from the log
    agent = connects("--relay", "ws://%s:%d/" % relay.ws, "--from", "-", stdin=subprocess.PIPE)
    code = wait_for(lambda: re.search(r"(?m)^ROOM (\w+)$", agent.log()), timeout=unit(15),
                    what="ROOM on stderr").group(1)
    viewer = websocket.create_connection("ws://%s:%d/ws?room=%s" % (relay.ws + (code,)),
                                         timeout=unit(15))
    wait_for(lambda: "subscriber" in relay.log() and "joined room %s" % code in relay.log(),
             what="the viewer in its room")
    gevent.sleep(0.2)                          # a few pings (answered by connect as it reads)
    agent.proc.stdin.write(b"hello over 443\n" + b"x" * 200000 + b"\n")
    agent.proc.stdin.flush()
    assert text_messages(viewer, 2) == [b"hello over 443", b"x" * 200000]
    agent.proc.stdin.close()                   # end of input: the link's FIN, the room closes
    assert close_code(viewer)[0] == 4410
    assert agent.proc.wait(unit(15)) == 0
    assert re.search(r"room %s opened by 127\.0\.0\.1:\d+" % code, relay.log()), relay.log()


def test_a_cut_ws_link_resumes_the_same_room(relays, connects):
    from test_connect import Proxy
    relay = relays("--framing", "lines", "--ws-sources", "on", "--room-grace", "30")
    cutter = Proxy(relay.ws)                   # a TCP hop we can cut, between connect and the relay
    try:
        agent = connects("--relay", "ws://%s:%d" % cutter.address, "--from", "-", stdin=subprocess.PIPE)
        code = wait_for(lambda: re.search(r"(?m)^ROOM (\w+)$", agent.log()), timeout=unit(15),
                        what="ROOM on stderr").group(1)
        viewer = websocket.create_connection("ws://%s:%d/ws?room=%s" % (relay.ws + (code,)),
                                             timeout=unit(15))
        wait_for(lambda: "joined room %s" % code in relay.log(), what="the viewer in its room")
        assert cutter.cut() == 1
        wait_for(lambda: agent.log().count("relay connected: room %s" % code) == 2, timeout=unit(15),
                 what="the link back, same room")
        agent.proc.stdin.write(b"after the cut\n")
        agent.proc.stdin.flush()
        assert text_messages(viewer, 1) == [b"after the cut"]
        assert "room %s resumed by" % code in relay.log(), relay.log()
        assert "room code changed" not in agent.log()
        viewer.close()
    finally:
        cutter.stop()


# --- (b) a session room over wss:// through nginx and an HTTP proxy ---------------------------------

NGINX_MAIN = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    include {prefix}/sphincter.conf;
}}
"""


def render_nginx_block(port_tls, port_ws, cert, key):
    """The shipped block with only the site-specific lines replaced (each exactly once)."""
    with open(os.path.join(ROOT, "conf", "nginx-sphincter.conf")) as f:
        text = f.read()
    for pattern, repl in [(r"^\s*listen 443 ssl;$", "    listen 127.0.0.1:%d ssl;" % port_tls),
                          (r"^\s*listen \[::\]:443 ssl;$", ""),
                          (r"^\s*server 127\.0\.0\.1:8080;$", "    server 127.0.0.1:%d;" % port_ws),
                          (r"^\s*ssl_certificate .*;$", "    ssl_certificate %s;" % cert),
                          (r"^\s*ssl_certificate_key .*;$", "    ssl_certificate_key %s;" % key)]:
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n == 1, "the shipped nginx block no longer has %r" % pattern
    return text


@pytest.fixture
def nginx_in_front(tmp_path):
    """``start(ws_port, cert, key)``: nginx with conf/nginx-sphincter.conf; returns its TLS port."""
    procs = []

    def start(ws_port, cert, key):
        prefix = tmp_path / "nginx"
        (prefix / "tmp").mkdir(parents=True)
        port = free_port()
        (prefix / "sphincter.conf").write_text(render_nginx_block(port, ws_port, cert, key))
        (prefix / "nginx.conf").write_text(NGINX_MAIN.format(prefix=prefix))
        proc = subprocess.Popen([nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(proc)

        def up():
            assert proc.poll() is None, (prefix / "error.log").read_text()
            try:
                import socket
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, timeout=unit(15), interval=0.05, what="nginx listening")
        return port

    yield start
    for proc in procs:
        stop_process(proc)


def test_a_session_room_over_wss_through_nginx_and_an_http_proxy(relays, connects, tinyproxies,
                                                                  nginx_in_front, tmp_path):
    cert, key = make_certificate(tmp_path, "localhost", "127.0.0.1")
    relay = relays("--sessions", "on", "--ws-sources", "on", "--max-sources-per-ip", "2")
    port = nginx_in_front(relay.ws[1], cert, key)
    proxy = tinyproxies()
    service = GreetingEcho()
    try:
        agent = connects("--relay", "wss://localhost:%d/" % port, "--from",
                         "tcp:127.0.0.1:%d" % service.port, "--sessions", "--tls-ca", cert,
                         env={"HTTPS_PROXY": "http://127.0.0.1:%d" % proxy.port})
        (room, code), (write, key) = agent.lines(2)
        assert (room, write) == ("ROOM", "WRITE")
        url = "wss://localhost:%d/ws?room=%s&key=%s" % (port, code, key)
        options = {"ca_certs": cert}
        a = websocket.create_connection(url, timeout=unit(15), sslopt=options)
        b = websocket.create_connection(url, timeout=unit(15), sslopt=options)
        assert read_exactly(a, 8) == b"HELLO 1\n"
        assert read_exactly(b, 8) == b"HELLO 2\n"
        data = os.urandom(1 << 20)
        sender = gevent.spawn(lambda: [a.send_binary(data[i:i + 100000])
                                       for i in range(0, len(data), 100000)])
        echoed = read_exactly(a, len(data))
        sender.get()
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        b.send_binary(b"two\n")
        assert read_exactly(b, 4) == b"two\n"
        a.close()                               # the client's end: the service gets every byte, then EOF
        assert service.ended[1].wait(unit(10))
        assert service.received[1] == data
        b.send_binary(b"BYE\n")                 # the service's end: every byte, then 1000
        assert read_exactly(b, 4 + len(service.tail)) == b"BYE\n" + service.tail
        assert close_code(b) == (1000, "service closed")
        # three links (control, two sessions) each through the proxy, the control link counted as
        # a source of the address nginx forwarded
        assert len(re.findall(r"CONNECT localhost:%d" % port, proxy.log())) == 3, proxy.log()
        assert "through the proxy http://127.0.0.1:%d (HTTPS_PROXY)" % proxy.port in agent.log()
        assert re.search(r"session room %s opened by 127\.0\.0\.1\b" % code, relay.log())
    finally:
        service.stop()


# --- (c) the gate off, (d) a bad URL -----------------------------------------------------------------

def test_ws_sources_off_refuses_with_4403_and_connect_stops(relays, connects):
    relay = relays()                            # --ws-sources off: the default
    agent = connects("--relay", "ws://%s:%d" % relay.ws, "--from", "tcp:127.0.0.1:9")
    assert agent.proc.wait(unit(15)) == 1
    line = [l for l in agent.log().splitlines() if "ERROR" in l][-1]
    assert "refused the source link over WebSocket (close 4403 source links are off): it needs " \
           "--ws-sources on" in line, agent.log()
    assert "source link from 127.0.0.1 refused: source links are off" in relay.log()


def test_a_source_link_from_a_page_is_held_to_allowed_origins(relays):
    relay = relays("--ws-sources", "on", "--allowed-origins", "https://ok.example")
    for origin, expected in (("https://evil.example", (4403, "origin not allowed")),
                             ("https://ok.example", (1000, ""))):
        ws = websocket.create_connection("ws://%s:%d/ws?source=1" % relay.ws, timeout=unit(15),
                                         origin=origin)
        if expected[0] == 1000:
            assert received(ws, b"\n").startswith(b"ROOM ")
            ws.send_binary(b"")                  # FIN: the room closes, then the link
        assert close_code(ws) == expected


@pytest.mark.parametrize("url, needle", [
    ("wss://:443/", "no host"),
    ("ws://relay.example.org:99999/", "invalid port"),
    ("https://relay.example.org/", "expected HOST:PORT, ws://"),
])
def test_a_bad_relay_url_is_one_line_naming_the_option(url, needle):
    r = subprocess.run([sys.executable, ENTRY, "connect", "--relay", url, "--from", "-"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=clean_env(), timeout=unit(30))
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "argument --relay" in lines[0] and needle in lines[0], lines


# --- the wire, as a plain WebSocket client sees it ------------------------------------------------------

def source_link(relay, forwarded_for):
    return websocket.create_connection("ws://%s:%d/ws?source=1" % relay.ws, timeout=unit(15),
                                       header=["X-Forwarded-For: %s" % forwarded_for])


def received(ws, until):
    got = b""
    while until not in got:
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY, opcode
        got += data
    return got


def test_the_wire_byte_stream_fin_and_the_forwarded_address_per_ip_limit(relays):
    relay = relays("--framing", "lines", "--ws-sources", "on", "--max-sources-per-ip", "1",
                   "--source-tokens", "t0ken", "--ping-interval", "0.05")
    a = source_link(relay, "203.0.113.7")
    a.send_binary(b"AUTH t0ken\nhel")                  # the preamble, then data split anywhere
    code = received(a, b"\n").decode().split()[1]
    viewer = websocket.create_connection("ws://%s:%d/ws?room=%s" % (relay.ws + (code,)),
                                         timeout=unit(15))
    wait_for(lambda: "joined room %s" % code in relay.log(), what="the viewer in its room")
    a.send(u"lo\nwor")                                  # text messages are bytes too
    a.send_binary(b"ld\n")
    assert text_messages(viewer, 2) == [b"hello", b"world"]
    b = source_link(relay, "203.0.113.7")               # the same forwarded address: over the limit
    b.send_binary(b"AUTH t0ken\n")
    assert received(b, b"\n") == b"ERROR too many connections\n"
    c = source_link(relay, "198.51.100.9")              # another one: fine
    c.send_binary(b"AUTH nope\n")
    assert received(c, b"\n") == b"ERROR unauthorized\n"
    a.send_binary(b"")                                  # FIN: the room publishes and closes
    assert close_code(viewer)[0] == 4410
    assert close_code(a)[0] == 1000
    log = relay.log()
    assert "room %s opened by 203.0.113.7" % code in log, log
    assert "source 203.0.113.7 refused: too many connections" in log
    assert "source 198.51.100.9 refused: unauthorized" in log


def test_a_blasting_source_link_is_not_read_ahead_of_a_slow_viewer(relays):
    """TCP's backpressure through the link: the relay stops reading it while the viewer is behind,
    so the sender stalls after a bounded amount (room budget + buffers), then everything arrives."""
    relay = relays("--ws-sources", "on")                  # (raw framing, see RelayProcess)
    src = source_link(relay, "203.0.113.7")
    code = received(src, b"\n").decode().split()[1]      # ROOM, WRITE (write-back is on)
    viewer = websocket.create_connection("ws://%s:%d/ws?room=%s" % (relay.ws + (code,)),
                                         timeout=unit(30), skip_utf8_validation=True)
    wait_for(lambda: "joined room %s" % code in relay.log(), what="the viewer in its room")
    data = os.urandom(1 << 20) * 48
    sent = [0]

    def blast():
        for i in range(0, len(data), 1 << 20):
            src.send_binary(data[i:i + (1 << 20)])
            sent[0] += 1 << 20
    sender = gevent.spawn(blast)
    last = [-1, time.monotonic()]

    def stalled():
        if sent[0] != last[0]:
            last[:] = [sent[0], time.monotonic()]
        return time.monotonic() - last[1] > unit(0.5)
    wait_for(stalled, timeout=unit(20), what="the sender held back")
    assert sent[0] <= 32 << 20, "the relay read %d MiB ahead of its viewer" % (sent[0] >> 20)
    got, n = hashlib.sha256(), 0
    with gevent.Timeout(unit(30)):
        while n < len(data):
            chunk = viewer.recv()
            got.update(chunk)
            n += len(chunk)
    assert got.digest() == hashlib.sha256(data).digest()
    sender.get()
    viewer.close()
