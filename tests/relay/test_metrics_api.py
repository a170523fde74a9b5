"""/metrics, the admin API and --log-format, against an in-process relay on real sockets
(and, for the log format, the real process)."""

import http.client
import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families

from sphincter_lib import __version__, logformat
from sphincter_lib.relay import config
from sphincter_lib.errors import ConfigError
from sphincter_lib.relay.metrics import RelayCollector
from sphincter_lib.rooms import registry as rooms
from sphincter_lib.relay.server import Relay
from sphincter_lib.proto import frames as wsproto

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "s3cret-admin-token-0123456789"

pytestmark = pytest.mark.timeout(60)


def poll(check, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s (last %r)" % (what, value))
        time.sleep(0.02)


@pytest.fixture
def relay():
    started = []

    def make(*args):
        settings = config.parse(["--tcp-host", "127.0.0.1", "--tcp-port", "0", "--ws-host",
                                 "127.0.0.1", "--ws-port", "0", "--shutdown-timeout", "2",
                                 "--close-timeout", "1", *args], env={})
        r = Relay(settings).start()
        r.port = r.ws_address[1]
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def request(r, path, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class Source:
    def __init__(self, r):
        self.sock = socket.create_connection(r.tcp_address, timeout=10)
        banner = b""
        while not banner.endswith(b"\n"):
            banner += self.sock.recv(1)
        self.code = banner.split()[1].decode()
        self.address = "%s:%d" % self.sock.getsockname()

    def close(self):
        self.sock.close()


def subscribe(r, code):
    return websocket.create_connection("ws://127.0.0.1:%d/ws?room=%s" % (r.port, code), timeout=10)


def close_code(ws):
    opcode, payload = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    return struct.unpack("!H", payload[:2])[0]


def scrape(r, accept=None):
    status, headers, body = request(r, "/metrics", {"Accept": accept} if accept else {})
    assert status == 200
    return headers, body.decode()


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics, name, **labels):
    return metrics.get((name, tuple(sorted(labels.items()))))


# -- /metrics --------------------------------------------------------------------------------

def test_metrics_report_traffic_rejections_and_close_codes(relay):
    r = relay()
    src = Source(r)
    subs = [subscribe(r, src.code), subscribe(r, src.code.lower())]
    unknown = subscribe(r, "ZZZZZZ")
    assert close_code(unknown) == 4404
    src.sock.sendall(b"one\ntwo\n\xff\xfe\n")
    for ws in subs:
        assert [ws.recv() for _ in range(3)] == ["one", "two", b"\xff\xfe"]
    headers, text = scrape(r)
    assert headers["Content-Type"].startswith("text/plain")
    assert src.code not in text, "room codes must not leak through /metrics"
    m = samples(text)
    assert value(m, "sphincter_rooms_open") == 1
    assert value(m, "sphincter_subscribers") == 2
    assert value(m, "sphincter_messages_in_total") == 3
    assert value(m, "sphincter_bytes_in_total") == 3 + 3 + 2
    poll(lambda: value(samples(scrape(r)[1]), "sphincter_messages_out_total") == 6, what="deliveries")
    assert value(m, "sphincter_rejected_connections_total", kind="subscriber", reason="unknown_room") == 1
    assert value(m, "sphincter_close_codes_total", code="4404") == 1
    assert value(m, "sphincter_build_info", version=__version__, python=sys.version.split()[0],
                 gevent=__import__("gevent").__version__) == 1
    assert value(m, "sphincter_start_time_seconds") > 0
    assert value(m, "process_resident_memory_bytes") > 0

    src.close()
    assert [close_code(ws) for ws in subs] == [4410, 4410]
    m = poll(lambda: (lambda m: value(m, "sphincter_subscribers") == 0 and m)(samples(scrape(r)[1])),
             what="subscribers gone")
    assert value(m, "sphincter_rooms_open") == 0
    assert value(m, "sphincter_rooms_closed_total") == 1
    assert value(m, "sphincter_close_codes_total", code="4410") == 2
    assert value(m, "sphincter_subscribers_joined_total") == 2


def test_metrics_openmetrics_and_methods(relay):
    r = relay()
    headers, text = scrape(r, accept="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    assert request(r, "/metrics", method="POST")[0] == 405


def test_collector_reads_state_at_scrape_time():
    """No hook on the data path: a scrape sees whatever the rooms and counters hold now."""
    reg = rooms.RoomRegistry(encode=wsproto.encode_message, buffer_bytes=1 << 20)
    collector = RelayCollector(reg, connections=lambda: 7)

    def current():
        return {s.name: s.value for fam in collector.collect() for s in fam.samples if not s.labels}

    assert current()["sphincter_rooms_open"] == 0
    room = reg.open(rooms.Source("127.0.0.1:5555"))
    sub = room.subscribe("127.0.0.1:6666")
    room.publish(b"x" * 100, True)
    now = current()
    assert now["sphincter_rooms_open"] == 1 and now["sphincter_subscribers"] == 1
    assert now["sphincter_websocket_connections"] == 7
    assert now["sphincter_messages_in_total"] == 1 and now["sphincter_bytes_in_total"] == 100
    assert now["sphincter_backlog_bytes"] >= 100 and now["sphincter_subscriber_lag_bytes_max"] >= 100
    sub.take(1 << 20)
    sub.commit()
    assert current()["sphincter_subscriber_lag_bytes_max"] == 0


class NodeRegistry(rooms.RoomRegistry):
    """In-process rooms reporting as a Redis-mode node does, for the Redis-only metrics' names."""
    node, redis_state = "node-1", "ok"


def exported_names():
    """Every metric name a scrape can yield, Redis mode included, without the sphincter_ prefix."""
    reg = NodeRegistry(encode=wsproto.encode_message, buffer_bytes=1 << 20)
    names = set()
    for family in RelayCollector(reg, connections=lambda: 0).collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        assert family.name.startswith("sphincter_")
        names.add(family.name[len("sphincter_"):] + suffix)
    return names


def test_every_exported_metric_is_documented():
    """The metrics module's docstring and the README's /metrics table list exactly what is
    exported."""
    import sphincter_lib.relay.metrics as metrics
    names = exported_names()
    assert {"write_back_messages_received_total", "write_back_received_bytes_total",
            "write_back_messages_sent_total", "write_back_writer_pauses_total",
            "node_info", "redis_outages_total"} <= names
    doc = metrics.__doc__[metrics.__doc__.index("Exposed"):]
    in_doc = set(re.findall(r"``([a-z_]+)(?:\{[a-z,]*\})?``", doc)) - {"sphincter_", "python_info"}
    assert in_doc == names
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("### Monitoring: `/metrics`"):]
    section = section[:section.index("\n### ", 1)]
    in_readme = set(re.findall(r"`sphincter_([a-z_]+)(?:\{[a-z,]*\})?`", section))
    assert in_readme == names


# -- /api/rooms ------------------------------------------------------------------------------

def test_api_is_off_without_a_token(relay):
    r = relay()
    src = Source(r)
    nothing = request(r, "/no/such/path")
    for path in ("/api/rooms", "/api/rooms/", "/api/rooms/" + src.code):
        status, headers, body = request(r, path, {"Authorization": "Bearer " + TOKEN})
        assert (status, body) == (nothing[0], nothing[2]) == (404, b"not found\n")
        assert src.code.encode() not in body


def test_api_with_token(relay):
    r = relay("--admin-token", TOKEN)
    src = Source(r)
    ws = subscribe(r, src.code)
    src.sock.sendall(b"hello\n{\"a\": 1}\n")
    assert ws.recv() == "hello"

    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": "Basic " + TOKEN}, {"Authorization": TOKEN},
                    {"Authorization": "Bearer " + TOKEN[:-1]}):
        status, h, body = request(r, "/api/rooms", headers)
        assert status == 401, headers
        assert h["WWW-Authenticate"].startswith("Bearer")
        assert src.code.encode() not in body

    auth = {"Authorization": "Bearer " + TOKEN}
    status, h, body = request(r, "/api/rooms", auth)
    assert status == 200 and h["Content-Type"] == "application/json"
    assert h["Cache-Control"] == "no-store"
    listing = json.loads(body)
    assert listing["count"] == 1
    room = listing["rooms"][0]
    assert room["code"] == src.code
    assert room["source"] == src.address
    assert room["subscribers"] == 1 and room["peak_subscribers"] == 1
    assert room["messages"] == 2 and room["bytes"] == len(b"hello") + len(b'{"a": 1}')
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", room["opened_at"])
    assert abs(room["opened_at_unix"] - time.time()) < 60

    status, _, body = request(r, "/api/rooms/" + src.code.lower(), auth)
    assert status == 200 and json.loads(body)["code"] == src.code
    status, _, body = request(r, "/api/rooms/ZZZZZZ", auth)
    assert status == 404 and json.loads(body) == {"error": "unknown room"}
    assert request(r, "/api/rooms", auth, method="DELETE")[0] == 405
    assert request(r, "/api/rooms/" + src.code + "/x", auth)[0] == 404   # one segment only

    m = samples(scrape(r)[1])
    assert value(m, "sphincter_rejected_connections_total", kind="api", reason="unauthorized") == 5
    ws.close()
    src.close()


def test_refused_api_calls_log_the_client_address(relay, caplog):
    """Behind a trusted proxy (loopback is trusted by default) the client is the address it
    forwards, as for subscribers; a peer that is not trusted is itself the client."""
    wrong = {"Authorization": "Bearer wrong-token-0123456789"}
    proxied, direct = relay("--admin-token", TOKEN), relay("--admin-token", TOKEN, "--trusted-proxies", "")
    with caplog.at_level(logging.INFO, logger="sphincter.relay.api"):
        for r, forwarded in ((proxied, {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}),
                             (proxied, {"X-Real-IP": "2001:db8::5"}),
                             (direct, {"X-Forwarded-For": "203.0.113.7"})):
            assert request(r, "/api/rooms", dict(wrong, **forwarded))[0] == 401
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "sphincter.relay.api"]
    assert logged[:2] == ["api: unauthorized request from 203.0.113.7",
                          "api: unauthorized request from 2001:db8::5"]
    assert re.match(r"^api: unauthorized request from 127\.0\.0\.1:\d+$", logged[2]), logged
    assert len(logged) == 3


def test_admin_token_option():
    assert config.parse([], env={}).admin_token == ""
    assert config.parse([], env={"SPHINCTER_ADMIN_TOKEN": TOKEN}).admin_token == TOKEN
    with pytest.raises(ConfigError, match="admin-token"):
        config.parse(["--admin-token", "short"], env={})
    with pytest.raises(ConfigError, match="admin-token"):
        config.parse(["--admin-token", "has a space in it, long enough"], env={})


# -- viewer routes are mounted ---------------------------------------------------------------

def test_viewer_routes_are_mounted(relay):
    r = relay()
    status, headers, body = request(r, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"<title>Sphincter viewer</title>" in body
    status, headers, body = request(r, "/sphincter.js")
    assert status == 200 and b"Sphincter" in body


# -- --log-format ----------------------------------------------------------------------------

def test_json_formatter():
    rec = logging.LogRecord("sphincter.relay.ingest", logging.INFO, __file__, 1, "room %s opened",
                            ("ABC234",), None)
    rec.peer = "127.0.0.1:5"
    out = json.loads(logformat.JsonFormatter().format(rec))
    assert out["msg"] == "room ABC234 opened" and out["level"] == "info"
    assert out["logger"] == "sphincter.relay.ingest" and out["peer"] == "127.0.0.1:5"
    assert out["ts"].endswith("Z")
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "crash", (), sys.exc_info())
    out = json.loads(logformat.JsonFormatter().format(rec))
    assert "ValueError: boom" in out["exc"]
    assert "\n" not in logformat.JsonFormatter().format(rec)


def test_log_format_json_in_the_real_process():
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sphincter.py"), "--log-format",
                             "json", "--tcp-host", "127.0.0.1", "--tcp-port", "0", "--ws-host",
                             "127.0.0.1", "--ws-port", "0"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        first = json.loads(proc.stderr.readline())
        assert first["level"] == "info" and first["msg"].startswith("listening tcp=127.0.0.1:")
        # One request answered means the main greenlet is waiting in serve_forever, i.e. the
        # SIGTERM handler is installed (the listening line is logged just before that).
        ws_port = int(re.search(r"ws=127\.0\.0\.1:(\d+)", first["msg"]).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", ws_port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        rest = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
        assert any(line["msg"].startswith("stopped") for line in rest)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
