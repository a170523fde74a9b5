"""Per-address limits against a real server process: the default per-address source cap,
and the client address behind a real nginx (X-Real-IP only, or nothing at all) and behind
a proxy sending X-Forwarded-For to a dual-stack listener.

Loopback stands in for the internet: nginx and a trusted proxy are 127.0.0.1 (the
--trusted-proxies default); "other" clients connect from 127.0.0.2, 127.0.0.3, ...
A client on 127.0.0.1 that sends no forwarding header is itself (issue 18.4). A trusted
proxy that is not on loopback cannot connect in a test (test traffic stays on loopback):
its warning is checked in-process, through the app's precheck with a made-up peer address.
"""
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers
from hardening_util import ServerProcess, Source, poll  # noqa: E402
from hostile_client import OP_TEXT, ws_connect  # noqa: E402
from nginxkit import Nginx  # noqa: E402
from testkit import require, unit  # noqa: E402

from sphincter_lib.relay import config  # noqa: E402
from sphincter_lib.relay.config import networks  # noqa: E402

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


def warnings_in(server):
    return [line for line in server.output().splitlines() if "WARNING" in line]


def test_local_nginx_forwarding_no_client_address_is_one_client(tmp_path):
    """nginx on loopback sends neither X-Forwarded-For nor X-Real-IP: it looks like a client
    on this host (issue 18.4), so every viewer behind it shares its address's budget; the
    first refusal says so once, at INFO, with what to fix."""
    with ServerProcess("--unknown-room-rate", "0.01", "--unknown-room-burst", "3") as server, \
            Nginx(tmp_path, location_ws(server.ws_port, "")) as proxy:
        src = Source(server.tcp_port)
        base = "ws://127.0.0.1:%d/ws?room=" % proxy.port
        assert [attempt(base + "ZZZZZZ", ALICE) for _ in range(3)] == [(101, 4404)] * 3
        assert attempt(base + "ZZZZZZ", ALICE) == (429, None)
        assert attempt(base + src.room, BOB) == (429, None)       # the cost of forwarding nothing
        assert poll(lambda: "per-address limit reached" in server.output(), unit(5))
        notes = [line for line in server.output().splitlines() if "per-address limit" in line]
        assert len(notes) == 1, notes
        assert "INFO" in notes[0] and "127.0.0.1" in notes[0] and "X-Real-IP" in notes[0]
        assert warnings_in(server) == []
        src.close()


# ------------------------------------------------------------- issue 18.4: a local client

def check_local_client_is_limited(server, host, shown, other=None):
    """--max-subscribers-per-ip 1 on *server*: a subscriber from *host* with no forwarding
    header holds its address's one slot (logged as *shown*); a second gets 429; the same peer
    forwarding another client's address, and the *other* address, still get in. No WARNING."""
    src = Source(server.tcp_port)
    url = "ws://%s:%d/ws?room=%s" % ("[%s]" % host if ":" in host else host, server.ws_port, src.room)
    first = ws_connect(url, timeout=unit(5))
    try:
        src.send(b"hello\n")
        assert first.recv_message(unit(5)) == (OP_TEXT, b"hello")
        assert poll(lambda: "subscriber %s" % shown in server.output(), unit(5))
        assert attempt(url, None) == (429, None)
        assert attempt(url, None) == (429, None)
        forwarded = ws_connect(url, [("X-Real-IP", "198.51.100.7")], timeout=unit(5))
        try:
            src.send(b"again\n")
            assert forwarded.recv_message(unit(5)) == (OP_TEXT, b"again")
        finally:
            forwarded.close()
        assert poll(lambda: "subscriber 198.51.100.7 joined" in server.output(), unit(5))
        if other is not None:
            assert watch_one_line(url, src, other) == (OP_TEXT, b"hello")
    finally:
        first.close()
        src.close()
    assert warnings_in(server) == []


def test_local_client_without_forwarding_header_is_its_own_address():
    """`make run` and a browser on the same host: the loopback peer (a trusted proxy by
    default) sends no forwarding header, so it is the client: no WARNING, and per-address
    limits apply to 127.0.0.1 as to any address."""
    with ServerProcess("--max-subscribers-per-ip", "1", "--log-level", "debug") as server:
        check_local_client_is_limited(server, "127.0.0.1", "127.0.0.1:", other=ALICE)


def ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_local_client_is_its_own_address():
    require("IPv6 loopback", ipv6_loopback_available())
    with ServerProcess("--ws-host", "::1", "--max-subscribers-per-ip", "1",
                       "--log-level", "debug") as server:
        check_local_client_is_limited(server, "::1", "[::1]:")


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


def test_dual_stack_local_client_is_its_ipv4_address():
    """--ws-host '::': a browser on 127.0.0.1 arrives as ::ffff:127.0.0.1 with no forwarding
    header: the client 127.0.0.1, limited and logged as such."""
    require("dual-stack IPv6 sockets", dual_stack_available())
    with ServerProcess("--ws-host", "::", "--max-subscribers-per-ip", "1",
                       "--log-level", "debug") as server:
        check_local_client_is_limited(server, "127.0.0.1", "127.0.0.1:", other=ALICE)
        ours = [line for line in server.output().splitlines() if "sphincter.relay.access" not in line]
        assert not [line for line in ours if "::ffff:" in line]
        assert poll(lambda: "per-address limit reached by 127.0.0.1," in server.output(), unit(5))


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



# ------------------------------------------------------------- issue 18.4: a remote proxy

def request_from(peer, **headers):
    environ = {"REMOTE_ADDR": peer, "REMOTE_PORT": "40000", "PATH_INFO": "/ws",
               "QUERY_STRING": "room=ZZZZZZ"}
    environ.update(("HTTP_" + k.upper(), v) for k, v in headers.items())
    return environ


def test_remote_trusted_proxy_forwarding_nothing_warns_once(make_relay, caplog):
    """A trusted proxy on another host (10.0.0.5) that forwards no client address: its
    clients are unknown, per-address limits are off for them, one WARNING says so however
    many requests come. (In-process: the peer cannot really be 10.0.0.5 here.)"""
    relay = make_relay(trusted_proxies=networks("10.0.0.0/8,127.0.0.1,::1"),
                       unknown_room_rate=0.01, unknown_room_burst=1)
    app = relay.app
    with caplog.at_level("INFO", logger="sphincter"):
        for _ in range(5):
            assert app.client(request_from("10.0.0.5")) is None
            app.unknown_rooms.allow(app.client(request_from("10.0.0.5")))
            assert app.precheck(request_from("10.0.0.5")) is None      # never limited
        assert app.client(request_from("10.0.0.5", x_real_ip="198.51.100.7")) == "198.51.100.7"
        assert app.client(request_from("127.0.0.1")) == "127.0.0.1"
        assert app.client(request_from("::1")) == "::1"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "10.0.0.5" in warnings[0] and "X-Real-IP" in warnings[0]
