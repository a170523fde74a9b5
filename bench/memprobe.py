#!/usr/bin/env python3
"""Where does an idle subscriber's memory go?  Sphincter in-process under tracemalloc.

    python bench/memprobe.py [--subs 1000] [--rooms 10] [--top 15]

Starts Sphincter's Relay in this process (gevent-patched), opens the rooms and then the idle
subscribers with the load generator, and compares tracemalloc snapshots and RSS taken before
and after the subscribers joined.  Prints per-subscriber bytes by source line.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
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
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.CLASS.ATTR=INT",
                    help="try a documented tunable, e.g. relay.wsconn.ServerConnection.read_size=4096")
    a = ap.parse_args(argv)
    R.build_wsbench()
    import importlib
    for item in a.set:
        path, value = item.split("=")
        mod, cls, attr = path.rsplit(".", 2)
        setattr(getattr(importlib.import_module("sphincter_lib." + mod), cls), attr, int(value))
    if not a.no_trace:
        tracemalloc.start(1)
    settings = config.parse(["--tcp-host", "127.0.0.1", "--tcp-port", "0", "--ws-host", "127.0.0.1",
                             "--ws-port", "0", "--log-level", "warning",
                             "--max-subscribers-per-room", "20000"])
    relay = Relay(settings).start()
    tcp, ws = relay.tcp_address, relay.ws_address
    snaps = {}

    def on_phase(name):
        gevent.sleep(0.5)
        snaps[name] = (tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None,
                       T.rss_kb(os.getpid()))

    def drive():
        return R.loadgen(["--ws", f"{ws[0]}:{ws[1]}", "--source", f"lines:{tcp[0]}:{tcp[1]}",
                          "--subs", a.subs, "--rooms", a.rooms, "--count", 0], on_phase, 60)

    r = gevent.spawn(drive).get(timeout=90)
    (s0, rss0), (s1, rss1) = snaps["sources"], snaps["subs"]
    n = r["connected"]
    if s0 is None:
        print(f"{n} idle subscribers: RSS +{(rss1 - rss0) / n:.1f} KB each {a.set or ''}")
        return 0
    diff = s1.compare_to(s0, "lineno")
    traced = sum(d.size_diff for d in diff)
    print(f"{n} idle subscribers: RSS +{(rss1 - rss0) / n:.1f} KB each, "
          f"tracemalloc +{traced / n / 1024:.1f} KB each "
          f"(untraced: greenlet C stacks, allocator slack, ...)")
    print(f"{'bytes/sub':>10} {'blocks/sub':>10}  where")
    for d in diff[:a.top]:
        fr = d.traceback[0]
        short = "/".join(Path(fr.filename).parts[-2:])
        print(f"{d.size_diff / n:10.0f} {d.count_diff / n:10.1f}  {short}:{fr.lineno}")
    relay_stop = getattr(relay, "request_stop", None)
    if relay_stop:
        relay_stop()
    return 0


if __name__ == "__main__":
    t0 = time.monotonic()
    rc = main()
    sys.stdout.flush()
    os._exit(rc)
