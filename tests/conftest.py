"""Shared fixtures. The suite runs under ``python -m gevent.monkey --module pytest``
(see the Makefile), so sockets are cooperative and an in-process server can
serve a blocking-style client in the same process. tests/unit/ (pure code) also
runs under plain pytest (``make test-unit``); the other tiers refuse to."""

import base64
import os
import socket
import time

import gevent
import gevent.monkey
import pytest

import websocket  # noqa: E402  (websocket-client)

from sphincter_lib.relay import config  # noqa: E402
from sphincter_lib.relay.server import Relay  # noqa: E402

from testkit import IN_CI, TIME_FACTOR, require, unit  # noqa: E402,F401
# one real Redis Cluster (6 redis-server, ~10 s to create) for every module that asks for it
from clusterkit import redis_cluster, redis_cluster_servers  # noqa: E402,F401  (fixtures)

UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unit") + os.sep


def pytest_collectstart(collector):
    """tests/unit/ (pure code) runs under plain pytest; every other tier needs gevent's patching."""
    path = str(getattr(collector, "fspath", ""))
    if (isinstance(collector, pytest.Module) and not path.startswith(UNIT)
            and not gevent.monkey.is_module_patched("socket")):
        pytest.exit("%s: run the tests with `make test` (python -m gevent.monkey --module pytest); "
                    "only tests/unit/ runs without it (`make test-unit`)" % path, returncode=4)


def wait_for(predicate, timeout=None, interval=0.005, what="condition"):
    """Poll ``predicate`` until true or the deadline; returns its value or fails."""
    deadline = time.monotonic() + (timeout if timeout is not None else unit(5))
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for %s" % what)
        gevent.sleep(interval)


def settings(**overrides):
    base = config.parse(["--tcp-host", "127.0.0.1", "--tcp-port", "0", "--ws-host", "127.0.0.1",
                         "--ws-port", "0", "--log-level", "debug"], env={})
    # short close handshakes keep teardown quick when a test leaves clients unread
    overrides.setdefault("close_timeout", unit(0.5))
    overrides.setdefault("shutdown_timeout", unit(5))
    return config.with_overrides(base, **overrides)


@pytest.fixture
def make_relay():
    """Factory: ``make_relay(**setting_overrides)`` starts a Relay on ephemeral loopback ports."""
    started = []

    def make(**overrides):
        relay = Relay(settings(**overrides)).start()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.stop()


@pytest.fixture
def relay(make_relay):
    return make_relay()


class Source:
    """A TCP source: connects, reads the banner."""

    def __init__(self, relay, banner=True):
        host, port = relay.tcp_address
        self.sock = socket.create_connection((host, port), timeout=unit(5))
        self.code = None
        if banner:
            line = self.readline()
            assert line.startswith(b"ROOM "), line
            self.code = line[5:].strip().decode()

    def readline(self):
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                break
            data += chunk
        return data

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


def ws_url(relay, query="", path="/ws"):
    host, port = relay.ws_address
    return "ws://%s:%d%s%s" % (host, port, path, ("?" + query) if query else "")


def subscribe(relay, code, timeout=None, bulk=False):
    """A websocket-client subscriber. ``bulk``: skip its pure-Python UTF-8 check (slow on big loads)."""
    return websocket.create_connection(ws_url(relay, "room=%s" % code), timeout=timeout or unit(5),
                                       skip_utf8_validation=bulk)


def recv_close(ws):
    """Read until the close frame; return its (code, reason)."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            if len(data) < 2:
                return None, ""
            return int.from_bytes(data[:2], "big"), data[2:].decode("utf-8")


def read_to_eof(sock):
    """Everything a peer sends until it closes."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def raw_upgrade(relay, query="", extra_headers=(), rcvbuf=None):
    """A raw socket upgraded to WebSocket by hand (for clients that misbehave)."""
    host, port = relay.ws_address
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(unit(5))
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    req = ("GET /ws?%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % (query, host, port, key))
    for h in extra_headers:
        req += h + "\r\n"
    sock.sendall((req + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "connection closed during handshake: %r" % head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def mask_frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04", rsv=0):
    """A client frame (masked), built independently of sphincter_lib.proto.frames."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def parse_server_frames(data):
    """(opcode, payload) of each unmasked server frame in ``data``, parsed independently of
    sphincter_lib.proto.frames."""
    frames, pos = [], 0
    while pos < len(data):
        b0, n = data[pos], data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            n, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        frames.append((b0 & 0x0F, data[pos:pos + n]))
        pos += n
    return frames


def drain(sub, limit=1 << 20):
    """Everything a room's cursor (rooms.cursor.Subscriber) has to send now, committed."""
    out = b""
    while True:
        data = sub.take(limit)
        if data is None:
            return out
        out += data
        sub.commit()
