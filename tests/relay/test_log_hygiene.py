"""Hostile or broken peers against a real server process: each is one log line at INFO
(address and reason), never a traceback, never ERROR (issue 9.6). ERROR with a traceback
is for Sphincter's own bugs.

The server's stdout+stderr are read whole: every line must be a log line, so a traceback
printed by gevent or pywsgi behind logging's back fails the test too.
"""
import os
import re
import socket
import ssl
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers
from hardening_util import ServerProcess, make_cert, poll  # noqa: E402
from hostile_client import rst_close  # noqa: E402
from testkit import unit  # noqa: E402

pytestmark = pytest.mark.timeout(90)

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
TLS_HELLO_ISH = b"\x16\x03\x01\x00\x05garbage\xff\xfe\n" * 3


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(str(tmp_path_factory.mktemp("tls")))


def assert_clean(output):
    assert "Traceback" not in output, output[-4000:]
    for line in output.splitlines():
        assert LOG_LINE.match(line), "not a log line: %r" % line
        assert " ERROR " not in line and " CRITICAL " not in line, line


def lines_with(server, text):
    return [line for line in server.output().splitlines() if text in line]


def wait_lines(server, text, n):
    got = poll(lambda: len(lines_with(server, text)) >= n, unit(10))
    assert got, "expected %d lines with %r:\n%s" % (n, text, server.output()[-4000:])
    return lines_with(server, text)


def exchange(port, data):
    """Connect, send *data* (the server may reset mid-send), return what comes back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=unit(5))
    reply = b""
    try:
        sock.sendall(data)
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    except OSError:                 # reset: the server stopped reading
        pass
    finally:
        sock.close()
    return reply


def visit(port, data=b"", reset=False):
    """Connect, send *data*, close (with a reset if *reset*); returns the local port."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=unit(5))
    local = sock.getsockname()[1]
    try:
        if data:
            sock.sendall(data)
        if not reset:
            sock.settimeout(unit(5))
            while sock.recv(4096):
                pass
    except OSError:
        pass
    if reset:
        rst_close(sock)
    else:
        sock.close()
    return local


def lines_about(server, local_port):
    tag = "127.0.0.1:%d" % local_port
    return [line for line in server.output().splitlines()
            if re.search(re.escape(tag) + r"\b", line)]


def test_hostile_http_is_one_info_line_each():
    """20 requests of 2,000 header lines (the issue's case), then other malformed heads."""
    with ServerProcess() as server:
        flood = (b"GET /ws?room=AAAAAA HTTP/1.1\r\nHost: x\r\n"
                 + b"".join(b"X-Filler-%d: y\r\n" % i for i in range(2000)) + b"\r\n")
        for _ in range(20):
            reply = exchange(server.ws_port, flood)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 400 "), reply[:200]
        others = [TLS_HELLO_ISH, b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
                  b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                  b"GET / HTTP/1.\x01\r\n\r\n", b"\x00\x01\x02\x03\r\n\r\n"]
        for data in others:
            assert exchange(server.ws_port, data).startswith(b"HTTP/1.1 400 ")
        floods = wait_lines(server, "got more than 100 headers", 20)
        bad = wait_lines(server, "bad request", 20 + len(others))
        assert len(floods) == 20 and len(bad) == 20 + len(others), bad
        for line in bad:
            assert " INFO sphincter.relay.ws: http 127.0.0.1:" in line, line
            assert len(line) < 400, line
        # a control byte from the client is escaped in the log line, not written raw
        assert all("\x01" not in line and "\x16" not in line for line in bad)
        assert_clean(server.output())
        # and the server still serves
        assert exchange(server.ws_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                        b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_broken_tls_peers_are_one_info_line_each(cert):
    """Resets before and during the TLS handshake, TLS garbage and plain text, on both TLS
    listeners: at most one line each (a source's always has one), no traceback."""
    certfile, keyfile = cert
    with ServerProcess("--tls-cert", certfile, "--tls-key", keyfile,
                       "--source-tls-cert", certfile, "--source-tls-key", keyfile) as server:
        visits = {}
        for port in (server.tcp_port, server.ws_port):
            visits[port] = [visit(port, reset=True) for _ in range(3)] + [
                visit(port, TLS_HELLO_ISH), visit(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                visit(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", reset=True)]
        # a source that sends, then resets inside TLS: its room closes as usual
        tls = ssl.create_default_context(cafile=certfile)
        tls.check_hostname = False
        sock = tls.wrap_socket(socket.create_connection(("127.0.0.1", server.tcp_port),
                                                        timeout=unit(5)))
        assert sock.recv(64).startswith(b"ROOM ")
        sock.sendall(b"one line\n")
        rst_close(sock)
        wait_lines(server, "closed:", 1)
        for local in visits[server.tcp_port]:
            assert poll(lambda: lines_about(server, local), unit(10)), (local, server.output())
        for port, locals_ in visits.items():
            for local in locals_:
                got = lines_about(server, local)
                assert len(got) <= 1, got
                assert all(" INFO " in line for line in got), got
        assert_clean(server.output())


def test_broken_plain_sources_are_one_info_line_each():
    """Bad bytes, resets right after connecting, resets mid-stream and mid-line."""
    with ServerProcess() as server:
        for data in (b"\xff\xfe\xfd\n\x00\x00\n", TLS_HELLO_ISH):
            sock = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=unit(5))
            sock.sendall(data)
            sock.close()
        for _ in range(3):
            visit(server.tcp_port, reset=True)
        visit(server.tcp_port, b"x" * 100000 + b"half a li", reset=True)
        wait_lines(server, "closed:", 6)
        assert_clean(server.output())
