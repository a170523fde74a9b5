"""Helpers shared by the hardening tier's tests and bench/soak.py.

A real server process (``python sphincter.py ...`` on port 0), its RSS and fd
count from /proc, a self-signed certificate, TCP sources.
"""
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

from testkit import require_program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTEN_RE = re.compile(r"listening tcp=(\S+):(\d+) ws=(\S+):(\d+)")


def make_cert(directory, cn="localhost"):
    """Self-signed RSA cert for *cn* (and 127.0.0.1) -> (certfile, keyfile)."""
    require_program("openssl")
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=%s" % cn, "-addext",
                    "subjectAltName=DNS:%s,IP:127.0.0.1" % cn,
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def client_ssl_context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False  # we connect to 127.0.0.1, cert has IP SAN anyway
    return ctx


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class ServerProcess:
    """``python sphincter.py --tcp-port 0 --ws-port 0 *args`` as a context manager.

    ``tcp_port``/``ws_port`` come from the start log line; ``lines`` keeps the
    process output (stdout+stderr) for assertions."""

    def __init__(self, *args, env=None, start_timeout=15.0):
        self.args = ["--tcp-host", "127.0.0.1", "--tcp-port", "0",
                     "--ws-host", "127.0.0.1", "--ws-port", "0"] + [str(a) for a in args]
        self.env = dict(os.environ, **(env or {}))
        self.start_timeout = start_timeout
        self.lines = []
        self.proc = None
        self._ready = threading.Event()

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "sphincter.py")] + self.args,
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(self.start_timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("server did not start: %s" % "".join(self.lines[-20:]))
        return self

    def _pump(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            m = LISTEN_RE.search(line)
            if m and not self._ready.is_set():
                self.tcp_host, self.tcp_port = m.group(1), int(m.group(2))
                self.ws_host, self.ws_port = m.group(3), int(m.group(4))
                self._ready.set()
        self._ready.set()

    @property
    def pid(self):
        return self.proc.pid

    def ws_url(self, path="/ws", scheme="ws"):
        return "%s://127.0.0.1:%d%s" % (scheme, self.ws_port, path)

    def stop(self, timeout=10.0):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc):
        self.stop()

    def output(self):
        return "".join(self.lines)


class Source:
    """A TCP source: connect, optional ``AUTH``, read the ``ROOM`` banner."""

    def __init__(self, port, token=None, host="127.0.0.1", tls_cafile=None, timeout=5.0):
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls_cafile:
            sock = client_ssl_context(tls_cafile).wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        if token is not None:
            sock.sendall(b"AUTH " + token.encode() + b"\n")
        self.banner = self.readline(timeout)
        parts = self.banner.split()
        self.room = parts[1].decode() if len(parts) == 2 and parts[0] == b"ROOM" else None

    def readline(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        buf = b""
        while not buf.endswith(b"\n"):
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                c = self.sock.recv(1)
            except socket.timeout:
                break
            if not c:
                break
            buf += c
        return buf

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def poll(fn, timeout=5.0, interval=0.01):
    """Call *fn* until it returns a truthy value or *timeout*; return last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)
