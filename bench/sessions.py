#!/usr/bin/env python3
"""Session tunnels bench (issue 20): Sphincter's session rooms against websockify, side by side.

The same local service (a process of its own) sits behind each target:

- ``sphincter``: the relay (``--sessions on``) and ``sphincter connect --sessions``: each
  WebSocket client gets its own TCP connection to the service (client → relay → agent → service);
- ``websockify``: websockify in front of the same service (its own connection per client too);
- ``direct``: the service itself speaks WebSocket on a second port (no relay at all): the ceiling
  of this client and this service together, to show the client is not what limits the others.

Scenarios (each target started fresh for each run; targets interleaved, their order rotated
every round; medians of ``--rounds`` >= 3 rounds; ratios against websockify of the same run):

- ``throughput``: one session, ``--mib`` MiB each way at once, sha256-checked both ways;
  server CPU per MB (relay + agent; websockify and its children) sampled from /proc;
- ``open``: time to first byte of a service that greets first (``HELLO <n>``), from the
  client's ``connect()`` to the greeting, ``--opens`` sessions one after another (p50, p99);
  then session opens per second with ``--open-concurrency`` clients opening at once;
- ``concurrent``: ``--conc-sessions`` sessions at once, ``--conc-mib`` MiB each way each:
  aggregate MB/s and fairness (slowest / fastest session's rate);
- ``idle``: ``--idle-sessions`` idle sessions held open: RSS growth of the relay and of the agent
  divided by the number of sessions (Sphincter only).

The client and the service are single-threaded epoll loops (no gevent), with 64 KiB frames;
the client masks with a zero key (allowed by RFC 6455; every server still unmasks), so moving a
byte costs it a ``send``/``recv_into`` and a sha256 update.

    python bench/sessions.py                          # every scenario, 5 rounds (~3 min)
    python bench/sessions.py --only throughput --rounds 5
Writes bench/results/<date>-sessions.json and .md.
"""

import argparse
import datetime as dt
import errno
import hashlib
import json
import os
import platform
import resource
import select
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

CHUNK = 64 * 1024
CYCLE = 16                               # distinct chunks: the byte stream repeats every MiB
GREETING = b"HELLO %06d\n"
GREETING_LEN = len(GREETING % 0)
RECV = 256 * 1024
SEND_BURST = 256 * 1024                 # bytes one connection may send per event (fairness)
ZERO_MASK = b"\0\0\0\0"
IN, OUT, ERRS = select.EPOLLIN, select.EPOLLOUT, select.EPOLLHUP | select.EPOLLERR
SCENARIOS = ("throughput", "open", "concurrent", "idle")


def pattern(i):
    seed = hashlib.sha256(b"sessions %d" % i).digest()
    return (seed * (CHUNK // len(seed)))[:CHUNK]


BLOB = b"".join(pattern(i) for i in range(CYCLE))       # the service's stream, 1 MiB


def frame_header(length, masked, opcode=2):
    mask = 0x80 if masked else 0
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, mask | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, mask | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, mask | 127, length)
    return head + (ZERO_MASK if masked else b"")


#: the client's upload (frames masked with a zero key) and the direct service's download frames
UP_BLOB = b"".join(frame_header(CHUNK, True) + pattern(i) for i in range(CYCLE))
DOWN_BLOB = b"".join(frame_header(CHUNK, False) + pattern(i) for i in range(CYCLE))
CLOSE_FRAME = frame_header(2, True, 8) + struct.pack("!H", 1000)


def expected_sha(total):
    h = hashlib.sha256()
    for _ in range(total // len(BLOB)):
        h.update(BLOB)
    return h.hexdigest()


def cpu_self():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Stream:
    """``total`` bytes of ``blob`` repeated (whole cycles), after an optional ``head``."""

    def __init__(self, blob, total, head=b""):
        self.blob, self.cycles = memoryview(blob), total // len(BLOB)     # 1 MiB of payload each
        self.pending = memoryview(head) if head else (self._next() if self.cycles else None)

    def _next(self):
        self.cycles -= 1
        return self.blob

    def send(self, sock):
        """Send what the socket takes (at most SEND_BURST); True once everything is sent."""
        sent = 0
        while self.pending is not None:
            try:
                n = sock.send(self.pending)
            except BlockingIOError:
                return False
            sent += n
            self.pending = self.pending[n:]
            if not self.pending:
                self.pending = self._next() if self.cycles > 0 else None
            if sent >= SEND_BURST:
                return self.pending is None
        return True


class FrameReader:
    """Incremental WebSocket frame parser; ``on_data(memoryview)`` gets data payloads, ``on_close()``
    a close frame. Masked frames must use the zero key (our own client's)."""

    def __init__(self, on_data, on_close):
        self.on_data, self.on_close = on_data, on_close
        self.hdr = bytearray()
        self.need = 2
        self.remain = 0
        self.opcode = 0

    def feed(self, mv):
        i, n = 0, len(mv)
        while i < n:
            if self.remain:
                take = min(self.remain, n - i)
                if self.opcode in (0, 1, 2):
                    self.on_data(mv[i:i + take])
                i += take
                self.remain -= take
                if not self.remain and self.opcode == 8:
                    self.on_close()
                continue
            take = min(self.need - len(self.hdr), n - i)
            self.hdr += mv[i:i + take]
            i += take
            if len(self.hdr) < self.need:
                continue
            h = self.hdr
            b1 = h[1] & 0x7F
            need = 2 + (2 if b1 == 126 else 8 if b1 == 127 else 0) + (4 if h[1] & 0x80 else 0)
            if need > self.need:
                self.need = need
                continue
            length = b1 if b1 < 126 else struct.unpack_from("!H" if b1 == 126 else "!Q", h, 2)[0]
            if h[1] & 0x80 and bytes(h[-4:]) != ZERO_MASK:
                raise ValueError("only the zero mask key is supported here")
            self.opcode = h[0] & 0x0F
            self.hdr, self.need, self.remain = bytearray(), 2, length
            if not length and self.opcode == 8:
                self.on_close()


# --- the service (its own process) -------------------------------------------------------------

class ServiceConn:
    def __init__(self, sock, idx, total, ws, out):
        self.sock, self.idx, self.total, self.ws, self.out = sock, idx, total, ws, out
        self.t_accept = time.monotonic()
        self.got, self.hash, self.t_up_end = 0, hashlib.sha256(), None
        self.request = bytearray() if ws else None
        self.frames = FrameReader(self._data, self._closed) if ws else None
        greeting = GREETING % idx
        if ws:
            greeting = frame_header(len(greeting), False) + greeting
        self.stream = None if ws else Stream(BLOB, 0, greeting)
        self._greeting = greeting
        self.closed_by_client = False

    def _data(self, mv):
        if not self.got and self.total:         # the client's first byte: our stream starts now
            head = self.stream.pending if self.stream is not None else None
            self.stream = Stream(DOWN_BLOB if self.ws else BLOB, self.total, bytes(head) if head else b"")
        self.hash.update(mv)
        self.got += len(mv)
        if self.got >= self.total and self.t_up_end is None:
            self.t_up_end = time.monotonic()

    def _closed(self):
        self.closed_by_client = True

    def readable(self, buf):
        """False once the connection is over."""
        try:
            n = self.sock.recv_into(buf)
        except BlockingIOError:
            return True
        except OSError:
            n = 0
        if not n:
            return False
        mv = memoryview(buf)[:n]
        if self.request is not None:
            self.request += mv
            end = self.request.find(b"\r\n\r\n")
            if end < 0:
                return True
            rest = bytes(self.request[end + 4:])
            self.sock.setblocking(True)
            self.sock.sendall(_accept_answer(bytes(self.request[:end])))
            self.sock.setblocking(False)
            self.request = None
            self.stream = Stream(DOWN_BLOB, 0, self._greeting)
            if rest:
                self.frames.feed(memoryview(rest))
            return True
        if self.frames is not None:
            self.frames.feed(mv)
            if self.closed_by_client:
                try:
                    self.sock.send(frame_header(2, False, 8) + struct.pack("!H", 1000))
                except OSError:
                    pass
                return False
        else:
            self._data(mv)
        return True

    def writable(self):
        try:
            return self.stream is None or self.stream.send(self.sock)
        except OSError:
            return True

    def report(self):
        self.out.write(json.dumps({"idx": self.idx, "received": self.got, "sha": self.hash.hexdigest(),
                                   "t_accept": self.t_accept, "t_up_end": self.t_up_end,
                                   "t_eof": time.monotonic()}) + "\n")
        self.out.flush()


def _accept_answer(request):
    import base64
    key = b""
    for line in request.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: binary\r\n\r\n")


def role_service(port_file, total):
    listeners = []
    for _ in range(2):                                  # plain TCP, and WebSocket (direct)
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(1024)
        ls.setblocking(False)
        listeners.append(ls)
    ep = select.epoll()
    for ls in listeners:
        ep.register(ls.fileno(), IN)
    Path(port_file + ".tmp").write_text("%d %d" % (listeners[0].getsockname()[1], listeners[1].getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    conns, buf, idx, out = {}, bytearray(RECV), 0, sys.stdout
    kinds = {listeners[0].fileno(): False, listeners[1].fileno(): True}
    while True:
        for fd, ev in ep.poll(1.0):
            if fd in kinds:
                while True:
                    try:
                        sock, _ = socket.socket.accept(listeners[0] if not kinds[fd] else listeners[1])
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    c = ServiceConn(sock, idx, total, kinds[fd], out)
                    idx += 1
                    conns[sock.fileno()] = c
                    done = c.writable()
                    ep.register(sock.fileno(), IN | (0 if done else OUT))
                continue
            c = conns[fd]
            alive = True
            if ev & (IN | ERRS):
                alive = c.readable(buf)
            if alive and ev & OUT:
                if c.writable():
                    ep.modify(fd, IN)
            elif alive and c.stream is not None and c.stream.pending is not None and not ev & OUT:
                ep.modify(fd, IN | OUT)
            if not alive:
                ep.unregister(fd)
                del conns[fd]
                c.sock.close()
                c.report()


# --- the client (its own process) ----------------------------------------------------------------

class ClientSession:
    def __init__(self, ep, host, port, path, total, hold, barrier=False):
        self.ep, self.total, self.hold, self.barrier = ep, total, hold, barrier
        self.t0 = time.monotonic()
        self.t_open = self.t_first = self.t_down_end = self.t_up_sent = None
        self.idx, self.greet, self.got, self.hash = None, bytearray(), 0, hashlib.sha256()
        self.state, self.error = "connect", None
        self.handshake = bytearray()
        self.frames = FrameReader(self._data, self._closed)
        self.up = None
        self.request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: c3BoaW5jdGVyIGJlbmNoIQ==\r\nSec-WebSocket-Version: 13\r\n"
                        "Sec-WebSocket-Protocol: binary\r\n\r\n" % (path, host, port)).encode()
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = self.sock.connect_ex((host, port))
        if rc not in (0, errno.EINPROGRESS):
            raise OSError(rc, os.strerror(rc))
        self.fd = self.sock.fileno()
        ep.register(self.fd, OUT)

    def _data(self, mv):
        if len(self.greet) < GREETING_LEN:
            take = GREETING_LEN - len(self.greet)
            self.greet += mv[:take]
            mv = mv[take:]
            if len(self.greet) == GREETING_LEN:
                self.t_first = time.monotonic()
                self.idx = int(bytes(self.greet).split()[1])
                if not self.total and not self.hold:
                    self._close()
        if mv:
            self.hash.update(mv)
            self.got += len(mv)
            if self.got >= self.total and self.t_down_end is None:
                self.t_down_end = time.monotonic()
                self._maybe_close()

    def _closed(self):
        if self.state != "closing":
            self.error = self.error or "closed by the server before the end"
        self.state = "done"

    def _maybe_close(self):
        if self.t_down_end is not None and self.t_up_sent is not None and self.state == "open":
            self._close()

    def _close(self):
        self.state = "closing"
        try:
            self.sock.send(CLOSE_FRAME)
        except OSError:
            pass
        self.ep.modify(self.fd, IN)

    def start_upload(self):
        self.up = Stream(UP_BLOB, self.total)
        self.ep.modify(self.fd, IN | OUT)

    def release(self):
        """Hold mode: close now."""
        if self.state == "open":
            self._close()

    def on_event(self, ev, buf):
        try:
            if self.state == "connect":
                if ev & (OUT | ERRS):
                    err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    self.sock.send(self.request)
                    self.state = "handshake"
                    self.ep.modify(self.fd, IN)
                return
            if ev & (IN | ERRS):
                n = self.sock.recv_into(buf)
                if not n:
                    if self.state != "closing":
                        self.error = self.error or "connection closed in state %s" % self.state
                    self.state = "done"
                    return
                mv = memoryview(buf)[:n]
                if self.state == "handshake":
                    self.handshake += mv
                    end = self.handshake.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    if not self.handshake.startswith(b"HTTP/1.1 101"):
                        raise OSError(0, "handshake refused: %r" % bytes(self.handshake[:80]))
                    self.t_open = time.monotonic()
                    rest = bytes(self.handshake[end + 4:])
                    self.state = "open"
                    if self.total:
                        if not self.barrier:
                            self.start_upload()
                    else:
                        self.t_up_sent = self.t_open
                    if rest:
                        self.frames.feed(memoryview(rest))
                    return
                self.frames.feed(mv)
            if ev & OUT and self.state == "open" and self.up is not None:
                if self.up.send(self.sock):
                    self.up = None
                    self.t_up_sent = time.monotonic()
                    self.ep.modify(self.fd, IN)
                    self._maybe_close()
        except OSError as exc:
            self.error = self.error or str(exc)
            self.state = "done"

    def result(self):
        return {"idx": self.idx, "t0": self.t0, "t_open": self.t_open, "t_first": self.t_first,
                "t_down_end": self.t_down_end, "t_up_sent": self.t_up_sent, "got": self.got,
                "sha": self.hash.hexdigest() if self.total else None, "error": self.error}


def role_client(url, total, sessions, concurrency, hold, timeout, barrier=False):
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, port = hostport.rsplit(":", 1)
    port, path = int(port), "/" + path
    ep = select.epoll()
    buf = bytearray(RECV)
    live, results, started = {}, [], 0
    cpu0, t_start = cpu_self(), time.monotonic()
    deadline = t_start + timeout
    phase_said, t_go = False, None
    while started < sessions or live:
        # hold mode: ``concurrency`` bounds the sessions still opening, not those held open
        busy = sum(1 for s in live.values() if s.t_first is None) if hold else len(live)
        while started < sessions and busy < concurrency:
            s = ClientSession(ep, host, port, path, total, hold, barrier)
            live[s.fd] = s
            started += 1
            busy += 1
        if hold and not phase_said and started == sessions and all(
                s.t_first is not None or s.state == "done" for s in live.values()):
            print("PHASE idle %d" % sum(1 for s in live.values() if s.state == "open"), flush=True)
            sys.stdin.readline()
            phase_said = True
            for s in list(live.values()):
                s.release()
        if barrier and t_go is None and started == sessions and all(
                s.t_first is not None or s.state == "done" for s in live.values()):
            t_go = time.monotonic()             # every session is open: all start moving bytes now
            for s in live.values():
                if s.state == "open":
                    s.start_upload()
        for fd, ev in ep.poll(0.5):
            s = live.get(fd)
            if s is None:
                continue
            s.on_event(ev, buf)
            if s.state == "done":
                ep.unregister(fd)
                s.sock.close()
                del live[fd]
                results.append(s.result())
        if time.monotonic() > deadline:
            for s in live.values():
                s.error = s.error or "timeout in state %s" % s.state
                results.append(s.result())
            break
    print(json.dumps({"sessions": results, "cpu_s": cpu_self() - cpu0, "t_go": t_go,
                      "wall_s": time.monotonic() - t_start}), flush=True)


# --- orchestration ---------------------------------------------------------------------------------

class Service:
    def __init__(self, workdir, total):
        port_file = str(Path(workdir) / "service.port")
        self.proc = subprocess.Popen([sys.executable, __file__, "--role", "service", "--port-file", port_file,
                                      "--bytes", str(total)], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError("bench service did not start")
            time.sleep(0.02)
        self.port, self.ws_port = map(int, Path(port_file).read_text().split())
        self.reports, self._cond = [], threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.reports.append(json.loads(line))
                self._cond.notify_all()

    def wait_reports(self, n, timeout=30):
        with self._cond:
            self._cond.wait_for(lambda: len(self.reports) >= n, timeout)
            return list(self.reports)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def _python(role):
    """The interpreter command for a Sphincter process (under cProfile with SESSIONS_PROFILE=DIR:
    DIR/<role>-<pid of the bench>-<n>.prof, written when the process stops)."""
    where = os.environ.get("SESSIONS_PROFILE")
    if not where:
        return [sys.executable]
    _python.n = getattr(_python, "n", 0) + 1
    os.makedirs(where, exist_ok=True)
    return [sys.executable, "-m", "cProfile", "-o", os.path.join(where, "%s-%d-%d.prof" % (role, os.getpid(), _python.n))]


def start_sphincter(workdir, service, root=ROOT):
    import targets as T
    tcp, ws = T.free_port(), T.free_port()
    relay = T.Server(_python("relay") + [str(Path(root) / "sphincter.py"), "--tcp-host", "127.0.0.1", "--tcp-port",
                      str(tcp), "--ws-host", "127.0.0.1", "--ws-port", str(ws), "--log-level", "warning",
                      "--sessions", "on", "--session-open-rate", "1000000", "--session-open-burst", "1000000",
                      "--max-sessions-per-room", "100000", "--max-sessions", "100000"]
                     + os.environ.get("SESSIONS_RELAY_ARGS", "").split(), [tcp, ws], workdir)
    out = open(Path(workdir) / "connect.out", "w+")
    connect = subprocess.Popen(_python("agent") + [str(Path(root) / "sphincter.py"), "connect", "--relay",
                                "127.0.0.1:%d" % tcp, "--from", "tcp:127.0.0.1:%d" % service.port,
                                "--sessions", "--stats-interval", "0", "--log-level", "warning"]
                               + os.environ.get("SESSIONS_AGENT_ARGS", "").split(),
                               stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               preexec_fn=T._raise_nofile)
    deadline = time.monotonic() + 20
    lines = []
    while len(lines) < 2:
        out.seek(0)
        lines = [line.split() for line in out.read().splitlines()]
        if time.monotonic() > deadline or connect.poll() is not None:
            connect.kill()
            relay.stop()
            raise RuntimeError("connect printed no ROOM/WRITE lines: %r" % lines)
        time.sleep(0.02)
    url = "ws://127.0.0.1:%d/ws?room=%s&key=%s" % (ws, lines[0][1], lines[1][1])

    def stop():
        connect.terminate()
        try:
            connect.wait(10)
        except subprocess.TimeoutExpired:
            connect.kill()
            connect.wait()
        relay.stop()
    return url, [relay.pid, connect.pid], stop


def start_websockify(workdir, service):
    import targets as T
    ws = T.free_port()
    server = T.Server([T.Websockify()._exe(), "127.0.0.1:%d" % ws, "127.0.0.1:%d" % service.port], [ws], workdir)
    return "ws://127.0.0.1:%d/" % ws, [server.pid], server.stop


def start_direct(workdir, service):
    return "ws://127.0.0.1:%d/" % service.ws_port, [service.proc.pid], lambda: None


STARTERS = {"sphincter": start_sphincter, "websockify": start_websockify, "direct": start_direct}
#: ``--base-root DIR``: "sphincter-base", the same from another checkout (before/after a change)
BASE_ROOT = []


def start_base(workdir, service):
    return start_sphincter(workdir, service, BASE_ROOT[0])


def client(url, total, sessions=1, concurrency=1, hold=False, timeout=120, on_idle=None, barrier=False):
    argv = [sys.executable, __file__, "--role", "client", "--url", url, "--bytes", str(total),
            "--sessions", str(sessions), "--concurrency", str(concurrency), "--timeout", str(timeout)]
    if hold:
        argv.append("--hold")
    if barrier:
        argv.append("--barrier")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=__import__("targets")._raise_nofile)
    timer = threading.Timer(timeout + 30, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("PHASE idle"):
                on_idle(int(line.split()[2]))
                proc.stdin.write("\n")
                proc.stdin.flush()
            elif line.startswith("{"):
                proc.wait()
                return json.loads(line)
        raise RuntimeError("client failed (rc %s)" % proc.wait())
    finally:
        timer.cancel()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))] if values else None


def check(c, reports, total):
    """(all exact, errors): every session's bytes both ways, by the service's index."""
    sha = expected_sha(total) if total else None
    by_idx = {r["idx"]: r for r in reports}
    errors = [s["error"] for s in c["sessions"] if s["error"]]
    for s in c["sessions"]:
        r = by_idx.get(s["idx"])
        if r is None:
            errors.append("no service report for session %s" % s["idx"])
        elif total and not (s["got"] == total and s["sha"] == sha and r["received"] == total and r["sha"] == sha):
            errors.append("session %s: bytes differ (down %d, up %d)" % (s["idx"], s["got"], r["received"]))
    return not errors, errors[:5]


def with_target(name, total, fn):
    import twoway
    workdir = tempfile.mkdtemp(prefix="sphincter-sessions-")
    service = Service(workdir, total)
    try:
        url, pids, stop = (start_base if name == "sphincter-base" else STARTERS[name])(workdir, service)
        try:
            sampler = twoway.CpuSampler(pids)
            return fn(url, pids, sampler, service)
        finally:
            stop()
    finally:
        service.stop()


def run_throughput(name, P):
    total = P["mib"] << 20

    def fn(url, pids, sampler, service):
        sampler.start()
        c = client(url, total)
        reports = service.wait_reports(1)
        cpu = sampler.stop()
        s = c["sessions"][0]
        r = reports[0] if reports else {}
        end = max(s["t_down_end"] or 0, r.get("t_up_end") or 0)
        wall = end - s["t_open"] if s["t_open"] else float("nan")
        exact, errors = check(c, reports, total)
        moved = 2 * total
        return {"mb_per_s": round(moved / 1e6 / wall, 1), "wall_s": round(wall, 3),
                "server_cpu_s": round(cpu, 3), "cpu_by_process": sampler.by_root(),
                "server_cpu_us_per_mb": round(cpu * 1e6 / (moved / 1e6), 1),
                "client_cpu_share": round(c["cpu_s"] / c["wall_s"], 2), "exact": exact, "errors": errors}
    return with_target(name, total, fn)


def run_open(name, P):
    def fn(url, pids, sampler, service):
        seq = client(url, 0, P["opens"], 1)
        ttfb = [(s["t_first"] - s["t0"]) * 1e3 for s in seq["sessions"] if s["t_first"]]
        handshake = [(s["t_open"] - s["t0"]) * 1e3 for s in seq["sessions"] if s["t_open"]]
        n = P["opens"] * 2
        par = client(url, 0, n, P["open_concurrency"])
        ok = [s for s in par["sessions"] if s["t_first"] and not s["error"]]
        span = max(s["t_first"] for s in ok) - min(s["t0"] for s in ok) if ok else float("nan")
        service.wait_reports(P["opens"] + n, timeout=10)
        errors = [s["error"] for s in seq["sessions"] + par["sessions"] if s["error"]]
        return {"ttfb_p50_ms": round(pct(ttfb, 50), 3), "ttfb_p99_ms": round(pct(ttfb, 99), 3),
                "handshake_p50_ms": round(pct(handshake, 50), 3), "opens": len(ttfb),
                "opens_per_s": round(len(ok) / span, 1), "concurrent_opens": len(ok),
                "errors": errors[:5], "exact": not errors}
    return with_target(name, 0, fn)


def run_concurrent(name, P):
    total, n = P["conc_mib"] << 20, P["conc_sessions"]

    def fn(url, pids, sampler, service):
        sampler.start()
        c = client(url, total, n, n, barrier=True)
        reports = service.wait_reports(n)
        cpu = sampler.stop()
        s0 = c["t_go"]
        by_idx = {r["idx"]: r for r in reports}
        rates, spans = [], []
        for s in sorted(c["sessions"], key=lambda s: s["t0"]):
            r = by_idx.get(s["idx"], {})
            if s["t_open"] and s["t_down_end"] and r.get("t_up_end"):
                end = max(s["t_down_end"], r["t_up_end"])
                rates.append(2 * total / 1e6 / (end - s0))
                spans.append(round(end - s0, 3))
        start = s0
        end = max([s["t_down_end"] or 0 for s in c["sessions"]] + [r.get("t_up_end") or 0 for r in reports])
        exact, errors = check(c, reports, total)
        return {"sessions": n, "aggregate_mb_per_s": round(2 * total * n / 1e6 / (end - start), 1),
                "fairness": round(min(rates) / max(rates), 3) if rates else None,
                "slowest_mb_per_s": round(min(rates), 2) if rates else None,
                "fastest_mb_per_s": round(max(rates), 2) if rates else None,
                "server_cpu_us_per_mb": round(cpu * 1e6 / (2 * total * n / 1e6), 1),
                "client_cpu_share": round(c["cpu_s"] / c["wall_s"], 2), "exact": exact, "errors": errors,
                "spans_s": spans}
    return with_target(name, total, fn)


def run_idle(name, P):
    import targets as T
    n = P["idle_sessions"]

    def fn(url, pids, sampler, service):
        time.sleep(0.5)
        before = [T.rss_kb(p) for p in pids]
        marks = {}

        def on_idle(open_now):
            time.sleep(1.0)                     # let the servers settle
            marks["after"], marks["open"] = [T.rss_kb(p) for p in pids], open_now

        c = client(url, 0, n, 64, hold=True, on_idle=on_idle)
        errors = [s["error"] for s in c["sessions"] if s["error"]]
        k = max(marks.get("open", 0), 1)
        per = [round((a - b) / k, 1) for a, b in zip(marks.get("after", before), before)]
        return {"sessions": marks.get("open", 0), "rss_kb_before": before, "rss_kb_after": marks.get("after"),
                "kb_per_session": per, "errors": errors[:5], "exact": not errors and marks.get("open") == n}
    return with_target(name, 0, fn)


RUNNERS = {"throughput": (run_throughput, ("direct", "websockify", "sphincter", "sphincter-base")),
           "open": (run_open, ("websockify", "sphincter", "sphincter-base")),
           "concurrent": (run_concurrent, ("websockify", "sphincter", "sphincter-base")),
           "idle": (run_idle, ("sphincter", "sphincter-base"))}

#: per-scenario figures summarised as medians (name, larger is better)
FIGURES = {"throughput": [("mb_per_s", True), ("server_cpu_us_per_mb", False), ("client_cpu_share", False)],
           "open": [("ttfb_p50_ms", False), ("ttfb_p99_ms", False), ("handshake_p50_ms", False),
                    ("opens_per_s", True)],
           "concurrent": [("aggregate_mb_per_s", True), ("fairness", True), ("server_cpu_us_per_mb", False)],
           "idle": []}


def summarise(runs):
    summary = {}
    for (scenario, target) in sorted({(r["scenario"], r["target"]) for r in runs}):
        rs = [r for r in runs if r["scenario"] == scenario and r["target"] == target and "error" not in r]
        s = {"rounds": len(rs), "all_exact": all(r["exact"] for r in rs)}
        for fig, _ in FIGURES[scenario]:
            vals = [r[fig] for r in rs if r.get(fig) is not None]
            if vals:
                s[fig] = {"median": pct(vals, 50), "min": min(vals), "max": max(vals)}
        if scenario == "idle" and rs:
            s["relay_kb_per_session"] = pct([r["kb_per_session"][0] for r in rs], 50)
            s["agent_kb_per_session"] = pct([r["kb_per_session"][1] for r in rs], 50)
        summary.setdefault(scenario, {})[target] = s
    for scenario, targets in summary.items():
        base = targets.get("websockify")
        for name in ("sphincter", "sphincter-base"):
            if base and name in targets:
                _ratios(runs, scenario, name, base, targets[name])
    return summary


def _ratios(runs, scenario, name, base, sph):
    ratios, paired = {}, {}
    for fig, _ in FIGURES[scenario]:
        if fig in base and fig in sph and base[fig]["median"]:
            ratios[fig] = round(sph[fig]["median"] / base[fig]["median"], 2)
        # the same figure's ratio within each round (the two ran back to back), then the median
        per_round = {}
        for r in runs:
            if r["scenario"] == scenario and r.get(fig) is not None and "error" not in r:
                per_round.setdefault(r["round"], {})[r["target"]] = r[fig]
        pairs = [v[name] / v["websockify"] for v in per_round.values() if v.get("websockify") and name in v]
        if pairs:
            paired[fig] = {"median": round(pct(pairs, 50), 2), "min": round(min(pairs), 2),
                           "max": round(max(pairs), 2)}
    sph["ratio_to_websockify"] = ratios
    sph["paired_ratio_to_websockify"] = paired


def markdown(doc):
    S = doc["summary"]
    out = ["# Session tunnels bench (%s)" % doc["date"], "",
           "`%s`; Python %s, %d CPUs (shared); %d rounds, targets interleaved; medians (min..max)."
           % (doc["command"], doc["python"], doc["cpus"], doc["rounds"]), ""]

    def cell(s, fig, fmt="%.1f"):
        if fig not in s:
            return "-"
        v = s[fig]
        return (fmt + " (" + fmt + ".." + fmt + ")") % (v["median"], v["min"], v["max"])

    def paired(s, fig):
        p = s.get("paired_ratio_to_websockify", {}).get(fig)
        return "%.2f (%.2f..%.2f)" % (p["median"], p["min"], p["max"]) if p else ""

    if "throughput" in S:
        out += ["## One session, %d MiB each way at once (sha256-checked)" % doc["params"]["mib"], "",
                "| target | MB/s (both ways) | server CPU µs/MB | client CPU share | exact | MB/s × websockify |",
                "|---|---:|---:|---:|---|---:|"]
        for t, s in S["throughput"].items():
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                t, cell(s, "mb_per_s"), cell(s, "server_cpu_us_per_mb", "%.0f"), cell(s, "client_cpu_share", "%.2f"),
                s["all_exact"], paired(s, "mb_per_s")))
        out += ["", "× websockify: the median of each round's ratio (min..max). Client CPU share: the "
                "client's CPU seconds / its wall time (1.0 would be a saturated client)."]
        out.append("")
    if "open" in S:
        out += ["## Session opens, service greets first", "",
                "| target | TTFB p50 ms | TTFB p99 ms | handshake p50 ms | opens/s (%d at once) | opens/s × websockify |"
                % doc["params"]["open_concurrency"], "|---|---:|---:|---:|---:|---:|"]
        for t, s in S["open"].items():
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                t, cell(s, "ttfb_p50_ms", "%.2f"), cell(s, "ttfb_p99_ms", "%.2f"),
                cell(s, "handshake_p50_ms", "%.2f"), cell(s, "opens_per_s", "%.0f"), paired(s, "opens_per_s")))
        out += ["", "TTFB: from the client's connect() to the service's greeting (%d sessions one after "
                "another, per round); handshake: to the HTTP 101." % doc["params"]["opens"], ""]
    if "concurrent" in S:
        out += ["## %d sessions at once, %d MiB each way each" % (doc["params"]["conc_sessions"],
                                                                 doc["params"]["conc_mib"]), "",
                "| target | aggregate MB/s | fairness (slowest/fastest) | server CPU µs/MB | exact | MB/s × websockify |",
                "|---|---:|---:|---:|---|---:|"]
        for t, s in S["concurrent"].items():
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                t, cell(s, "aggregate_mb_per_s"), cell(s, "fairness", "%.2f"),
                cell(s, "server_cpu_us_per_mb", "%.0f"), s["all_exact"], paired(s, "aggregate_mb_per_s")))
        out += ["", "Every session is open (greeting received) before any sends (a barrier); a session's "
                "rate: its bytes both ways / (its last byte either way - the barrier).", ""]
    if "idle" in S:
        out += ["## Idle sessions (%d held open)" % doc["params"]["idle_sessions"], "",
                "| target | relay KB/session | agent KB/session |", "|---|---:|---:|"]
        for t, s in S["idle"].items():
            out.append("| %s | %s | %s |" % (t, s.get("relay_kb_per_session"), s.get("agent_kb_per_session")))
        out.append("")
    return "\n".join(out)


METHOD = (
    "Method: loopback only, one fresh server per run (for Sphincter: the relay with `--sessions on` "
    "and `sphincter connect --sessions`, per-address open limits lifted; websockify %(websockify)s in "
    "front of the same service). The client and the service are single-threaded epoll processes "
    "(`bench/sessions.py --role client|service`, no gevent), 64 KiB frames, client frames masked "
    "with a zero key; every byte is sha256-checked both ways. Server CPU = utime+stime of the "
    "server processes and their children (relay + agent; websockify and its per-connection "
    "child) from `/proc`, sampled every 50 ms. `direct` is the service speaking WebSocket itself "
    "(no relay): the ceiling of this client and service. Targets interleaved, order rotated each "
    "round; cells: median (min..max) of %(rounds)d rounds; \"× websockify\": the median of each "
    "round's ratio. The machine is shared (2 CPUs, load average %(load)s at the end of the run): read "
    "the ratios and the CPU per MB, not the absolute MB/s.")


def _websockify_version():
    try:
        from importlib.metadata import version
        return version("websockify")
    except Exception:
        return "?"


def goals(S):
    rows = []
    t = S.get("throughput", {}).get("sphincter", {}).get("paired_ratio_to_websockify", {}).get("mb_per_s")
    if t:
        rows.append(("one session's throughput ≥ 1.0× websockify", "%.2f×" % t["median"],
                     "met" if t["median"] >= 1.0 else "**not met**"))
    o = S.get("open", {}).get("sphincter", {}).get("ttfb_p50_ms")
    if o:
        rows.append(("time to first byte p50 < 5 ms", "%.2f ms" % o["median"],
                     "met" if o["median"] < 5 else "**not met**"))
    return rows


def update_docs(doc, md, path):
    """Put the "## Session tunnels" section (this run) into ``path``, replacing the previous one."""
    S = doc["summary"]
    versions = "(%s)" % doc.get("websockify_version", "?")
    head = ["## Session tunnels", "",
            "Generated by `make bench-sessions` (`bench/sessions.py`; this run: `%s`) on %s; %d CPUs, Python %s; results: "
            "`bench/results/%s-sessions.{json,md}`." % (doc["command"], doc["date"], doc["cpus"], doc["python"],
                                                         doc["date"][:10]), "",
            METHOD % {"websockify": versions, "rounds": doc["rounds"],
                      "load": "%.1f" % doc["loadavg"][0]}, "",
            "| goal (issue 20, `sphincter`) | measured | verdict |", "|---|---|---|"]
    head += ["| %s | %s | %s |" % row for row in goals(S)]
    head += ["", "Where the time goes and what changed (profiles, before/after): "
             "`bench/results/*-sessions-findings.md`."]
    if doc.get("base_root"):
        head += ["", "`sphincter-base`: the same Sphincter bench from another checkout, %s, in the same run."
                 % (doc.get("base_note") or "`%s`" % doc["base_root"])]
    body = ("\n" + md.split("\n", 4)[4]).replace("\n## ", "\n### ")   # the tables, one level down
    section = "\n".join(head) + "\n" + body
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find("\n## Session tunnels\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + text[end:] if end >= 0 else text[:start]
        text = text.rstrip("\n") + "\n"
    path.write_text(text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=("service", "client"))
    ap.add_argument("--port-file")
    ap.add_argument("--url")
    ap.add_argument("--bytes", type=int, default=0)
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--barrier", action="store_true", help="client: no session sends before all are open")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated: %s" % ",".join(SCENARIOS))
    ap.add_argument("--targets", default="direct,websockify,sphincter")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mib", type=int, default=128, help="throughput: MiB each way")
    ap.add_argument("--opens", type=int, default=200, help="open: sessions opened one after another")
    ap.add_argument("--open-concurrency", type=int, default=8)
    ap.add_argument("--conc-sessions", type=int, default=100)
    ap.add_argument("--conc-mib", type=int, default=2)
    ap.add_argument("--idle-sessions", type=int, default=500)
    ap.add_argument("--out-dir", default=str(BENCH / "results"))
    ap.add_argument("--tag", default="sessions")
    ap.add_argument("--base-root", help="also run 'sphincter-base': sphincter.py of this other checkout "
                                        "(e.g. a git worktree of main), for before/after figures")
    ap.add_argument("--base-note", default="", help="what --base-root is, for the report")
    ap.add_argument("--from-json", help="re-render a run's .md (and the docs section) from its .json")
    ap.add_argument("--docs", default=str(ROOT / "docs" / "BENCHMARKS.md"),
                    help="its 'Session tunnels' section is rewritten by a run of every scenario; '' : no")
    a = ap.parse_args()
    if a.role == "service":
        return role_service(a.port_file, a.bytes)
    if a.role == "client":
        return role_client(a.url, a.bytes, a.sessions, a.concurrency, a.hold, a.timeout, a.barrier)
    if a.from_json:
        doc = json.loads(Path(a.from_json).read_text())
        doc["summary"] = summarise(doc["runs"])
        doc.setdefault("websockify_version", _websockify_version())
        Path(a.from_json).write_text(json.dumps(doc, indent=1) + "\n")
        md = markdown(doc)
        Path(a.from_json[:-len(".json")] + ".md").write_text(md + "\n")
        if a.docs:
            update_docs(doc, md, Path(a.docs))
        print(md)
        return 0
    P = {"mib": a.mib, "opens": a.opens, "open_concurrency": a.open_concurrency,
         "conc_sessions": a.conc_sessions, "conc_mib": a.conc_mib, "idle_sessions": a.idle_sessions}
    wanted = a.targets.split(",")
    if a.base_root:
        BASE_ROOT.append(a.base_root)
        wanted.append("sphincter-base")
    runs = []
    for r in range(a.rounds):
        for scenario in a.only.split(","):
            fn, names = RUNNERS[scenario]
            names = [n for n in names if n in wanted]
            k = r % max(len(names), 1)
            for name in names[k:] + names[:k]:             # interleaved, order rotated each round
                t0 = time.monotonic()
                try:
                    res = fn(name, P)
                except Exception as exc:                   # one failed run is recorded, not fatal
                    res = {"error": "%s: %s" % (exc.__class__.__name__, exc), "exact": False}
                res.update({"scenario": scenario, "target": name, "round": r,
                            "run_s": round(time.monotonic() - t0, 2)})
                runs.append(res)
                print(json.dumps(res), flush=True)
    doc = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "command": " ".join(["python bench/sessions.py"] + [shlex.quote(x) for x in sys.argv[1:]]),
           "python": platform.python_version(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
           "rounds": a.rounds, "params": P, "runs": runs, "summary": summarise(runs),
           "websockify_version": _websockify_version(), "base_root": a.base_root,
           "base_note": a.base_note}
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / ("%s-%s" % (dt.date.today().isoformat(), a.tag))
    Path(str(stem) + ".json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    Path(str(stem) + ".md").write_text(md + "\n")
    print("\n" + md + "\nwritten: %s.{json,md}" % stem)
    if a.docs and set(a.only.split(",")) == set(SCENARIOS) and a.tag == "sessions":
        update_docs(doc, md, Path(a.docs))
        print("updated: %s (section Session tunnels)" % a.docs)
    return 0 if all(r.get("exact") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
