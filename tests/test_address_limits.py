"""Per-address limits against a real server process: the default per-address source cap,
and the client address behind a real nginx (X-Real-IP only, or nothing at all) and behind
a proxy sending X-Forwarded-For to a dual-stack listener.

Loopback stands in for the internet: nginx and a trusted proxy are 127.0.0.1 (the
--trusted-proxies default); "other" clients connect from 127.0.0.2, 127.0.0.3, ...
"""
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hardening_util import ServerProcess, Source, poll  # noqa: E402
from hostile_client import OP_TEXT, ws_connect  # noqa: E402
from nginxkit import Nginx  # noqa: E402
from testkit import require, unit  # noqa: E402

from sphincter_lib import config  # noqa: E402

pytestmark = pytest.mark.timeout(90)

ALICE, BOB = "127.0.0.2", "127.0.0.3"   # two viewers on different addresses


def source_from(port, address, timeout=None):
    """A TCP source connecting from *address*; returns (socket, first line)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout or unit(5),
                                    source_address=(address, 0))
    line = b""
    while not line.endswith(b"\n"):
        c = sock.recv(1)
        if not c:
            break
        line += c
    return sock, line


def attempt(url, source, headers=()):
    """One upgrade; the HTTP status, and for a 101 the close code that follows (or None)."""
    ws = ws_connect(url, headers, timeout=unit(5), expect=None, source=source)
    try:
        if ws.status != 101:
            return ws.status, None
        code, _ = ws.wait_close(unit(5))
        return 101, code
    finally:
        ws.close()


def watch_one_line(url, src, source, headers=()):
    """Subscribe from *source*, have the source send a line, return what arrived."""
    ws = ws_connect(url, headers, timeout=unit(5), source=source)
    try:
        src.send(b"hello\n")
        return ws.recv_message(unit(5))
    finally:
        ws.close()


# ------------------------------------------------------------- issue 9.4: default source cap

def test_default_source_cap_is_32():
    assert config.defaults().max_sources_per_ip == 32


def test_one_address_cannot_take_every_room():
    """With defaults (only --max-rooms lowered to keep the test small), silent sources from one
    address stop at 32; another address still gets a room."""
    with ServerProcess("--max-rooms", "40") as server:
        held = []
        try:
            for i in range(32):
                sock, line = source_from(server.tcp_port, "127.0.0.1")
                held.append(sock)
                assert line.startswith(b"ROOM "), (i, line)
            sock, line = source_from(server.tcp_port, "127.0.0.1")
            held.append(sock)
            assert line == b"ERROR too many connections\n"
            sock, line = source_from(server.tcp_port, ALICE)
            held.append(sock)
            assert line.startswith(b"ROOM ")
        finally:
            for sock in held:
                sock.close()


# ------------------------------------------------------------- issue 9.5: behind nginx

def location_ws(ws_port, client_header):
    """The widely used nginx WebSocket block from the issue (with or without X-Real-IP)."""
    return """
    location /ws {
      proxy_pass http://127.0.0.1:%d;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "Upgrade";
      %s
      proxy_read_timeout 1h;
    }""" % (ws_port, client_header)


def test_x_real_ip_from_nginx_keeps_viewers_apart(tmp_path):
    """nginx sends only X-Real-IP: one viewer's unknown-room attempts lock out that viewer,
    not every viewer behind nginx."""
    with ServerProcess("--unknown-room-rate", "0.01", "--log-level", "debug") as server, \
            Nginx(tmp_path, location_ws(server.ws_port, "proxy_set_header X-Real-IP $remote_addr;")) \
            as proxy:
        src = Source(server.tcp_port)
        base = "ws://127.0.0.1:%d/ws?room=" % proxy.port
        # Alice guesses (sphincter.js retrying a room whose source is away does the same)
        assert [attempt(base + "ZZZZZZ", ALICE) for _ in range(10)] == [(101, 4404)] * 10
        assert attempt(base + "ZZZZZZ", ALICE) == (429, None)
        assert attempt(base + src.room, ALICE) == (429, None)     # for every room
        # Bob, behind the same nginx, is not affected
        assert watch_one_line(base + src.room, src, BOB) == (OP_TEXT, b"hello")
        assert attempt(base + "ZZZZZZ", BOB) == (101, 4404)
        assert "203.0.113" not in server.output()
        assert ALICE in server.output() and BOB in server.output()
        src.close()


def test_nginx_forwarding_no_client_address_does_not_lock_everyone_out(tmp_path):
    """nginx sends neither X-Forwarded-For nor X-Real-IP: nginx's own address is not one
    client for every viewer; the server says once, at WARNING, what to fix."""
    with ServerProcess("--unknown-room-rate", "0.01") as server, \
            Nginx(tmp_path, location_ws(server.ws_port, "")) as proxy:
        src = Source(server.tcp_port)
        base = "ws://127.0.0.1:%d/ws?room=" % proxy.port
        assert [attempt(base + "ZZZZZZ", ALICE) for _ in range(15)] == [(101, 4404)] * 15
        assert watch_one_line(base + src.room, src, BOB) == (OP_TEXT, b"hello")
        warnings = [line for line in server.output().splitlines()
                    if "WARNING" in line and "X-Real-IP" in line]
        assert len(warnings) == 1, warnings
        assert "127.0.0.1" in warnings[0]
        src.close()


# ------------------------------------------------------------- issue 9.5: dual-stack listener

def dual_stack_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
            s.listen(1)
            with socket.create_connection(("127.0.0.1", s.getsockname()[1]), timeout=2):
                pass
        return True
    except OSError:
        return False


def test_dual_stack_listener_trusts_ipv4_mapped_proxy():
    """--ws-host '::': a proxy on 127.0.0.1 arrives as ::ffff:127.0.0.1 and is still the
    trusted 127.0.0.1, so its X-Forwarded-For counts: distinct clients, distinct budgets."""
    require("dual-stack IPv6 sockets", dual_stack_available())
    with ServerProcess("--ws-host", "::", "--unknown-room-rate", "0.01", "--log-level", "debug") as server:
        src = Source(server.tcp_port)
        base = "ws://127.0.0.1:%d/ws?room=" % server.ws_port
        got = [attempt(base + "ZZZZZZ", None, [("X-Forwarded-For", "198.51.100.%d" % i)])
               for i in range(12)]
        assert got == [(101, 4404)] * 12
        assert watch_one_line(base + src.room, src, None,
                              [("X-Forwarded-For", "198.51.100.99")]) == (OP_TEXT, b"hello")
        # one client's budget is still enforced
        same = [("X-Forwarded-For", "198.51.100.200")]
        assert [attempt(base + "ZZZZZZ", None, same) for _ in range(10)] == [(101, 4404)] * 10
        assert attempt(base + src.room, None, same) == (429, None)
        assert "198.51.100.99" in server.output()
        src.close()


def test_direct_clients_are_still_limited_per_address():
    """A client that is not a trusted proxy is its own address, whatever headers it sends."""
    with ServerProcess("--unknown-room-rate", "0.01", "--unknown-room-burst", "3",
                       "--log-level", "debug") as server:
        base = "ws://127.0.0.1:%d/ws?room=" % server.ws_port
        forged = [("X-Real-IP", "198.51.100.7"), ("X-Forwarded-For", "198.51.100.8")]
        assert [attempt(base + "ZZZZZZ", ALICE, forged) for _ in range(3)] == [(101, 4404)] * 3
        assert attempt(base + "ZZZZZZ", ALICE) == (429, None)
        assert poll(lambda: ALICE in server.output(), unit(5))
        assert "198.51.100" not in server.output()

