"""``--source-proxy-protocol`` (issue 23, PROXY protocol) against an in-process relay on real
sockets: raw PROXY headers (v1, v2, LOCAL/UNKNOWN, malformed, missing, from an untrusted peer),
and a real nginx ``stream`` proxy with ``proxy_protocol on;`` in front of the source port.

Loopback stands in for the internet: 127.0.0.1 is the proxy (the --trusted-proxies default);
"clients" connect from 127.0.0.2, 127.0.0.3, ... The address a source is known by is read from
``/api/rooms`` (its ``source``), as an operator would.
"""
import http.client
import ipaddress
import json
import logging
import socket
import struct

import pytest

from conftest import read_to_eof, subscribe, unit, wait_for
from nginxkit import Nginx

pytestmark = pytest.mark.timeout(60)

TOKEN = "proxy-protocol-admin-token-0123"
ALICE, BOB = "127.0.0.2", "127.0.0.3"
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(src, sport, ver_cmd=0x21):
    ip = ipaddress.ip_address(src)
    fam, dst = (0x11, b"\x7f\0\0\x01") if ip.version == 4 else (0x21, ipaddress.ip_address("::1").packed)
    block = ip.packed + dst + struct.pack(">HH", sport, 9000)
    return SIG + bytes([ver_cmd, fam]) + struct.pack(">H", len(block)) + block


def v1(src, sport):
    family = "TCP6" if ":" in src else "TCP4"
    dst = "::1" if ":" in src else "127.0.0.1"
    return ("PROXY %s %s %s %d 9000\r\n" % (family, src, dst, sport)).encode()


@pytest.fixture
def pp_relay(make_relay):
    def make(**overrides):
        overrides.setdefault("source_proxy_protocol", True)
        overrides.setdefault("admin_token", TOKEN)
        relay = make_relay(**overrides)
        relay.sources.greeter.preamble_wait = unit(0.2)    # a silent direct source's banner wait
        return relay
    return make


def connect(port, source="127.0.0.1"):
    return socket.create_connection(("127.0.0.1", port), timeout=unit(5), source_address=(source, 0))


def readline(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def room_code(sock):
    line = readline(sock)
    assert line.startswith(b"ROOM "), line
    return line[5:].strip().decode()


def rooms(relay):
    """``/api/rooms``: code -> the room's ``source`` (the address it is known by)."""
    conn = http.client.HTTPConnection(*relay.ws_address, timeout=unit(5))
    try:
        conn.request("GET", "/api/rooms", headers={"Authorization": "Bearer " + TOKEN})
        resp = conn.getresponse()
        assert resp.status == 200
        return {room["code"]: room["source"] for room in json.loads(resp.read().decode())["rooms"]}
    finally:
        conn.close()


def metrics(relay):
    conn = http.client.HTTPConnection(*relay.ws_address, timeout=unit(5))
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


# -- a trusted proxy's header names the source ----------------------------------------------

@pytest.mark.parametrize("header,source", [
    (v1("203.0.113.7", 4711), "203.0.113.7:4711"),
    (v1("2001:db8::7", 4712), "[2001:db8::7]:4712"),
    (v2("198.51.100.9", 4713), "198.51.100.9:4713"),
    (v2("2001:db8::9", 4714), "[2001:db8::9]:4714"),
], ids=["v1-tcp4", "v1-tcp6", "v2-inet", "v2-inet6"])
def test_header_names_the_source_and_its_first_line_survives(pp_relay, header, source, caplog):
    caplog.set_level(logging.INFO, logger="sphincter.relay.ingest")
    relay = pp_relay(replay=2)
    sock = connect(relay.tcp_address[1])
    sock.sendall(header + b"first line\nsecond\n")       # one segment: header and data together
    code = room_code(sock)
    assert rooms(relay) == {code: source}
    ws = subscribe(relay, code)
    assert [ws.recv(), ws.recv()] == ["first line", "second"]
    opened = [r.getMessage() for r in caplog.records if "opened by" in r.getMessage()]
    proxy = "127.0.0.1:%d" % sock.getsockname()[1]
    assert opened == ["room %s opened by %s via %s" % (code, source, proxy)]
    ws.close()
    sock.close()


def test_header_then_auth_line_then_data(pp_relay):
    """The header comes before the preamble: neither eats the other, nor the data."""
    relay = pp_relay(replay=1, source_tokens=(b"tok-abcdefgh",))
    sock = connect(relay.tcp_address[1])
    sock.sendall(v1("203.0.113.7", 4711) + b"AUTH tok-abcdefgh\ndata\n")
    code = room_code(sock)
    assert rooms(relay) == {code: "203.0.113.7:4711"}
    ws = subscribe(relay, code)
    assert ws.recv() == "data"
    ws.close()
    sock.close()


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", SIG + b"\x20\x00\x00\x00"],
                         ids=["v1-unknown", "v2-local"])
def test_local_and_unknown_are_the_proxy_itself(pp_relay, header):
    relay = pp_relay()
    sock = connect(relay.tcp_address[1])
    sock.sendall(header)
    code = room_code(sock)
    assert rooms(relay) == {code: "127.0.0.1:%d" % sock.getsockname()[1]}
    sock.close()


def test_untrusted_peer_without_a_header_connects_directly(pp_relay):
    relay = pp_relay()
    talker = connect(relay.tcp_address[1], ALICE)
    talker.sendall(b"hello\n")                       # data at once: the banner at once
    silent = connect(relay.tcp_address[1], BOB)      # nothing: the banner after preamble_wait
    codes = room_code(talker), room_code(silent)
    assert rooms(relay) == {codes[0]: "%s:%d" % (ALICE, talker.getsockname()[1]),
                            codes[1]: "%s:%d" % (BOB, silent.getsockname()[1])}
    talker.close()
    silent.close()


def test_option_off_a_header_is_data(make_relay):
    relay = make_relay(replay=1)
    sock = connect(relay.tcp_address[1])
    sock.sendall(v1("203.0.113.7", 4711))
    code = room_code(sock)
    ws = subscribe(relay, code)
    assert ws.recv() == "PROXY TCP4 203.0.113.7 127.0.0.1 4711 9000"
    ws.close()
    sock.close()


# -- refusals: one ERROR line, one log line, counted; no room ---------------------------------

@pytest.mark.parametrize("peer,data,reason", [
    ("127.0.0.1", b"PROXY TCP4 203.0.113.7 127.0.0.1 4711 9000\n", "bad proxy header"),   # no CR
    ("127.0.0.1", b"PROXY TCP4 203.0.113.007 127.0.0.1 4711 9000\r\n", "bad proxy header"),
    ("127.0.0.1", b"PROXY " + b"x" * 120, "bad proxy header"),
    ("127.0.0.1", SIG + b"\x11\x11\x00\x0c" + b"\0" * 12, "bad proxy header"),  # version 1
    ("127.0.0.1", SIG + b"\x21\x11\x02\x10", "bad proxy header"),                  # 528+16 bytes
    ("127.0.0.1", b"hello\n", "proxy header required"),
    ("127.0.0.1", b"AUTH tok-abcdefgh\n", "proxy header required"),
    (ALICE, v1("203.0.113.7", 4711) + b"hello\n", "untrusted proxy header"),
    (ALICE, v2("203.0.113.7", 4711), "untrusted proxy header"),
], ids=["v1-lf", "v1-leading-zero", "v1-too-long", "v2-version", "v2-too-long", "missing-data",
        "missing-auth", "untrusted-v1", "untrusted-v2"])
def test_refused_with_one_error_line_and_one_log_line(pp_relay, caplog, peer, data, reason):
    caplog.set_level(logging.INFO, logger="sphincter.relay.ingest")
    relay = pp_relay()
    sock = connect(relay.tcp_address[1], peer)
    port = sock.getsockname()[1]
    sock.sendall(data)
    assert read_to_eof(sock) == b"ERROR %s\n" % reason.encode()
    sock.close()
    wait_for(lambda: relay.stats.rejected["source", reason] == 1, what="the refusal counted")
    lines = [r for r in caplog.records if r.name == "sphincter.relay.ingest"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, [r.getMessage() for r in lines]
    assert lines[0].getMessage().startswith("source %s:%d refused: %s" % (peer, port, reason))
    assert 'reason="%s"} 1.0' % reason in metrics(relay)
    assert rooms(relay) == {}


@pytest.mark.parametrize("data", [b"", b"PROXY TCP4 203.0.113.7 ", SIG + b"\x21"],
                         ids=["nothing", "v1-truncated", "v2-truncated"])
def test_trusted_proxy_silent_or_truncated_times_out(pp_relay, data):
    relay = pp_relay(handshake_timeout=unit(0.5))
    sock = connect(relay.tcp_address[1])
    sock.sendall(data)
    assert read_to_eof(sock) == b"ERROR proxy header timeout\n"
    sock.close()
    assert rooms(relay) == {}


# -- the per-address cap counts the client, not the proxy ---------------------------------------

def test_per_address_cap_applies_to_the_client_in_the_header(pp_relay):
    relay = pp_relay(max_sources_per_ip=2)
    port = relay.tcp_address[1]

    def source(client, n):
        sock = connect(port)
        sock.sendall(v1(client, n))
        return sock, readline(sock)

    held = [source("203.0.113.7", 1000 + i) for i in range(2)]
    assert all(line.startswith(b"ROOM ") for _, line in held)
    third, line = source("203.0.113.7", 1002)
    assert line == b"ERROR too many connections\n" and read_to_eof(third) == b""
    third.close()
    other, line = source("203.0.113.8", 1003)          # another client, the same proxy
    assert line.startswith(b"ROOM ")
    held[0][0].close()                                  # a slot comes back
    wait_for(lambda: len(rooms(relay)) == 2, what="the closed source's room to go")
    again, line = source("203.0.113.7", 1004)
    assert line.startswith(b"ROOM "), line
    for sock in [held[1][0], other, again]:
        sock.close()


# -- through a real nginx stream proxy -----------------------------------------------------------

def test_through_nginx_stream_proxy_protocol(pp_relay, tmp_path):
    """nginx ``stream { server { proxy_pass ...; proxy_protocol on; } }``: each source is known by
    its own address (two clients on two loopback addresses), data flows, and the per-address cap
    counts each client apart (its ERROR line reaches the client through nginx)."""
    relay = pp_relay(max_sources_per_ip=2, replay=1)
    body = "    proxy_pass 127.0.0.1:%d;\n    proxy_protocol on;\n" % relay.tcp_address[1]
    with Nginx(tmp_path / "nginx", body, stream=True) as proxy:
        alice = [connect(proxy.port, ALICE) for _ in range(2)]
        codes = [room_code(sock) for sock in alice]
        bob = connect(proxy.port, BOB)
        codes.append(room_code(bob))
        expected = {code: "%s:%d" % (host, sock.getsockname()[1])
                    for code, host, sock in zip(codes, (ALICE, ALICE, BOB), alice + [bob])}
        assert rooms(relay) == expected

        third = connect(proxy.port, ALICE)
        assert read_to_eof(third) == b"ERROR too many connections\n"
        third.close()
        assert relay.stats.rejected["source", "too many connections"] == 1

        bob.sendall(b"through nginx\n")
        ws = subscribe(relay, codes[2])
        assert ws.recv() == "through nginx"
        ws.close()
        for sock in alice + [bob]:
            sock.close()
        assert "[emerg]" not in proxy.error_log()
