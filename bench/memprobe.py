#!/usr/bin/env python3
"""Where does an idle subscriber's memory go?  Sphincter in-process under tracemalloc.

    python bench/memprobe.py [--subs 1000] [--rooms 10] [--top 15] [--redis] [--out FILE]

Starts Sphincter's Relay in this process (gevent-patched), opens the rooms and then the idle
subscribers with the load generator, and compares tracemalloc snapshots and RSS taken before
and after the subscribers joined (each after a ``gc.collect()``).  Prints per-subscriber bytes
by source line (and appends them to FILE).  ``--redis``: Redis mode, with a redis-server of its
own on a free loopback port.  ``--no-trace``: RSS only (tracemalloc's own records inflate it).
``--tls``: wss:// subscribers (a throwaway self-signed certificate; they keep a greenlet each),
opened by a child process of this script (the load generator speaks no TLS).
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import base64  # noqa: E402
import gc  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import tempfile  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gevent  # noqa: E402

import run as R  # noqa: E402
import targets as T  # noqa: E402
from sphincter_lib.relay import config  # noqa: E402
from sphincter_lib.relay.server import Relay  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--no-trace", action="store_true", help="RSS only (tracemalloc inflates it)")
    ap.add_argument("--redis", action="store_true", help="Redis mode (starts a redis-server)")
    ap.add_argument("--out", help="append the report to this file")
    ap.add_argument("--tls", action="store_true", help="wss:// subscribers (one room)")
    ap.add_argument("--tls-client", nargs=4, metavar=("HOST", "PORT", "CODE", "N"),
                    help=argparse.SUPPRESS)        # the child that opens the TLS subscribers
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.CLASS.ATTR=INT",
                    help="try a documented tunable, e.g. relay.wsconn.ServerConnection.read_size=4096")
    a = ap.parse_args(argv)
    if a.tls_client:
        return tls_clients(*a.tls_client)
    R.build_wsbench()
    import importlib
    for item in a.set:
        path, value = item.split("=")
        mod, cls, attr = path.rsplit(".", 2)
        setattr(getattr(importlib.import_module("sphincter_lib." + mod), cls), attr, int(value))
    if not a.no_trace:
        tracemalloc.start(1)
    argv = ["--tcp-host", "127.0.0.1", "--tcp-port", "0", "--ws-host", "127.0.0.1",
            "--ws-port", "0", "--log-level", "warning", "--max-subscribers-per-room", "20000"]
    redis = None
    if a.redis:
        port = T.free_port()
        redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind",
                                  "127.0.0.1", "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not T.listening(port):
            time.sleep(0.05)
        argv += ["--redis-url", "redis://127.0.0.1:%d/0" % port]
    if a.tls:
        tmp = tempfile.mkdtemp(prefix="memprobe-")
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        argv += ["--tls-cert", cert, "--tls-key", key]
    try:
        return probe(a, config.parse(argv))
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(5)


def own_rss_kb():
    """This process's RSS alone (targets.rss_kb counts the load generator, its child, too)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * T.PAGE_KB


def drive_tls(n, tcp, ws, on_phase):
    """A source (its banner names the room), then ``n`` wss:// subscribers from a child process."""
    src = socket.create_connection(tcp)
    banner = b""
    while not banner.endswith(b"\n"):
        banner += src.recv(1)
    code = banner[5:].strip().decode()
    on_phase("sources")
    child = subprocess.Popen([sys.executable, __file__, "--tls-client", ws[0], str(ws[1]), code,
                              str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = child.stdout.readline().split()
        on_phase("subs")
        return {"connected": int(ready[1]) if ready else 0}
    finally:
        child.stdin.close()
        child.wait(30)
        src.close()


def tls_clients(host, port, code, n):
    """The child: ``n`` upgraded wss:// connections, kept open until stdin closes."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conns = []
    for _ in range(int(n)):
        sock = ctx.wrap_socket(socket.create_connection((host, int(port))))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(("GET /ws?room=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13"
                      "\r\n\r\n" % (code, host, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        if head.startswith(b"HTTP/1.1 101"):
            conns.append(sock)
    print("ready %d" % len(conns), flush=True)
    sys.stdin.read()
    return 0


def probe(a, settings):
    relay = Relay(settings).start()
    tcp, ws = relay.tcp_address, relay.ws_address
    snaps = {}

    def on_phase(name):
        gevent.sleep(0.5)
        gc.collect()
        snaps[name] = (tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None,
                       own_rss_kb())

    def drive():
        if a.tls:
            return drive_tls(a.subs, tcp, ws, on_phase)
        return R.loadgen(["--ws", f"{ws[0]}:{ws[1]}", "--source", f"lines:{tcp[0]}:{tcp[1]}",
                          "--subs", a.subs, "--rooms", a.rooms, "--count", 0,
                          "--conc", 64 if a.redis else 128], on_phase, 60)

    r = gevent.spawn(drive).get(timeout=90)
    (s0, rss0), (s1, rss1) = snaps["sources"], snaps["subs"]
    n = r["connected"]
    mode = ("redis" if a.redis else "in-process") + (", wss://" if a.tls else "")
    rooms = 1 if a.tls else a.rooms
    lines = []
    if s0 is None:
        lines.append(f"{n} idle subscribers ({mode}, {rooms} room(s)): RSS +{(rss1 - rss0) / n:.1f} KB each "
                     f"{a.set or ''}")
    else:
        diff = s1.compare_to(s0, "lineno")
        traced = sum(d.size_diff for d in diff)
        lines.append(f"{n} idle subscribers ({mode}, {rooms} room(s)): RSS +{(rss1 - rss0) / n:.1f} KB each "
                     f"(tracemalloc on), traced +{traced / n / 1024:.2f} KB each "
                     f"(untraced: allocator slack, ...)")
        lines.append(f"{'bytes/sub':>10} {'blocks/sub':>10}  where")
        for d in diff[:a.top]:
            fr = d.traceback[0]
            short = "/".join(Path(fr.filename).parts[-2:])
            lines.append(f"{d.size_diff / n:10.0f} {d.count_diff / n:10.1f}  {short}:{fr.lineno}")
    print("\n".join(lines))
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n".join(lines) + "\n\n")
    relay_stop = getattr(relay, "request_stop", None)
    if relay_stop:
        relay_stop()
    return 0


if __name__ == "__main__":
    t0 = time.monotonic()
    rc = main()
    sys.stdout.flush()
    os._exit(rc)
