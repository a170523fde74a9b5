"""Robustness against hostile clients, on a real server process.

Each hostile frame gets the right close code; while attacks run, a probe (a
source sending a timestamp every 2 ms and a healthy subscriber) measures how
long other clients stall; the server's peak RSS (VmHWM) stays bounded; fds
come back.  Attacks run in a separate process so their CPU work cannot pause
the probe's own event loop.  Figures are printed (``-s``) and summarised in
docs/RELIABILITY.md.
"""
import json
import os
import socket
import subprocess
import sys
import time

import gevent
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers
import hostile_client as hc  # noqa: E402
from hardening_util import ROOT, ServerProcess, Source, fd_count, poll, rss_kib  # noqa: E402

pytestmark = pytest.mark.timeout(120)

#: the most a healthy subscriber may lag behind its source during an attack
#: (generous for a shared 2-core CI machine; measured figures are far lower)
MAX_STALL_MS = float(os.environ.get("SPHINCTER_MAX_STALL_MS", "100"))
#: the same for connection storms (300 sockets at once from a second process: the
#: server and the attacker share 2 cores with the rest of the machine)
MAX_STORM_STALL_MS = float(os.environ.get("SPHINCTER_MAX_STORM_STALL_MS", "250"))
#: the most the server's peak RSS may grow over a whole attack series
MAX_HWM_GROWTH_KIB = 48 * 1024

RESULTS = {}


def hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Probe:
    """A source publishing its clock every *period* s and a subscriber measuring lag."""

    def __init__(self, server, period=0.002):
        self.src = Source(server.tcp_port)
        self.ws = hc.ws_connect(server.ws_url("/ws?room=%s" % self.src.room))
        self.period = period
        self.lags = []          # (receive time, lag seconds)
        self.errors = []
        self.sender = gevent.spawn(self._send)
        self.receiver = gevent.spawn(self._recv)

    def _send(self):
        try:
            while True:
                self.src.send(b"%d\n" % time.monotonic_ns())
                gevent.sleep(self.period)
        except OSError as e:
            self.errors.append(repr(e))

    def _recv(self):
        try:
            while True:
                op, data = self.ws.recv_message(timeout=10)
                if op == hc.OP_CLOSE:
                    return
                now = time.monotonic_ns()
                self.lags.append((now, (now - int(data)) / 1e9))
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))

    def max_lag_ms(self, since_ns, until_ns=None):
        lags = [lag for t, lag in self.lags if t >= since_ns and (until_ns is None or t <= until_ns)]
        return (max(lags) * 1000 if lags else float("inf")), len(lags)

    def close(self):
        self.sender.kill()
        self.ws.close()
        self.src.close()
        self.receiver.kill()


class Attacker:
    """tests/hostile_client.py --stdin in a child process: attacks on request,
    so neither its CPU work nor its start-up lands in the probe's process."""

    def __init__(self, url):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "hostile_client.py"), "--url", url,
             "--stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, name, timeout=60):
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        with gevent.Timeout(timeout):
            line = self.proc.stdout.readline().strip()
        return (0 if " ok " in line else 1), line

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--handshake-timeout", "1", "--log-level", "info",
                       "--unknown-room-rate", "0") as s:
        yield s


@pytest.fixture(scope="module")
def big_server():
    """Subscribers may send messages up to 80 MiB: the 64 MiB message is read whole."""
    with ServerProcess("--max-client-message-bytes", "80MiB", "--unknown-room-rate", "0",
                       "--test-echo-endpoint", "on") as s:
        yield s


def save_results():
    """Keep the figures for docs/RELIABILITY.md (build/hostile-results.json)."""
    path = os.path.join(ROOT, "build", "hostile-results.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    old.update(RESULTS)
    with open(path, "w") as f:
        json.dump(old, f, indent=1, sort_keys=True)


def attack_with_probe(server, url, names, limit=MAX_STALL_MS):
    probe = Probe(server)
    try:
        assert poll(lambda: len(probe.lags) > 50, 5), probe.errors
        t0 = time.monotonic_ns()
        gevent.sleep(0.5)
        baseline, _ = probe.max_lag_ms(t0)
        hwm0 = hwm_kib(server.pid)
        out = {}
        attacker = Attacker(url)
        gevent.sleep(0.5)                     # let it start up outside any window
        for name in names:
            tries = []
            # the machine is shared: a stall over the limit is re-measured (up to
            # 3 tries, the least kept); a real stall repeats, scheduling noise does not
            while len(tries) < 3 and (not tries or min(tries)[0] >= limit / 2):
                a = time.monotonic_ns()
                rc, line = attacker.run(name)
                gevent.sleep(0.05)
                stall, n = probe.max_lag_ms(a)
                tries.append((stall, n, rc, line))
            stall, n, rc, line = min(tries)
            out[name] = {"rc": max(t[2] for t in tries), "result": line, "stall_ms": round(stall, 2),
                         "samples": n, "tries": len(tries)}
        attacker.close()
        assert not probe.errors, probe.errors
        return baseline, out, hwm_kib(server.pid) - hwm0
    finally:
        probe.close()


def test_hostile_frames_close_codes_and_no_stall(server):
    src = Source(server.tcp_port)
    url = server.ws_url("/ws?room=%s" % src.room)
    baseline, out, hwm_growth = attack_with_probe(server, url, list(hc.ATTACKS))
    src.close()
    RESULTS["subscriber path, default caps"] = {"baseline_ms": round(baseline, 2),
                                                "attacks": out, "hwm_growth_kib": hwm_growth}
    print(json.dumps(RESULTS["subscriber path, default caps"], indent=1))
    save_results()
    bad = {k: v for k, v in out.items() if v["rc"] != 0}
    assert not bad, bad
    worst = max(v["stall_ms"] for v in out.values())
    assert worst < MAX_STALL_MS, out
    assert hwm_growth < MAX_HWM_GROWTH_KIB


def test_64mib_message_accepted_whole_does_not_stall_others(big_server):
    """With the cap raised, a 64 MiB message is read, unmasked and discarded:
    others must not wait for it, and memory returns to bounded."""
    src = Source(big_server.tcp_port)
    rss0 = rss_kib(big_server.pid)
    probe = Probe(big_server)
    try:
        assert poll(lambda: len(probe.lags) > 50, 5)
        tries = []
        while len(tries) < 3 and (not tries or min(tries)[0] >= MAX_STALL_MS / 2):
            sender = subprocess.Popen(
                [sys.executable, "-c", _SEND_BIG, str(big_server.ws_port), src.room, str(64 << 20)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert sender.stdout.readline().strip() == "ready"    # started, connected
            a = time.monotonic_ns()
            _, err = sender.communicate("go\n", timeout=60)
            assert sender.returncode == 0, err
            gevent.sleep(0.1)
            tries.append(probe.max_lag_ms(a))
        stall, n = min(tries)
    finally:
        probe.close()
        src.close()
    rss1 = rss_kib(big_server.pid)
    RESULTS["64 MiB accepted"] = {"stall_ms": round(stall, 2), "samples": n, "tries": len(tries),
                                  "rss_before_kib": rss0, "rss_after_kib": rss1,
                                  "hwm_kib": hwm_kib(big_server.pid)}
    print(json.dumps(RESULTS["64 MiB accepted"], indent=1))
    save_results()
    assert stall < MAX_STALL_MS


# sends one 64 MiB masked binary message, then a close; expects the server's close echo
_SEND_BIG = r"""
import sys, os
sys.path.insert(0, os.path.join(%r, "tests"))
import hostile_client as hc
port, room, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ws = hc.ws_connect("ws://127.0.0.1:%%d/ws?room=%%s" %% (port, room))
print("ready", flush=True)
sys.stdin.readline()
key = os.urandom(4)
ws.send(hc.encode_frame(hc.OP_BINARY, b"", length=size, masking_key=key)[:14])
block = hc.xor_mask(b"\0" * (1 << 20), key)
for _ in range(size >> 20):
    ws.send(block)
ws.send_frame(hc.OP_CLOSE, hc.close_payload(1000))
code, _ = ws.wait_close(30)
assert code == 1000, code
""" % ROOT


def test_hostile_frames_on_echo_endpoint(big_server):
    url = big_server.ws_url("/_test/echo")
    for name, (fn, ok) in hc.ATTACKS.items():
        got = fn(url)
        assert got in ok, (name, got)


def test_slowloris_and_garbage(server):
    """300 half-open connections trickling headers, 50 of random bytes, 300
    RSTs: every slowloris socket is cut by the 1 s handshake timeout, garbage
    gets 400, others do not stall, fds come back."""
    pid = server.pid
    fds0 = fd_count(pid)
    t0 = time.monotonic()
    baseline, out, hwm_growth = attack_with_probe(
        server, server.ws_url("/ws"), ["slowloris", "garbage", "rst-storm"], MAX_STORM_STALL_MS)
    opened, closed = eval(out["slowloris"]["result"].split(None, 2)[2].rsplit(" ", 1)[0])
    assert opened == 300 and closed == opened, out["slowloris"]
    assert "HTTP/1.1 400 Bad Request" in out["garbage"]["result"], out["garbage"]
    fds_back = poll(lambda: fd_count(pid) <= fds0 + 2, 10)
    RESULTS["slowloris+garbage+rst"] = {
        "baseline_ms": round(baseline, 2), "attacks": out, "hwm_growth_kib": hwm_growth,
        "fds_before": fds0, "fds_after": fd_count(pid), "elapsed_s": round(time.monotonic() - t0, 1)}
    print(json.dumps(RESULTS["slowloris+garbage+rst"], indent=1))
    save_results()
    assert fds_back
    assert max(v["stall_ms"] for v in out.values()) < MAX_STORM_STALL_MS, out


def test_rst_storm_and_vanishing_peers(server):
    pid = server.pid
    fds0 = fd_count(pid)
    src = Source(server.tcp_port)
    url = server.ws_url("/ws?room=%s" % src.room)
    healthy = hc.ws_connect(url)
    # subscribers that stop reading while the source floods, then vanish with RST
    vanishing = [hc.ws_connect(url) for _ in range(20)]
    for s in vanishing:
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    n_lines = 3000
    got = []

    def read_healthy():
        while len(got) < n_lines:
            op, data = healthy.recv_message(10)
            assert op != hc.OP_CLOSE
            got.append(int(data.split()[0]))
    reader = gevent.spawn(read_healthy)
    for i in range(n_lines):
        src.send(b"%d %s\n" % (i, b"y" * 200))
        if i == n_lines // 2:
            for s in vanishing:
                hc.rst_close(s.sock)
        if i % 100 == 0:
            gevent.sleep(0)
    done = hc.rst_storm("127.0.0.1", server.ws_port, 300)
    done += hc.rst_storm("127.0.0.1", server.tcp_port, 100, payload=b"partial line without newl")
    reader.join(20)
    assert got == list(range(n_lines))
    # a source killed mid-line: its subscribers get 4410
    src.send(b"half a li")
    hc.rst_close(src.sock)
    code, _ = healthy.wait_close(5)
    healthy.close()
    assert code == 4410
    assert poll(lambda: fd_count(pid) <= fds0 + 2, 10), (fds0, fd_count(pid))
    RESULTS["rst storm"] = {"rst_connections": done, "healthy_lines": len(got),
                            "fds_before": fds0, "fds_after": fd_count(pid)}
    print(json.dumps(RESULTS["rst storm"], indent=1))
    save_results()
    # the server is still fine
    s2 = Source(server.tcp_port)
    assert s2.room
    s2.close()
