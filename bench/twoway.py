#!/usr/bin/env python3
"""Two-way tunnel bench: ``sphincter connect --from tcp:...`` + the relay (raw framing,
write-back) against websockify, for the same load, side by side in the same run.

One WebSocket client and one local TCP service; both directions at once: the service sends
N bytes to the client while the client sends N bytes to the service (64 KiB messages / writes).
Every byte is counted and checked (sha256 each way). The client and the service are separate
processes (``--role client`` / ``--role service``, gevent, sphincter's own wsclient), identical
for both targets; the server side's CPU (relay + connect, or websockify and its children) is
measured from /proc.

    python bench/twoway.py                      # 5 rounds x 128 MiB each way, about a minute
    python bench/twoway.py --mib 16 --rounds 1  # quick
Writes bench/results/<date>-twoway.json and prints a markdown table.
"""

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

CHUNK = 64 * 1024


def pattern(i):
    """Deterministic, incompressible-looking 64 KiB chunk number ``i``."""
    seed = hashlib.sha256(b"twoway %d" % (i % 1024)).digest()
    return (seed * (CHUNK // len(seed)))[:CHUNK]


# --- roles (run in their own processes, under gevent) -----------------------------------------

def role_service(port_file, total, direction="both"):
    from gevent import monkey
    monkey.patch_all()
    import gevent
    from gevent.server import StreamServer

    def handle(sock, address):
        got, n = hashlib.sha256(), 0

        def send():
            if direction == "up":
                return
            for i in range(total // CHUNK):
                sock.sendall(pattern(i))

        sender = gevent.spawn(send)
        while n < total and direction != "down":
            data = sock.recv(256 * 1024)
            if not data:
                break
            got.update(data)
            n += len(data)
        end = time.time()
        sender.join()
        print(json.dumps({"service_received": n, "service_sha": got.hexdigest(), "up_end": end}), flush=True)

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    Path(port_file).write_text(str(server.server_port))
    server.serve_forever()


def role_client(url, total, timeout, direction="both"):
    from gevent import monkey
    monkey.patch_all()
    import gevent
    from sphincter_lib.agent import wsclient

    conn = wsclient.ClientConnection(url, timeout=10, max_message_bytes=16 << 20).open()
    t0 = time.monotonic()
    start = time.time()            # wall clock: the service's last byte is compared with it
    up_done = {}

    def upload():
        for i in range(total // CHUNK if direction != "down" else 0):
            conn.send(pattern(i), text=False)
        up_done["t"] = time.monotonic() - t0

    up = gevent.spawn(upload)
    got, n = hashlib.sha256(), 0
    with gevent.Timeout(timeout):
        while n < total and direction != "up":
            _, data = conn.recv()
            got.update(data)
            n += len(data)
        down_t = time.monotonic() - t0
        up.join()
    print(json.dumps({"client_received": n, "client_sha": got.hexdigest(), "down_s": down_t,
                      "up_send_s": up_done.get("t"), "start": start, "down_end": start + down_t}),
          flush=True)
    conn.close()


# --- orchestration ---------------------------------------------------------------------------

def expected_sha(total):
    h = hashlib.sha256()
    for i in range(total // CHUNK):
        h.update(pattern(i))
    return h.hexdigest()


def start_service(workdir, total, direction):
    port_file = Path(workdir) / "service.port"
    proc = subprocess.Popen([sys.executable, __file__, "--role", "service", "--port-file", str(port_file),
                             "--bytes", str(total), "--direction", direction], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("bench service did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def start_sphincter(workdir, service_port):
    import targets as T
    tcp, ws = T.free_port(), T.free_port()
    relay = T.Server([sys.executable, str(ROOT / "sphincter.py"), "--tcp-host", "127.0.0.1", "--tcp-port",
                      str(tcp), "--ws-host", "127.0.0.1", "--ws-port", str(ws), "--log-level", "warning",
                      "--framing", "raw", "--write-back", "on", "--max-client-message-bytes", "256KiB",
                      "--write-queue-bytes", "1MiB"] + os.environ.get("TWOWAY_RELAY_ARGS", "").split(),
                     [tcp, ws], workdir)
    out = open(Path(workdir) / "connect.out", "w+")
    connect = subprocess.Popen([sys.executable, str(ROOT / "sphincter.py"), "connect", "--relay",
                                "127.0.0.1:%d" % tcp, "--from", "tcp:127.0.0.1:%d" % service_port,
                                "--framing", "raw", "--stats-interval", "0", "--log-level", "warning"],
                               stdout=out, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    lines = []
    while len(lines) < 2:
        out.seek(0)
        lines = [l.split() for l in out.read().splitlines()]
        if time.monotonic() > deadline or connect.poll() is not None:
            connect.kill()
            relay.stop()
            raise RuntimeError("connect printed no ROOM/WRITE lines: %r" % lines)
        time.sleep(0.05)
    code, key = lines[0][1], lines[1][1]
    url = "ws://127.0.0.1:%d/ws?room=%s&key=%s" % (ws, code, key)

    def stop():
        connect.terminate()
        connect.wait(10)
        relay.stop()
    return url, [relay.pid, connect.pid], stop


def start_websockify(workdir, service_port):
    import targets as T
    ws = T.free_port()
    server = T.Server([T.Websockify()._exe(), "127.0.0.1:%d" % ws, "127.0.0.1:%d" % service_port],
                      [ws], workdir)
    return "ws://127.0.0.1:%d/" % ws, [server.pid], server.stop


class CpuSampler:
    """CPU seconds used by the server processes and their children during the run, sampled
    every 50 ms (websockify handles each connection in a child that exits at its end)."""

    def __init__(self, pids):
        import targets as T
        self.T, self.roots, self.seen, self.base = T, pids, {}, {}
        self._stop = None

    def _sample(self, into):
        for root in self.roots:
            for p in self.T.tree(root):
                try:
                    with open("/proc/%d/stat" % p) as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    into[p] = (int(fields[11]) + int(fields[12])) / self.T.CLK_TCK
                except (OSError, IndexError, ValueError):
                    pass

    def start(self):
        import threading
        self._sample(self.base)
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(0.05):
                self._sample(self.seen)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sample(self.seen)
        return sum(v - self.base.get(p, 0.0) for p, v in self.seen.items())

    def by_root(self):
        """CPU seconds of each root process alone (relay, connect), for the record."""
        return [round(self.seen.get(p, 0.0) - self.base.get(p, 0.0), 3) for p in self.roots]


def run_once(target, total, timeout, direction="both"):
    import tempfile
    workdir = tempfile.mkdtemp(prefix="sphincter-twoway-")
    service, port = start_service(workdir, total, direction)
    url, pids, stop = (start_sphincter if target == "sphincter" else start_websockify)(workdir, port)
    sampler = CpuSampler(pids).start()
    try:
        client = subprocess.run([sys.executable, __file__, "--role", "client", "--url", url, "--bytes",
                                 str(total), "--timeout", str(timeout), "--direction", direction],
                                capture_output=True, text=True,
                                timeout=timeout + 30)
        if client.returncode != 0:
            raise RuntimeError("client failed: %s" % client.stderr[-500:])
        c = json.loads(client.stdout.strip().splitlines()[-1])
        s = json.loads(service.stdout.readline())
        wall = max(c["down_end"], s["up_end"]) - c["start"]
        cpu = sampler.stop()
        by_root = sampler.by_root()
    finally:
        sampler.stop()
        stop()
        service.kill()
        service.wait()
    sha = expected_sha(total)
    moved = total * (2 if direction == "both" else 1)
    return {"target": target, "direction": direction, "mib_each_way": total / (1 << 20),
            "wall_s": round(wall, 3), "mb_per_s": round(moved / 1e6 / wall, 1),
            "down_s": round(c["down_s"], 3), "server_cpu_s": round(cpu, 3), "cpu_by_process": by_root,
            "server_cpu_us_per_mb": round(cpu * 1e6 / (moved / 1e6), 1),
            "exact_down": direction == "up" or (c["client_received"] == total and c["client_sha"] == sha),
            "exact_up": direction == "down" or (s["service_received"] == total and s["service_sha"] == sha)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=("service", "client"))
    ap.add_argument("--port-file")
    ap.add_argument("--url")
    ap.add_argument("--bytes", type=int)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--mib", type=int, default=128, help="MiB each way per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--targets", default="sphincter,websockify")
    ap.add_argument("--out-dir", default=str(BENCH / "results"))
    ap.add_argument("--direction", choices=("both", "down", "up"), default="both",
                    help="both ways at once (the bench), or one way (to see which limits)")
    a = ap.parse_args()
    if a.role == "service":
        return role_service(a.port_file, a.bytes, a.direction)
    if a.role == "client":
        return role_client(a.url, a.bytes, a.timeout, a.direction)
    total = a.mib << 20
    names = a.targets.split(",")
    results = []
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]     # interleaved, rotated
        for name in order:
            res = run_once(name, total, a.timeout, a.direction)
            res["round"] = r
            results.append(res)
            print(json.dumps(res), flush=True)
    summary = {}
    for name in names:
        rs = sorted(x["mb_per_s"] for x in results if x["target"] == name)
        cpus = sorted(x["server_cpu_us_per_mb"] for x in results if x["target"] == name)
        summary[name] = {"median_mb_per_s": rs[len(rs) // 2], "min": rs[0], "max": rs[-1],
                         "median_cpu_us_per_mb": cpus[len(cpus) // 2],
                         "all_exact": all(x["exact_down"] and x["exact_up"] for x in results
                                          if x["target"] == name)}
    doc = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "python": platform.python_version(),
           "cpus": os.cpu_count(), "direction": a.direction, "mib_each_way": a.mib, "rounds": a.rounds, "runs": results,
           "summary": summary}
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if a.direction == "both" else "-" + a.direction
    path = out / ("%s-twoway%s.json" % (dt.date.today().isoformat(), suffix))
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n| target | MB/s (%s, median, min..max) | server CPU µs/MB | byte-exact |" % a.direction)
    print("|---|---:|---:|---|")
    for name in names:
        s = summary[name]
        print("| %s | %.1f (%.1f..%.1f) | %.0f | %s |" % (name, s["median_mb_per_s"], s["min"], s["max"],
                                                         s["median_cpu_us_per_mb"], s["all_exact"]))
    print("\nwritten: %s" % path)


if __name__ == "__main__":
    sys.exit(main())
