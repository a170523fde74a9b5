"""A real Redis and real Sphincter nodes for the cross-node tests (issue 13, tests/relay/test_cluster.py).

- :class:`RedisServer`: ``redis-server`` on a free loopback port, no persistence; ``stop()``,
  ``restart()`` on the same port (it comes back empty, as a Redis without persistence does),
  ``url``, ``ping()``.
- :class:`Node`: ``python sphincter.py --redis-url URL --node-name NAME ...`` as a subprocess on
  ephemeral loopback ports (:class:`flow_util.RelayProcess` parses its ``listening tcp=... ws=...``
  line), with ``terminate()`` (SIGTERM), ``kill()`` (SIGKILL), ``log()``.
- the ``cluster`` fixture: one Redis and a factory for nodes, everything torn down after the test;
  the nodes' logs are printed at teardown, so a failing test shows them (pytest shows a test's
  captured output only when it fails).

Skips when ``redis-server`` is missing, and fails under CI=true (:func:`testkit.require_program`).
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from flow_util import RelayProcess
from testkit import require_program, stop_process, unit

#: options every node gets: debug logs for failure messages, short drains so teardown is quick
NODE_DEFAULTS = ("--log-level", "debug", "--shutdown-timeout", "2", "--close-timeout", "1")


def free_port():
    """A loopback port nobody listens on right now (the kernel's pick; may be taken again later)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def redis_command(port, *args, password=None, timeout=2.0):
    """One command over a fresh connection, in RESP (after ``AUTH password`` if given); returns
    its reply's first line (bytes), or None when Redis does not answer. Enough for PING; no
    dependency on redis-py."""
    commands = ([("AUTH", password)] if password else []) + [args]
    out = b"".join(_resp(*c) for c in commands)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(out)
            data = b""
            while data.count(b"\r\n") < len(commands):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data.count(b"\r\n") < len(commands):
                return None
            return data.split(b"\r\n")[len(commands) - 1]
    except OSError:
        return None


def _resp(*args):
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class RedisServer:
    """``redis-server`` on 127.0.0.1, no persistence; started by the constructor."""

    binary = "redis-server"

    def __init__(self, password=None, start_timeout=10.0, attempts=5, extra=()):
        require_program("redis-server", shutil.which(self.binary))
        self.extra = list(extra)                  # more redis-server options (--replicaof ...)
        self.start_timeout = start_timeout
        self.password = password
        self.proc = None
        self.logfile = tempfile.NamedTemporaryFile(prefix="sphincter-redis-", suffix=".log",
                                                   delete=False)
        last = ""
        for _ in range(attempts):                 # another process may take the port meanwhile
            self.port = free_port()
            ok, last = self._start()
            if ok:
                return
        raise AssertionError("redis-server did not start after %d attempts: %s" % (attempts, last))

    @property
    def url(self):
        auth = (":%s@" % self.password) if self.password else ""
        return "redis://%s127.0.0.1:%d/0" % (auth, self.port)

    def _start(self):
        """Start on ``self.port``; (True, "") once it answers PING, (False, log tail) if it exited."""
        self.logfile.seek(0)
        self.logfile.truncate()
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"]
            + (["--requirepass", self.password] if self.password else []) + self.extra,
            stdout=self.logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + unit(self.start_timeout)
        while True:
            if self.ping():
                return True, ""
            if self.proc.poll() is not None:
                return False, self.log()[-400:]
            if time.monotonic() > deadline:
                stop_process(self.proc, timeout=unit(5))
                raise AssertionError("redis-server on port %d did not answer PING within %ss: %s"
                                     % (self.port, self.start_timeout, self.log()[-400:]))
            time.sleep(0.01)

    def ping(self):
        return redis_command(self.port, "PING", password=self.password, timeout=0.5) == b"+PONG"

    def log(self):
        with open(self.logfile.name, "r", errors="replace") as f:
            return f.read()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """Stop the server (SIGTERM: no save, no persistence configured); the port is free after."""
        if self.proc is not None:
            stop_process(self.proc, timeout=unit(5))

    def restart(self, timeout=10.0):
        """Stop, then start again on the SAME port, empty. Retries while the port is still busy
        (TIME_WAIT is no obstacle: redis-server sets SO_REUSEADDR)."""
        self.stop()
        deadline = time.monotonic() + unit(timeout)
        while True:
            ok, last = self._start()
            if ok:
                return
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not restart on port %d: %s" % (self.port, last))
            time.sleep(0.1)

    def close(self):
        self.stop()
        self.logfile.close()
        try:
            os.unlink(self.logfile.name)
        except OSError:
            pass


class Node(RelayProcess):
    """One Sphincter node: ``python sphincter.py ... --redis-url URL --node-name NAME *extra``.

    ``tcp`` and ``ws`` are its (host, port) addresses (also as ``tcp_address``/``ws_address``, so
    the helpers of tests/conftest.py that take a relay take a node)."""

    def __init__(self, redis_url, name, *extra, start_timeout=20.0):
        self.name = name
        args = ["--redis-url", redis_url, "--node-name", name] + list(NODE_DEFAULTS) + list(extra)
        super().__init__(*args, start_timeout=unit(start_timeout))
        self.tcp_address, self.ws_address = self.tcp, self.ws

    def terminate(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=10.0):
        return self.proc.wait(timeout=unit(timeout))

    def log_tail(self, lines=60, noise=(" sphincter.relay.access: ", " sphincter.relay.ws: ", "MAINT_NOTIFICATIONS")):
        """The last ``lines`` lines of its log, without the access log and per-connection chatter."""
        kept = [line for line in self.log().splitlines() if not any(n in line for n in noise)]
        return "\n".join(kept[-lines:])

    def __repr__(self):
        return "<node %s tcp=%s:%d ws=%s:%d>" % ((self.name,) + self.tcp + self.ws)


class Cluster:
    """One Redis and the nodes started on it: ``cluster.nodes(3, "--room-grace", "2")``."""

    def __init__(self, **redis_options):
        self.redis = RedisServer(**redis_options)
        self.other_redis = []
        self.started = []
        self.closers = []

    def node(self, *extra, name=None):
        node = Node(self.redis.url, name or "n%d" % (len(self.started) + 1), *extra)
        self.started.append(node)
        return node

    def another_redis(self, **options):
        """A second Redis (another relay), stopped after the nodes."""
        server = RedisServer(**options)
        self.other_redis.append(server)
        return server

    def node_on(self, url, name, *extra):
        """A node of another relay (another Redis or another --redis-prefix), torn down with these."""
        node = Node(url, name, *extra)
        self.started.append(node)
        return node

    def nodes(self, count, *extra):
        """``count`` nodes with the same options, started side by side (each start is a process
        spawn and an import of gevent: in parallel it costs about one start)."""
        import gevent
        names = ["n%d" % (len(self.started) + i + 1) for i in range(count)]
        jobs = [gevent.spawn(Node, self.redis.url, name, *extra) for name in names]
        gevent.joinall(jobs)
        for job in jobs:                          # keep every started node, for teardown
            if job.successful():
                self.started.append(job.value)
        for job in jobs:
            if not job.successful():
                raise job.exception
        return [job.value for job in jobs]

    def on_teardown(self, fn):
        """Close a client (socket, WebSocket) before the nodes stop, so they need not wait for it."""
        self.closers.append(fn)
        return fn

    def close(self):
        for fn in reversed(self.closers):
            try:
                fn()
            except Exception:                     # noqa: BLE001  a client already closed
                pass
        for node in self.started:
            node.terminate()                      # all at once: the drains overlap
        for node in self.started:
            try:                                  # one SIGTERM only: a second one may cut the drain
                node.proc.wait(timeout=unit(10))
            except subprocess.TimeoutExpired:
                node.kill()
            print("---- node %s (exit %s), last lines of its log ----" % (node.name, node.proc.returncode))
            print(node.log_tail(80))
            node.stop()
        for server in [self.redis] + self.other_redis:
            server.close()


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.close()
