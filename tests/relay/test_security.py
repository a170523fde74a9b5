"""Security options against a real server process on loopback.

TLS on both listeners (self-signed cert), source tokens, Origin allowlist,
per-IP caps (with the trusted-proxy client address), handshake timeouts (HTTP
head, TLS handshake, AUTH line), the source idle timeout, and the unknown-room
rate limit.
"""
import os
import socket
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers
from hardening_util import ServerProcess, Source, make_cert  # noqa: E402
from hostile_client import (OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, connect_tcp,  # noqa: E402
                            http_request, read_http_response, ws_connect)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(str(tmp_path_factory.mktemp("tls")))


def close_code(ws, timeout=5.0):
    try:
        code, _ = ws.wait_close(timeout)
        return code
    finally:
        ws.close()


def relay_one_line(server, source, scheme="ws", cafile=None, line=b"hello\n"):
    ws = ws_connect(server.ws_url("/ws?room=%s" % source.room, scheme), cafile=cafile)
    source.send(line)
    op, data = ws.recv_message(5)
    ws.close()
    return op, data


# ------------------------------------------------------------------------ TLS

def test_wss_listener(cert):
    certfile, keyfile = cert
    with ServerProcess("--tls-cert", certfile, "--tls-key", keyfile) as server:
        assert "tls=ws" in server.output()
        src = Source(server.tcp_port)
        assert relay_one_line(server, src, "wss", cafile=certfile) == (OP_TEXT, b"hello")
        # plain HTTP to the TLS port gets no WebSocket
        s = connect_tcp("127.0.0.1", server.ws_port)
        s.sendall(http_request("/ws?room=%s" % src.room, "x"))
        s.settimeout(5)
        assert not s.recv(4096).startswith(b"HTTP/1.1 101")
        s.close()
        src.close()


def test_source_tls(cert):
    certfile, keyfile = cert
    with ServerProcess("--source-tls-cert", certfile, "--source-tls-key", keyfile) as server:
        src = Source(server.tcp_port, tls_cafile=certfile)
        assert src.room, src.banner
        assert relay_one_line(server, src) == (OP_TEXT, b"hello")
        src.close()


def test_tls_bad_key_is_a_config_error(cert, tmp_path):
    import subprocess
    from hardening_util import ROOT
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sphincter.py"), "--tls-cert", cert[0],
                        "--tls-key", str(bad)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "--tls-cert" in p.stderr


def test_stalled_tls_handshake_is_dropped(cert):
    certfile, keyfile = cert
    with ServerProcess("--tls-cert", certfile, "--tls-key", keyfile,
                       "--source-tls-cert", certfile, "--source-tls-key", keyfile,
                       "--handshake-timeout", "0.5") as server:
        for port in (server.ws_port, server.tcp_port):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"\x16\x03\x01")          # the first bytes of a ClientHello, then silence
            t0 = time.monotonic()
            s.settimeout(5)
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            assert data == b"" and time.monotonic() - t0 < 3
            s.close()


# -------------------------------------------------------------- source tokens

def test_source_token_required():
    with ServerProcess("--source-tokens", "tok-1,tok-2") as server:
        good = Source(server.tcp_port, token="tok-2")
        assert good.room
        for token in ("wrong", "tok-", "tok-22", ""):
            bad = Source(server.tcp_port, token=token)
            assert bad.banner == b"ERROR unauthorized\n"
            assert bad.readline(2) == b""           # then closed
            bad.close()
        # a source that just starts streaming is not authenticated either
        s = Source.__new__(Source)
        s.sock = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=5)
        s.sock.sendall(b"some data\n")
        assert s.readline() == b"ERROR unauthorized\n"
        s.close()
        good.close()


def test_source_token_from_file_and_data_after_auth(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("# sources\nfile-token\n")
    with ServerProcess("--source-tokens", "@%s" % f) as server:
        sock = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=5)
        src = Source.__new__(Source)
        src.sock = sock
        banner_wait = time.monotonic()
        sock.sendall(b"AUTH file-token\n")
        src.banner = src.readline()
        src.room = src.banner.split()[1].decode()
        assert time.monotonic() - banner_wait < 2
        ws = ws_connect(server.ws_url("/ws?room=%s" % src.room))
        sock.sendall(b"line one\nline two\n")
        assert ws.recv_message()[1] == b"line one"
        assert ws.recv_message()[1] == b"line two"
        ws.close()
        src.close()


def test_auth_line_in_same_packet_as_data():
    """Bytes after the AUTH line in the same read are the stream, not lost."""
    with ServerProcess("--source-tokens", "t", "--framing", "lines") as server:
        sock = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=5)
        # a subscriber cannot join before the banner, so the first line is
        # published to nobody; check the source is live and the next line flows
        sock.sendall(b"AUTH t\nfirst\n")
        src = Source.__new__(Source)
        src.sock = sock
        banner = src.readline()
        assert banner.startswith(b"ROOM ")
        ws = ws_connect(server.ws_url("/ws?room=%s" % banner.split()[1].decode()))
        sock.sendall(b"second\n")
        assert ws.recv_message()[1] == b"second"
        ws.close()
        src.close()


def test_auth_timeout():
    with ServerProcess("--source-tokens", "t", "--handshake-timeout", "0.5") as server:
        sock = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=5)
        t0 = time.monotonic()
        src = Source.__new__(Source)
        src.sock = sock
        assert src.readline(5) == b"ERROR auth timeout\n"
        assert 0.4 < time.monotonic() - t0 < 3
        src.close()


def test_no_tokens_means_no_auth():
    with ServerProcess() as server:
        assert Source(server.tcp_port).room


# --------------------------------------------------------------------- origin

def test_origin_allowlist():
    with ServerProcess("--allowed-origins", "https://good.example,https://*.sub.example") as server:
        src = Source(server.tcp_port)
        url = server.ws_url("/ws?room=%s" % src.room)
        for origin, ok in (("https://good.example", True), ("https://a.sub.example", True),
                           ("https://evil.example", False), ("http://good.example", False),
                           ("null", False), (None, True)):
            headers = [("Origin", origin)] if origin else []
            ws = ws_connect(url, headers)
            if ok:
                src.send(b"x\n")
                assert ws.recv_message()[0] == OP_TEXT, origin
                ws.close()
            else:
                assert close_code(ws) == 4403, origin
        src.close()


# ------------------------------------------------------------------ per-IP caps

def test_max_sources_per_ip():
    with ServerProcess("--max-sources-per-ip", "2") as server:
        a, b = Source(server.tcp_port), Source(server.tcp_port)
        assert a.room and b.room
        c = Source(server.tcp_port)
        assert c.banner == b"ERROR too many connections\n"
        c.close()
        a.close()
        d = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:     # a's slot comes back once the server saw EOF
            d = Source(server.tcp_port)
            if d.room:
                break
            d.close()
            time.sleep(0.05)
        assert d.room
        b.close()
        d.close()


# A direct client on loopback connects from 127.0.0.2: 127.0.0.1 is the trusted proxy
# (--trusted-proxies default), whose requests without a forwarded address are not limited.
DIRECT = "127.0.0.2"


def test_max_subscribers_per_ip_and_trusted_proxy():
    with ServerProcess("--max-subscribers-per-ip", "2") as server:
        src = Source(server.tcp_port)
        url = server.ws_url("/ws?room=%s" % src.room)
        w1, w2 = ws_connect(url, source=DIRECT), ws_connect(url, source=DIRECT)
        with pytest.raises(AssertionError, match="429"):
            ws_connect(url, source=DIRECT)
        # behind the trusted proxy (127.0.0.1 by default) the forwarded address counts
        w3 = ws_connect(url, [("X-Forwarded-For", "203.0.113.7")])
        w4 = ws_connect(url, [("X-Forwarded-For", "203.0.113.7")])
        with pytest.raises(AssertionError, match="429"):
            ws_connect(url, [("X-Forwarded-For", "203.0.113.7")])
        w1.close()
        ok = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and ok is None:
            try:
                ok = ws_connect(url, source=DIRECT)
            except AssertionError:
                time.sleep(0.05)
        assert ok is not None
        for w in (w2, w3, w4, ok):
            w.close()
        src.close()


# ---------------------------------------------------------- handshake timeout

def test_http_handshake_timeout_slowloris():
    with ServerProcess("--handshake-timeout", "0.5") as server:
        s = socket.create_connection(("127.0.0.1", server.ws_port), timeout=5)
        s.sendall(b"GET /ws?room=AAAAAA HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 5:        # trickle a header line every 0.1 s
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.1)
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - t0
        s.close()
        assert closed and 0.3 < elapsed < 3, elapsed
        # a normal client is unaffected
        src = Source(server.tcp_port)
        assert relay_one_line(server, src) == (OP_TEXT, b"hello")


# --------------------------------------------------------------- idle timeout

def test_source_idle_timeout():
    with ServerProcess("--source-idle-timeout", "0.5") as server:
        src = Source(server.tcp_port)
        ws = ws_connect(server.ws_url("/ws?room=%s" % src.room))
        src.send(b"one\n")
        assert ws.recv_message()[1] == b"one"
        t0 = time.monotonic()
        assert src.readline(5) == b"ERROR idle timeout\n"
        assert 0.4 < time.monotonic() - t0 < 3
        assert ws.recv_message()[0] == OP_CLOSE
        ws.close()
        src.close()


def test_source_idle_timeout_off_by_default():
    with ServerProcess() as server:
        src = Source(server.tcp_port)
        assert src.readline(1.5) == b""         # nothing said, still open
        ws = ws_connect(server.ws_url("/ws?room=%s" % src.room))
        src.send(b"late\n")
        assert ws.recv_message()[1] == b"late"
        ws.close()
        src.close()


# ---------------------------------------------------------- unknown-room limit

def test_unknown_room_rate_limit():
    with ServerProcess("--unknown-room-rate", "2", "--unknown-room-burst", "3") as server:
        src = Source(server.tcp_port)
        for _ in range(3):
            assert close_code(ws_connect(server.ws_url("/ws?room=ZZZZZZ"), source=DIRECT)) == 4404
        # out of tokens: refused before the upgrade, for unknown AND live rooms alike
        for room in ("ZZZZZZ", src.room):
            s = connect_tcp("127.0.0.1", server.ws_port, source=DIRECT)
            s.sendall(http_request("/ws?room=%s" % room, "x"))
            status, headers, _ = read_http_response(s)
            s.close()
            assert status == 429 and "retry-after" in headers
        # another address (via the trusted proxy) is not affected
        other = ws_connect(server.ws_url("/ws?room=%s" % src.room),
                           [("X-Forwarded-For", "198.51.100.9")])
        other.close()
        # tokens come back at 2/s
        ok = None
        deadline = time.monotonic() + 5
        while ok is None and time.monotonic() < deadline:
            try:
                ok = ws_connect(server.ws_url("/ws?room=%s" % src.room), source=DIRECT)
            except AssertionError:
                time.sleep(0.1)
        assert ok is not None
        ok.close()
        src.close()


def test_wss_client_frames_are_read_through_tls(cert):
    """Pings and the close handshake from a wss:// client are decrypted and answered."""
    certfile, keyfile = cert
    with ServerProcess("--tls-cert", certfile, "--tls-key", keyfile) as server:
        src = Source(server.tcp_port)
        ws = ws_connect(server.ws_url("/ws?room=%s" % src.room, "wss"), cafile=certfile)
        ws.send_frame(OP_PING, b"are you there")
        fin, _rsv, opcode, payload = ws.recv_frame(5)
        assert (opcode, payload) == (OP_PONG, b"are you there")
        src.send(b"after ping\n")
        assert ws.recv_message(5) == (OP_TEXT, b"after ping")
        ws.send_frame(OP_CLOSE, b"\x03\xe8bye")
        code, _ = ws.wait_close(5)
        assert code == 1000
        ws.close()
        src.close()



def test_wss_large_messages(cert):
    """Frames of 64 KiB and more (written as header + payload) go out intact over TLS."""
    certfile, keyfile = cert
    with ServerProcess("--tls-cert", certfile, "--tls-key", keyfile,
                       "--max-message-bytes", "1MiB") as server:
        src = Source(server.tcp_port)
        ws = ws_connect(server.ws_url("/ws?room=%s" % src.room, "wss"), cafile=certfile)
        for size in (65535, 65536, 200000, 1 << 20):
            line = (b"%07d" % size) * (size // 7) + b"x" * (size % 7)
            src.send(line + b"\n")
            op, data = ws.recv_message(10)
            assert (op, len(data), data == line) == (OP_TEXT, size, True), size
        ws.close()
        src.close()
