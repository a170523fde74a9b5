"""Hostile WebSocket / HTTP / TCP clients for robustness tests.

Raw sockets only (no WebSocket library), so every byte on the wire is chosen here:
frames with a 2**62 length header, bad UTF-8, unmasked frames, oversized or
fragmented control frames, reserved bits and opcodes, invalid close codes, a
64 MiB message; slowloris and garbage on the HTTP port; RST storms.

Works with plain or gevent-patched sockets.  Used by tests/relay/test_hostile.py and
tests/relay/test_security.py, and runnable by hand:

    python tests/hostile_client.py --url ws://127.0.0.1:8080/ws?room=ABCDEF all
"""
import argparse
import base64
import os
import socket
import ssl
import struct
import sys
import time
from urllib.parse import urlsplit

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

#: Close codes the server must answer with.
PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009


class ConnectionDropped(Exception):
    """The peer closed the TCP connection without (or before) a close frame."""


# --------------------------------------------------------------------- frames

def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, masking_key=None,
                 length=None):
    """Encode one client frame; every field may be wrong on purpose.

    *length* overrides the length written in the header (the payload is still
    whatever is passed, possibly nothing); *rsv* is the 3-bit RSV1-3 value.
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = masking_key if masking_key is not None else os.urandom(4)
    return head + key + xor_mask(payload, key)


def xor_mask(data, key):
    """Whole-buffer XOR of *data* with the 4-byte *key* (fast, via int.from_bytes)."""
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


# ----------------------------------------------------------------- connection

class RawWS:
    """A WebSocket client connection on a raw socket, for crafted frames."""

    def __init__(self, sock, leftover=b"", status=None, headers=None):
        self.sock = sock
        self.buf = bytearray(leftover)
        self.status = status
        self.headers = headers or {}

    # --- I/O
    def send(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", **kw):
        self.send(encode_frame(opcode, payload, **kw))

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out waiting for %d bytes" % n)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError) as e:
                raise ConnectionDropped(str(e))
            if not chunk:
                raise ConnectionDropped("eof after %d bytes buffered" % len(self.buf))
            self.buf += chunk

    def _take(self, n, deadline):
        self._fill(n, deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_frame(self, timeout=5.0):
        """Read one server frame -> (fin, rsv, opcode, payload).  Server frames
        must be unmasked; a masked one raises ValueError."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._take(2, deadline)
        if b1 & 0x80:
            raise ValueError("server sent a masked frame")
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._take(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._take(8, deadline))[0]
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, self._take(n, deadline)

    def recv_message(self, timeout=5.0, pong=True):
        """Next data message (opcode, payload); pings are answered with a pong
        when *pong*; a close frame returns (OP_CLOSE, payload)."""
        deadline = time.monotonic() + timeout
        parts, op = [], None
        while True:
            fin, _rsv, opcode, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if opcode == OP_PING and pong:
                self.send_frame(OP_PONG, payload)
            if opcode in (OP_PING, OP_PONG):
                continue
            if opcode == OP_CLOSE:
                return OP_CLOSE, payload
            if op is None:
                op = opcode
            parts.append(payload)
            if fin:
                return op, b"".join(parts)

    def wait_close(self, timeout=5.0):
        """Read until a close frame; return (code, reason) — code None for an
        empty close.  Raises ConnectionDropped if the TCP connection ends first."""
        deadline = time.monotonic() + timeout
        while True:
            _fin, _rsv, opcode, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if opcode == OP_CLOSE:
                if len(payload) >= 2:
                    return struct.unpack("!H", payload[:2])[0], payload[2:]
                return None, b""

    def wait_eof(self, timeout=5.0):
        """True if the server closes the TCP connection within *timeout*."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(len(self.buf) + 1, deadline)
                self.buf.clear()
        except ConnectionDropped:
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect_tcp(host, port, timeout=5.0, tls=False, cafile=None, source=None):
    """*source*: the local address to connect from (e.g. 127.0.0.2, a loopback client that
    is not the trusted proxy 127.0.0.1)."""
    sock = socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    if tls:
        ctx = ssl.create_default_context(cafile=cafile)
        if cafile is None:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname=host)
    return sock


def http_request(path, host, extra_headers=(), key=None, version="13", http="1.1"):
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = ["GET %s HTTP/%s" % (path, http), "Host: %s" % host,
             "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: %s" % key, "Sec-WebSocket-Version: %s" % version]
    lines += ["%s: %s" % kv for kv in extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_http_response(sock, timeout=5.0, limit=65536):
    """Read a response head -> (status, headers dict lowercased, leftover bytes)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no HTTP response head")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionDropped("eof in HTTP response head: %r" % buf[:200])
        buf += chunk
        if len(buf) > limit:
            raise ValueError("HTTP response head too long")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def read_http_body(sock, headers, leftover=b"", timeout=5.0):
    n = int(headers.get("content-length", "0"))
    deadline = time.monotonic() + timeout
    body = leftover
    while len(body) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body


def ws_connect(url, extra_headers=(), timeout=5.0, cafile=None, expect=101, source=None):
    """Open a WebSocket with a raw handshake; return RawWS (status in .status).

    With *expect* set and a different status, raises AssertionError."""
    u = urlsplit(url)
    tls = u.scheme == "wss"
    port = u.port or (443 if tls else 80)
    sock = connect_tcp(u.hostname, port, timeout, tls=tls, cafile=cafile, source=source)
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    sock.sendall(http_request(path, "%s:%s" % (u.hostname, port), extra_headers))
    status, headers, rest = read_http_response(sock, timeout)
    if expect is not None and status != expect:
        sock.close()
        raise AssertionError("expected HTTP %s, got %s" % (expect, status))
    return RawWS(sock, rest, status, headers)


# -------------------------------------------------------------------- attacks
# Each takes a url and returns what the server did: ("close", code) or
# ("drop", reason).  The expected answer is in EXPECTED.

def _outcome(ws, timeout):
    try:
        code, _reason = ws.wait_close(timeout)
        return ("close", code)
    except ConnectionDropped as e:
        return ("drop", str(e))
    finally:
        ws.close()


def attack_huge_length(url, timeout=5.0):
    """A binary frame header claiming 2**62 bytes, then a little payload."""
    ws = ws_connect(url)
    ws.send(encode_frame(OP_BINARY, b"x" * 16, length=1 << 62)[:14] + b"x" * 16)
    return _outcome(ws, timeout)


def attack_bad_utf8(url, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(OP_TEXT, b"hello \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")
    return _outcome(ws, timeout)


def attack_bad_utf8_fragmented(url, timeout=5.0):
    """Invalid byte in the first fragment: must fail fast, not at the end."""
    ws = ws_connect(url)
    ws.send_frame(OP_TEXT, b"ok \xff", fin=False)
    return _outcome(ws, timeout)


def attack_unmasked(url, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(OP_TEXT, b"not masked", mask=False)
    return _outcome(ws, timeout)


def attack_oversized_control(url, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(OP_PING, b"p" * 126)
    return _outcome(ws, timeout)


def attack_fragmented_control(url, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(OP_PING, b"p", fin=False)
    return _outcome(ws, timeout)


def attack_reserved_bits(url, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(OP_TEXT, b"rsv", rsv=4)
    return _outcome(ws, timeout)


def attack_bad_opcode(url, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(0x3, b"reserved opcode")
    return _outcome(ws, timeout)


def attack_orphan_continuation(url, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(OP_CONT, b"nothing to continue")
    return _outcome(ws, timeout)


def attack_bad_close_code(url, code=999, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(OP_CLOSE, close_payload(code, b"bye"))
    return _outcome(ws, timeout)


def attack_close_one_byte(url, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(OP_CLOSE, b"\x03")
    return _outcome(ws, timeout)


def attack_close_bad_utf8_reason(url, timeout=5.0):
    ws = ws_connect(url)
    ws.send_frame(OP_CLOSE, close_payload(1000, b"\xff\xfe"))
    return _outcome(ws, timeout)


def attack_big_message(url, size=64 << 20, chunk=1 << 20, timeout=30.0):
    """A *size*-byte masked binary message, written in *chunk*-sized pieces.

    A server with a smaller message cap should answer 1009 after the header;
    writes failing after that are expected and ignored."""
    ws = ws_connect(url)
    key = os.urandom(4)
    ws.send(encode_frame(OP_BINARY, b"", length=size, masking_key=key)[:14])
    block = xor_mask(b"\0" * chunk, key)  # chunk % 4 == 0 keeps the mask aligned
    sent = 0
    try:
        while sent < size:
            ws.send(block[:min(chunk, size - sent)])
            sent += chunk
    except OSError:
        pass
    return _outcome(ws, timeout)


def attack_big_fragmented(url, size=64 << 20, frag=1 << 20, timeout=30.0):
    """A *size*-byte message in *frag*-byte fragments (each under any frame cap)."""
    ws = ws_connect(url)
    payload = b"\0" * frag
    sent, first = 0, True
    try:
        while sent < size:
            last = sent + frag >= size
            ws.send_frame(OP_BINARY if first else OP_CONT, payload, fin=last)
            first = False
            sent += frag
    except OSError:
        pass
    return _outcome(ws, timeout)


#: attack name -> (function, acceptable outcomes)
ATTACKS = {
    "huge-length": (attack_huge_length, {("close", TOO_BIG)}),
    "bad-utf8": (attack_bad_utf8, {("close", INVALID_DATA)}),
    "bad-utf8-fragment": (attack_bad_utf8_fragmented, {("close", INVALID_DATA)}),
    "unmasked": (attack_unmasked, {("close", PROTOCOL_ERROR)}),
    "oversized-control": (attack_oversized_control, {("close", PROTOCOL_ERROR)}),
    "fragmented-control": (attack_fragmented_control, {("close", PROTOCOL_ERROR)}),
    "reserved-bits": (attack_reserved_bits, {("close", PROTOCOL_ERROR)}),
    "bad-opcode": (attack_bad_opcode, {("close", PROTOCOL_ERROR)}),
    "orphan-continuation": (attack_orphan_continuation, {("close", PROTOCOL_ERROR)}),
    "bad-close-code": (attack_bad_close_code, {("close", PROTOCOL_ERROR)}),
    "close-one-byte": (attack_close_one_byte, {("close", PROTOCOL_ERROR)}),
    "close-bad-utf8": (attack_close_bad_utf8_reason, {("close", INVALID_DATA),
                                                      ("close", PROTOCOL_ERROR)}),
    "big-message": (attack_big_message, {("close", TOO_BIG)}),
    "big-fragmented": (attack_big_fragmented, {("close", TOO_BIG)}),
}


# -------------------------------------------------------- HTTP / TCP attacks

def slowloris(host, port, n=200, hold=5.0, trickle=1.0, tls=False):
    """Open *n* connections that send a partial request head and trickle a
    header line every *trickle* s for *hold* s.  Returns (opened, closed_by_server)
    where closed_by_server counts sockets the server hung up on."""
    socks = []
    for i in range(n):
        try:
            s = connect_tcp(host, port, 5.0, tls=tls)
            s.sendall(b"GET /ws?room=SLOWLO HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            break
    opened = len(socks)
    closed = set()
    deadline = time.monotonic() + hold
    i = 0
    while time.monotonic() < deadline and len(closed) < opened:
        for j, s in enumerate(socks):
            if j in closed:
                continue
            try:
                s.sendall(b"X-a%d: b\r\n" % i)
            except OSError:
                closed.add(j)
        i += 1
        time.sleep(min(trickle, max(0.0, deadline - time.monotonic())))
    for j, s in enumerate(socks):
        if j not in closed:
            s.settimeout(0.001)
            try:
                if s.recv(1) == b"":
                    closed.add(j)
            except socket.timeout:
                pass
            except OSError:
                closed.add(j)
        s.close()
    return opened, len(closed)


def garbage_http(host, port, n=50, size=4096, seed=0):
    """Send *n* connections of random bytes; return list of first response lines
    (b"" when the server just closed)."""
    import random
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        s = connect_tcp(host, port, 5.0)
        try:
            s.sendall(rnd.randbytes(size) + b"\r\n\r\n")
            s.settimeout(5.0)
            data = s.recv(4096)
            out.append(data.split(b"\r\n", 1)[0])
        except OSError:
            out.append(b"")
        finally:
            s.close()
    return out


def rst_close(sock):
    """Abort a socket: SO_LINGER 0 makes close() send RST, not FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def rst_storm(host, port, n=300, payload=b"GET /ws HTTP/1.1\r\nHost: x\r\n"):
    """Connect, send a fragment, then reset -- *n* times.  Returns n done."""
    done = 0
    for _ in range(n):
        try:
            s = connect_tcp(host, port, 5.0)
            if payload:
                s.sendall(payload)
            rst_close(s)
            done += 1
        except OSError:
            pass
    return done


def _host_port(url):
    u = urlsplit(url)
    return u.hostname, u.port or 80


#: connection-level attacks by name (for --stdin): url -> result, always "ok"
CONNECTION_ATTACKS = {
    "slowloris": lambda url: slowloris(*_host_port(url), n=300, hold=3.0, trickle=0.25),
    "garbage": lambda url: garbage_http(*_host_port(url), n=50),
    "rst-storm": lambda url: rst_storm(*_host_port(url), n=300),
}


def run_named(name, url):
    """Run attack *name*; return (ok, report line)."""
    if name in CONNECTION_ATTACKS:
        t0 = time.monotonic()
        got = CONNECTION_ATTACKS[name](url)
        if name == "garbage":
            got = sorted(set(x.decode("latin-1") for x in got))
        return True, "%-20s %-10s %s %.3fs" % (name, "ok", got, time.monotonic() - t0)
    fn, ok = ATTACKS[name]
    t0 = time.monotonic()
    try:
        got = fn(url)
    except Exception as e:  # report, go on with the next attack
        got = ("error", repr(e))
    verdict = "ok" if got in ok else "UNEXPECTED"
    return verdict == "ok", "%-20s %-10s %-28s %.3fs" % (name, verdict, got, time.monotonic() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description="hostile WebSocket client")
    p.add_argument("--url", required=True, help="ws://host:port/path?query")
    p.add_argument("attack", nargs="*", help="attack names or 'all': %s" % ", ".join(ATTACKS))
    p.add_argument("--stdin", action="store_true",
                   help="read attack names from stdin, one per line, answer one line each "
                        "(so a test can time attacks without process start-up in the window)")
    args = p.parse_args(argv)
    if args.stdin:
        for line in sys.stdin:
            ok, report = run_named(line.strip(), args.url)
            print(report, flush=True)
        return 0
    names = list(ATTACKS) if args.attack == ["all"] else args.attack
    bad = 0
    for name in names:
        ok, report = run_named(name, args.url)
        bad += not ok
        print(report)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
