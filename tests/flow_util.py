"""Helpers for tests/relay/test_flow.py (issue 9: flow control and fairness).

The relay under test is the real process (``python sphincter.py``): the tests measure the relay,
not a relay sharing the test's event loop and GIL. Loads that must not hog the test's own loop
(the blaster next door) are separate OS processes too: this file runs as a script
(``python tests/flow_util.py blast HOST PORT SECONDS``) and then imports nothing but the stdlib
(and ``testkit``, which is stdlib only).

Inside the tests (run under ``python -m gevent.monkey``) the stdlib socket, time, subprocess and
urllib calls below are cooperative.
"""
import base64
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

from testkit import stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = os.path.join(ROOT, "sphincter.py")
LOCAL = ["--tcp-host", "127.0.0.1", "--tcp-port", "0", "--ws-host", "127.0.0.1", "--ws-port", "0"]

#: close codes (docs/PROTOCOL.md)
TOO_SLOW = 4408
SOURCE_CLOSED = 4410

_LISTENING = re.compile(r"listening tcp=([\d.]+):(\d+) ws=([\d.]+):(\d+)")


class RelayProcess:
    """``python sphincter.py ARGS`` on ephemeral loopback ports; its log goes to a temp file."""

    def __init__(self, *args, start_timeout=20.0):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPHINCTER_")}
        self.args = list(args)
        self.logfile = tempfile.NamedTemporaryFile(prefix="sphincter-flow-", suffix=".log",
                                                   delete=False)
        self.proc = subprocess.Popen([sys.executable, ENTRY] + LOCAL + ["--log-level", "info"] +
                                     self.args, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        deadline = time.monotonic() + start_timeout
        while True:
            m = _LISTENING.search(self.log())
            if m:
                break
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                log = self.log().strip()[-600:]
                self.stop()
                raise AssertionError("relay %s %s: %s" % ("refused" if exited else "did not start",
                                                         " ".join(self.args), log))
            time.sleep(0.02)
        self.tcp = (m.group(1), int(m.group(2)))
        self.ws = (m.group(3), int(m.group(4)))

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        with open(self.logfile.name, "r", errors="replace") as f:
            return f.read()

    def rss_kb(self):
        """VmRSS of the relay process, KiB."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def metrics(self):
        """/metrics as {'name': value, 'name{label="x"}': value} (Prometheus text format)."""
        url = "http://%s:%d/metrics" % self.ws
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def metric(self, name, default=None):
        value = self.metrics().get(name, default)
        if value is None:
            raise AssertionError("metric %s missing from /metrics" % name)
        return value

    def healthz(self):
        with urllib.request.urlopen("http://%s:%d/healthz" % self.ws, timeout=10) as r:
            return json.loads(r.read())

    def stop(self):
        stop_process(self.proc, timeout=10)
        self.logfile.close()
        try:
            os.unlink(self.logfile.name)
        except OSError:
            pass


def open_source(address, timeout=10.0):
    """A connected source socket and its room code (banner read byte by byte)."""
    sock = socket.create_connection(address, timeout=timeout)
    line = b""
    while not line.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            raise AssertionError("source closed before its banner: %r" % line)
        line += b
    assert line.startswith(b"ROOM "), line
    return sock, line[5:].strip().decode()


def ws_connect(address, code, rcvbuf=None, timeout=10.0):
    """A WebSocket subscriber on a plain socket (handshake by hand). ``rcvbuf``: a small receive
    buffer, set before connecting, makes a subscriber that stops reading stall quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(address)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET /ws?room=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n"
                  % (code, address[0], address[1], key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = sock.recv(1)
        if not b:
            raise AssertionError("closed during the handshake: %r" % head)
        head += b
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


class FrameReader:
    """Server frames (unmasked) from a socket: ``next()`` returns ``(opcode, payload)``, or
    ``(None, b"")`` at EOF. A close frame gives ``(8, payload)``; see :func:`close_code`."""

    def __init__(self, sock, bufsize=256 * 1024):
        self.sock = sock
        self.bufsize = bufsize
        self.buf = bytearray()
        self.pos = 0
        self.eof = False
        self.bytes = 0            # wire bytes received

    def _fill(self, need):
        while len(self.buf) - self.pos < need:
            if self.eof:
                return False
            if self.pos:
                del self.buf[:self.pos]
                self.pos = 0
            try:
                data = self.sock.recv(self.bufsize)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                return len(self.buf) - self.pos >= need
            self.bytes += len(data)
            self.buf += data
        return True

    def next(self):
        if not self._fill(2):
            return None, b""
        b0, b1 = self.buf[self.pos], self.buf[self.pos + 1]
        assert not b1 & 0x80, "server frames are never masked"
        n, head = b1 & 0x7F, 2
        if n == 126:
            if not self._fill(4):
                return None, b""
            n, head = struct.unpack_from("!H", self.buf, self.pos + 2)[0], 4
        elif n == 127:
            if not self._fill(10):
                return None, b""
            n, head = struct.unpack_from("!Q", self.buf, self.pos + 2)[0], 10
        if not self._fill(head + n):
            return None, b""
        start = self.pos + head
        payload = bytes(self.buf[start:start + n])
        self.pos = start + n
        assert b0 & 0x80, "fragmented frames are not expected from the relay"
        return b0 & 0x0F, payload


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def read_messages(reader, on_message, deadline):
    """Call ``on_message(opcode, payload)`` for each data frame until a close frame (returns its
    code) or EOF (returns None); answers nothing (the relay does not need pongs within a test)."""
    while time.monotonic() < deadline:
        opcode, payload = reader.next()
        if opcode is None:
            return None
        if opcode == 8:
            return close_code(payload)
        if opcode in (1, 2, 0):
            on_message(opcode, payload)
    raise AssertionError("subscriber still open at the deadline")


def percentile(values, q):
    s = sorted(values)
    return s[min(int(q * len(s)), len(s) - 1)] if s else float("nan")


class Pattern:
    """Deterministic pseudo-random bytes for a tunnel: chunk k of the stream, and its sha256."""

    def __init__(self, seed=b"sphincter-flow", pool=1 << 20):
        block, out = hashlib.sha256(seed).digest(), []
        while len(out) * 32 < pool + 65536:
            block = hashlib.sha256(block).digest()
            out.append(block)
        self.pool = b"".join(out)
        self.size = pool

    def chunk(self, k, n):
        start = (k * 7919) % (self.size - n) if n < self.size else 0
        return self.pool[start:start + n]


# ---- the blaster: a separate process, plain blocking sockets ---------------------------------

def blast(host, port, seconds, line_bytes=100, out=sys.stdout):
    """Open a room and write ``line_bytes``-long lines as fast as the socket takes them for
    ``seconds``; print ``ROOM <code>`` once the room is open, then a JSON summary at the end."""
    sock, code = open_source((host, port))
    sock.settimeout(None)
    line = b"x" * (line_bytes - 1) + b"\n"
    block = line * max(1, (64 * 1024) // line_bytes)
    out.write("ROOM %s\n" % code)
    out.flush()
    sent, t0 = 0, time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        sock.sendall(block)
        sent += len(block)
    elapsed = time.monotonic() - t0
    sock.close()
    out.write(json.dumps({"room": code, "bytes": sent, "seconds": round(elapsed, 3),
                          "mb_per_s": round(sent / elapsed / 1e6, 1)}) + "\n")
    out.flush()


class Blaster:
    """The blaster as a child process: ``Blaster(relay.tcp, 2.0)``; ``.code``; ``.result()``."""

    def __init__(self, address, seconds, line_bytes=100, timeout=10.0):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "blast",
                                      address[0], str(address[1]), str(seconds), str(line_bytes)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True)
        self.seconds = seconds
        first = self.proc.stdout.readline()
        if not first.startswith("ROOM "):
            self.proc.kill()
            raise AssertionError("blaster failed: %r %s" % (first, self.proc.stderr.read()))
        self.code = first.split()[1]

    def result(self, timeout=30.0):
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "blast":
        blast(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
              int(sys.argv[5]) if len(sys.argv) > 5 else 100)
    else:
        sys.exit("usage: flow_util.py blast HOST PORT SECONDS [LINE_BYTES]")
