"""Soak run: steady load with churn against a real server process.

    python bench/soak.py --seconds 600          # on demand (make soak)
    python bench/soak.py --seconds 45 --json    # the CI version (tests/relay/test_soak.py)

Load: ``--rooms`` sources each send ``--rate`` numbered lines per second; each
room has ``--healthy`` subscribers that must receive every line from the one
they joined at, in order, nothing lost.  Churn: every ``--churn-interval`` s a
short-lived subscriber joins a random room and leaves after 0.2-2 s (one in
four by TCP RST, one in four without ever reading); every ``--source-churn`` s
one room's source quits (its subscribers must see every line, then 4410) and a
new room replaces it.

Checks at the end: no healthy subscriber lost or reordered a line; server RSS
growth from the end of warm-up to the end is under ``--max-rss-growth-kib``
(plus 10%); after every client has gone, the server's fd count is back to its
idle value.  Exit 0 when all hold; a JSON summary with ``--json``.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from hardening_util import ServerProcess, Source, fd_count, poll, rss_kib  # noqa: E402
from hostile_client import OP_CLOSE, ConnectionDropped, rst_close, ws_connect  # noqa: E402


class Stats:
    def __init__(self):
        self.sent = 0
        self.received = 0
        self.lost = 0
        self.reordered = 0
        self.healthy_done = 0
        self.healthy_bad_close = []
        self.churn_subs = 0
        self.sources_replaced = 0
        self.errors = []


def source_loop(src, rate, stats, stop, payload_len):
    """Send 'seq N <room> pad' lines at *rate*/s until *stop*; then close."""
    pad = "x" * payload_len
    n = 0
    t0 = time.monotonic()
    try:
        while not stop.is_set():
            n += 1
            src.send(("seq %d %s %s\n" % (n, src.room, pad)).encode())
            stats.sent += 1
            delay = t0 + n / rate - time.monotonic()
            if delay > 0:
                stop.wait(delay)
    except OSError as e:
        stats.errors.append("source %s: %r" % (src.room, e))
    src.last_seq = n
    src.close()


def healthy_subscriber(url, stats, ready):
    """Receive every line in order until the source closes (4410)."""
    try:
        ws = ws_connect(url)
    except Exception as e:
        stats.errors.append("healthy connect: %r" % e)
        ready.set()
        return
    ready.set()
    expect = None
    try:
        while True:
            op, data = ws.recv_message(timeout=30)
            if op == OP_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                if code != 4410:
                    stats.healthy_bad_close.append(code)
                break
            seq = int(data.split()[1])
            stats.received += 1
            if expect is not None and seq != expect:
                if seq > expect:
                    stats.lost += seq - expect
                else:
                    stats.reordered += 1
            expect = seq + 1
        stats.healthy_done += 1
    except (ConnectionDropped, OSError) as e:
        stats.errors.append("healthy: %r" % e)
    finally:
        ws.close()
    return None if expect is None else expect - 1


def churn_subscriber(url, stats, rnd):
    stats.churn_subs += 1
    try:
        ws = ws_connect(url)
    except Exception:
        return  # the room may just have closed
    try:
        mode = rnd.random()
        end = time.monotonic() + rnd.uniform(0.2, 2.0)
        if mode < 0.25:             # never reads: server must not block on it
            gevent.sleep(end - time.monotonic())
        else:
            while time.monotonic() < end:
                try:
                    op, _ = ws.recv_message(timeout=max(0.01, end - time.monotonic()))
                except Exception:
                    break
                if op == OP_CLOSE:
                    break
        if mode > 0.75:
            rst_close(ws.sock)
    finally:
        ws.close()


class Room:
    def __init__(self, server, args, stats):
        self.stats = stats
        self.src = Source(server.tcp_port)
        if not self.src.room:
            raise RuntimeError("no room banner: %r" % self.src.banner)
        self.url = server.ws_url("/ws?room=%s" % self.src.room)
        self.stop = gevent.event.Event()
        self.subs = []
        for _ in range(args.healthy):
            ready = gevent.event.Event()
            self.subs.append(gevent.spawn(healthy_subscriber, self.url, stats, ready))
            ready.wait(10)
        self.sender = gevent.spawn(source_loop, self.src, args.rate, stats, self.stop,
                                   args.payload)

    def finish(self, timeout=30):
        """Stop the source; every healthy subscriber must have had its last line."""
        self.stop.set()
        self.sender.join(timeout)
        gevent.joinall(self.subs, timeout=timeout)
        last = getattr(self.src, "last_seq", None)
        for g in self.subs:
            if last is not None and g.value is not None and g.value < last:
                self.stats.lost += last - g.value     # the tail went missing


def run(args):
    import gevent.event  # noqa: F401  (Room uses gevent.event)
    stats = Stats()
    rnd = random.Random(args.seed)
    server_args = list(args.server_arg)
    with ServerProcess(*server_args) as server:
        pid = server.pid
        idle_fds = poll(lambda: fd_count(pid), 5)
        rooms = [Room(server, args, stats) for _ in range(args.rooms)]
        t_start = time.monotonic()
        warmup_end = t_start + min(args.warmup, args.seconds / 3.0)
        samples = []  # (t, rss_kib, fds)
        churners = []
        next_churn = next_source = t_start
        while time.monotonic() - t_start < args.seconds:
            now = time.monotonic()
            if now >= next_churn:
                r = rnd.choice(rooms)
                churners.append(gevent.spawn(churn_subscriber, r.url, stats, rnd))
                churners = [g for g in churners if not g.dead]
                next_churn = now + args.churn_interval
            if args.source_churn and now >= next_source and now > t_start + 1:
                i = rnd.randrange(len(rooms))
                old = rooms[i]
                rooms[i] = Room(server, args, stats)
                gevent.spawn(old.finish)
                stats.sources_replaced += 1
                next_source = now + args.source_churn
            if not samples or now - samples[-1][0] >= 1.0:
                samples.append((now - t_start, rss_kib(pid), fd_count(pid)))
            gevent.sleep(min(args.churn_interval, 0.1))
        for r in rooms:
            r.finish()
        gevent.joinall(churners, timeout=10)
        gevent.sleep(0.2)
        fds_end = poll(lambda: fd_count(pid) <= idle_fds and fd_count(pid), 10) or fd_count(pid)
        rss_end = rss_kib(pid)
        server.stop()
    after = [s for s in samples if s[0] >= warmup_end - t_start] or samples
    k = max(1, len(after) // 5)
    rss_warm = statistics.median(s[1] for s in after[:k])
    rss_last = statistics.median(s[1] for s in after[-k:])
    growth = rss_last - rss_warm
    half = [s for s in after if s[0] >= (after[0][0] + after[-1][0]) / 2] or after
    step = max(1, len(samples) // 10)
    profile = [(round(t), r) for t, r, _ in samples[::step]]
    allowed = args.max_rss_growth_kib + rss_warm * 0.10
    result = {
        "seconds": args.seconds, "rooms": args.rooms, "healthy_per_room": args.healthy,
        "lines_sent": stats.sent, "lines_received_healthy": stats.received,
        "lost": stats.lost, "reordered": stats.reordered,
        "healthy_subscribers_done": stats.healthy_done,
        "healthy_bad_close_codes": stats.healthy_bad_close[:10],
        "churn_subscribers": stats.churn_subs, "sources_replaced": stats.sources_replaced,
        "rss_kib_warm": rss_warm, "rss_kib_last": rss_last, "rss_kib_end": rss_end,
        "rss_growth_kib": growth, "rss_growth_allowed_kib": round(allowed),
        "rss_growth_second_half_kib": statistics.median(x[1] for x in half[-k:])
        - statistics.median(x[1] for x in half[:k]),
        "rss_profile_s_kib": profile,
        "fds_idle": idle_fds, "fds_peak": max(s[2] for s in samples),
        "fds_end": fds_end, "errors": stats.errors[:10], "n_errors": len(stats.errors),
    }
    result["ok"] = (stats.lost == 0 and stats.reordered == 0 and not stats.errors
                    and not stats.healthy_bad_close and growth <= allowed
                    and fds_end <= idle_fds and stats.received > 0)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--rooms", type=int, default=4)
    p.add_argument("--healthy", type=int, default=3, help="healthy subscribers per room")
    p.add_argument("--rate", type=float, default=50, help="lines per second per source")
    p.add_argument("--payload", type=int, default=100, help="padding bytes per line")
    p.add_argument("--churn-interval", type=float, default=0.1)
    p.add_argument("--source-churn", type=float, default=10.0,
                   help="replace one room's source every N s (0: never)")
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument("--max-rss-growth-kib", type=int, default=8192)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for sphincter.py (repeatable)")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        for k in sorted(result):
            print("%-26s %s" % (k, result[k]))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
