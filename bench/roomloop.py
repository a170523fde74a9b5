#!/usr/bin/env python3
"""One room, in process, no sockets: Sphincter's fan-out path alone, CPU per delivery.

    python bench/roomloop.py [--tree DIR] --subs 100 [--deliveries 20000000] [--seconds 10]

Imports ``sphincter_lib`` from DIR (default: this checkout; bench/revs.py passes a materialised
git revision), opens one room in a ``RoomRegistry`` and subscribes N cursors whose ``direct``
hook takes, "writes" (counts) and commits, as ``relay/session.py``'s non-blocking path does.
The loop publishes bursts of ``--burst`` 99-byte text messages and yields to the hub, which runs
the room's ``_flush``: publish, encode, flush, take/commit, the lead and the counters — the
relay's per-delivery work without the kernel. Bounded by --deliveries and --seconds; prints one
JSON line (cpu_us_per_delivery from the process CPU time of the timed loop).

Uses only what both layouts have (before and after issue 19): ``RoomRegistry(encode, ...)``,
``open(source)``, ``Room.subscribe``, ``Subscriber.attach/take/commit/wait``.
"""
import argparse
import json
import sys
import time
from pathlib import Path


def _imports(tree):
    sys.path.insert(0, str(tree))
    try:                                               # the package layout of issue 19
        from sphincter_lib.proto.frames import encode_message
        from sphincter_lib.rooms.interface import Source
        from sphincter_lib.rooms.registry import RoomRegistry
    except ImportError:                                # the flat layout before it
        from sphincter_lib.wsproto import encode_message
        from sphincter_lib.rooms import RoomRegistry, Source
    import sphincter_lib
    where = Path(sphincter_lib.__file__).resolve().parent.parent
    if where != Path(tree).resolve():
        raise SystemExit(f"roomloop: imported sphincter_lib from {where}, not {tree}")
    return encode_message, Source, RoomRegistry


def run(tree, subs, deliveries, seconds, burst, warmup=100_000):
    encode_message, Source, RoomRegistry = _imports(tree)
    import gevent

    registry = RoomRegistry(encode_message, max_subscribers_per_room=subs + 1,
                            buffer_bytes=16 << 20)
    room = registry.open(Source("bench"))
    got, done = [0], []

    def subscriber(i):
        sub = room.subscribe(f"127.0.0.1:{10000 + i}")
        take, commit = sub.take, sub.commit

        def direct():
            while True:
                data = take(65536)
                if data is None:
                    return True
                got[0] += len(data)
                commit()
        sub.attach(direct=direct)
        while not done:              # parked; direct() serves it, the writer never wakes
            sub.wait(1.0)
            direct()
    greenlets = [gevent.spawn(subscriber, i) for i in range(subs)]
    gevent.sleep(0)
    payload = b"m" * 98

    def publish(n):
        for _ in range(n // burst):
            for _ in range(burst):
                room.publish(payload, True)
            gevent.sleep(0)                          # the hub runs the room's _flush

    publish(max(burst, warmup // subs))              # warm-up deliveries, untimed
    messages = max(burst, deliveries // subs // burst * burst)
    frame = len(encode_message(payload, True))
    got[0] = 0
    w0, c0 = time.monotonic(), time.process_time()
    deadline, sent = w0 + seconds, 0
    while sent < messages and time.monotonic() < deadline:
        step = min(messages - sent, 50 * burst)
        publish(step)
        sent += step
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    delivered = got[0] // frame
    done.append(True)
    gevent.killall(greenlets, timeout=5)
    return {"subs": subs, "burst": burst, "sent": sent, "deliveries": delivered,
            "loss": sent * subs - delivered, "cpu_s": round(cpu, 4), "elapsed_s": round(wall, 4),
            "cpu_us_per_delivery": cpu * 1e6 / delivered if delivered else None,
            "deliveries_per_s": delivered / wall if wall else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent),
                    help="folder holding sphincter_lib/ (default: this checkout)")
    ap.add_argument("--subs", type=int, default=100)
    ap.add_argument("--deliveries", type=int, default=20_000_000,
                    help="most deliveries timed")
    ap.add_argument("--seconds", type=float, default=10.0, help="most seconds timed")
    ap.add_argument("--burst", type=int, default=16, help="messages published per hub turn")
    a = ap.parse_args(argv)
    print(json.dumps(run(a.tree, a.subs, a.deliveries, a.seconds, a.burst)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
