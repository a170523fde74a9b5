#!/usr/bin/env python3
"""Sphincter benchmark runner: Sphincter vs an asyncio relay vs nginx+nchan (and, for the tunnel,
websockify and socat), all on loopback, driven by the compiled load generator bench/wsbench.c.

    python bench/run.py                 # full run (make bench), well under 15 minutes
    python bench/run.py --smoke --out-dir /tmp/x   # seconds; what tests/relay/test_bench_smoke.py runs

Scenarios (each bounded in count and time): fanout (N = 10/100/1000, closed loop), latency
(N = 100, 1000 msg/s paced), memory (1000 idle subscribers over 10 rooms), tunnel (1 -> 1, raw,
64 KiB writes), scale (10,000 subscribers receive probes), ceiling (wsbench vs a trivial C sink);
issue 9 (flow control): tunnel-open (the tunnel, open loop: the source writes as fast as it can;
MB/s and losslessness) and blast (a paced room's latency, alone and next to a room whose source
blasts 100-byte lines as fast as it can, from a second load generator process);
issue 21 (memory per viewer): mem-10k (10,000 idle subscribers in one room: RSS growth per
subscriber, in-process and Redis mode, nginx+nchan beside) and subs-15k (15,000 subscribers in
one room, all connected at once, a few messages fanned out to all: loss, p99 delivery, RSS);
their targets default to sphincter,sphincter-redis,nchan (--big-targets).
Run only some: --only tunnel-open,blast (make bench BENCH_ARGS="--only tunnel-open,blast"); a
partial run writes <out-dir>/<date>-<scenarios>.json and .md and leaves docs/ alone;
--from-json A.json B.json renders docs/BENCHMARKS.md from several runs.
Targets are interleaved inside every repetition (order rotated each time); the report gives
medians with min..max.  Writes <out-dir>/<date>.json, <docs> (markdown) and a PNG chart.
"""
import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import targets as T  # noqa: E402

BENCH = Path(__file__).resolve().parent
WSBENCH = BENCH / "build" / "wsbench"

PROFILES = {
    "full": dict(reps=3, fanout_ns=[10, 100, 1000], duration=3.0, count=10**8, window=128,
                 lat_n=100, lat_rate=1000, lat_count=3000,
                 mem_subs=1000, mem_rooms=10,
                 tunnel_bytes=16 << 30, tunnel_duration=3.0, tunnel_rounds=2,
                 scale_subs=10000, scale_probes=10,
                 ceiling_ns=[100, 1000], ceiling_total=10_000_000,
                 open_bytes=16 << 30, open_duration=3.0, open_rounds=1,
                 blast_subs=1, blast_rate=100, blast_count=300,
                 mem10k_subs=10000, subs15k=15000, subs15k_probes=5, timeout=120),
    "smoke": dict(reps=1, fanout_ns=[3, 10], duration=0, count=300, window=32,
                  lat_n=5, lat_rate=500, lat_count=200,
                  mem_subs=20, mem_rooms=2,
                  tunnel_bytes=4 << 20, tunnel_duration=0, tunnel_rounds=1,
                  scale_subs=50, scale_probes=3,
                  ceiling_ns=[10], ceiling_total=20_000,
                  open_bytes=8 << 20, open_duration=0, open_rounds=1,
                  blast_subs=1, blast_rate=100, blast_count=50,
                  mem10k_subs=30, subs15k=40, subs15k_probes=2, timeout=60),
}
SCENARIOS = ["ceiling", "fanout", "latency", "memory", "tunnel", "scale", "tunnel-open", "blast",
             "mem-10k", "subs-15k"]


#: Debian packages build_wsbench needs: a C compiler, libc's headers (scripts/apt-deps.d/bench.txt)
WSBENCH_PACKAGES = ("gcc", "libc6-dev")
#: each group of scenarios' targets when the command line names none (the full `make bench`)
DEFAULT_TARGETS = {"relay": "sphincter,asyncio,nchan",
                   "tunnel": "sphincter,asyncio,websockify,socat",
                   "blast": "sphincter,asyncio,nchan",
                   "big": "sphincter,sphincter-redis,nchan"}


def build_wsbench(force=False):
    src = BENCH / "wsbench.c"
    if not force and WSBENCH.exists() and WSBENCH.stat().st_mtime >= src.stat().st_mtime:
        return
    WSBENCH.parent.mkdir(exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(WSBENCH), str(src)], check=True)


def loadgen(args, on_phase=None, timeout=120):
    """Run wsbench client; on_phase(name) is called at each PHASE line; returns its JSON."""
    argv = [str(WSBENCH), "client", *map(str, args), "--pause", "--timeout", str(timeout)]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(timeout + 30, p.kill)
    killer.start()
    result = None
    try:
        for line in p.stdout:
            if line.startswith("PHASE "):
                if on_phase:
                    on_phase(line.split()[1])
                p.stdin.write("go\n")
                p.stdin.flush()
            elif line.startswith("{"):
                result = json.loads(line)
        p.wait()
    finally:
        killer.cancel()
    err = p.stderr.read().strip()
    if result is None:
        raise RuntimeError(f"wsbench rc={p.returncode}: {err[-500:]}")
    if err:
        result["stderr"] = err[-300:]
    return result


def with_server(target, fn, framing="lines"):
    wd = T.workdir()
    server, ws, src, rooms = target.start(wd, framing)
    try:
        return fn(server, ws, src, rooms)
    finally:
        server.stop()
        shutil.rmtree(wd, ignore_errors=True)


def _common(target, ws, src, rooms):
    args = ["--ws", ws, "--source", src, "--path-fmt", target.path_fmt, "--sub", target.sub]
    if rooms:
        args += ["--room-names", rooms]
    if getattr(target, "conc", None):        # handshakes in flight (Redis mode: fewer)
        args += ["--conc", target.conc]
    return args


def run_flow(target, P, subs, extra, scenario):
    """A message run (fanout/latency/scale): server CPU between PHASE subs and PHASE done."""
    def fn(server, ws, src, rooms):
        marks = {}

        def on_phase(name):
            marks[name] = (T.cpu_seconds(server.pid), T.rss_kb(server.pid))

        r = loadgen(_common(target, ws, src, rooms) + ["--subs", subs] + extra, on_phase,
                    P["timeout"])
        r["client_busy"] = r["client_cpu_s"] / r["elapsed_s"] if r["elapsed_s"] else None
        cpu = marks["done"][0] - marks["subs"][0]
        r["server_cpu_s"] = round(cpu, 3)
        r["cpu_us_per_delivery"] = cpu * 1e6 / r["deliveries"] if r["deliveries"] else None
        r["rss_kb_before"], r["rss_kb_after"] = marks["sources"][1], marks["subs"][1]
        if r["connected"]:
            r["kb_per_sub"] = (marks["subs"][1] - marks["sources"][1]) / r["connected"]
        return r
    return with_server(target, fn)


def run_fanout(target, P, n):
    return run_flow(target, P, n, ["--window", P["window"], "--count", P["count"],
                                   "--duration", P["duration"]], "fanout")


def run_latency(target, P):
    return run_flow(target, P, P["lat_n"], ["--window", P["window"], "--count", P["lat_count"],
                                            "--rate", P["lat_rate"]], "latency")


def run_scale(target, P):
    return run_flow(target, P, P["scale_subs"], ["--window", P["scale_probes"],
                                                 "--count", P["scale_probes"], "--conc", 256],
                    "scale")


def run_subs15k(target, P):
    """Issue 21: P["subs15k"] subscribers in one room, all connected at once, then
    P["subs15k_probes"] messages, each fanned out to all before the next (window 1)."""
    r = run_flow(target, P, P["subs15k"], ["--window", 1, "--count", P["subs15k_probes"],
                                           "--conc", getattr(target, "conc", None) or 256],
                 "subs-15k")
    if r.get("rss_kb_after"):
        r["rss_mb"] = r["rss_kb_after"] / 1024
    return r


def run_memory(target, P, subs=None, rooms=None):
    subs, rooms = subs or P["mem_subs"], rooms or P["mem_rooms"]

    def fn(server, ws, src, rooms_):
        marks = {}

        def on_phase(name):
            time.sleep(0.5 if name == "sources" else 1.0)  # let the server settle
            marks[name] = T.rss_kb(server.pid)

        r = loadgen(_common(target, ws, src, rooms_) +
                    ["--subs", subs, "--rooms", rooms, "--count", 0],
                    on_phase, P["timeout"])
        r["rss_kb_before"], r["rss_kb_after"] = marks["sources"], marks["subs"]
        r["kb_per_sub"] = (marks["subs"] - marks["sources"]) / max(r["connected"], 1)
        return r
    return with_server(target, fn)


def _tunnel(target, P, window, total, duration):
    """One source, one subscriber, raw framing, 64 KiB chunks; server CPU per MB relayed."""
    def fn(server, ws, src, rooms):
        marks = {}

        def on_phase(name):
            marks[name] = T.cpu_seconds(server.pid)

        r = loadgen(_common(target, ws, src, rooms) +
                    ["--subs", 1, "--chunk", 65536, "--window", window,
                     "--total-bytes", total, "--duration", duration],
                    on_phase, P["timeout"])
        r["server_cpu_s"] = round(marks["done"] - marks["subs"], 3)
        if r["bytes"]:
            r["cpu_us_per_mb"] = r["server_cpu_s"] * 1e6 / (r["bytes"] / 1e6)
        return r
    return with_server(target, fn, "raw")


def run_tunnel(target, P):
    return _tunnel(target, P, 64, P["tunnel_bytes"], P["tunnel_duration"])


def run_tunnel_open(target, P):
    """The tunnel, open loop (issue 9): the source writes 64 KiB chunks as fast as the relay takes
    them, no window; the relay's flow control alone keeps it lossless (or not: loss, close codes)."""
    return _tunnel(target, P, 0, P["open_bytes"], P["open_duration"])


class Blaster:
    """A second wsbench process with no subscribers: its source writes 100-byte lines into a room
    of its own as fast as the relay reads them (open loop), for ``seconds``."""

    def __init__(self, target, ws, src, rooms, seconds, timeout):
        args = ["--ws", ws, "--source", src, "--path-fmt", target.path_fmt, "--sub", target.sub,
                "--subs", 0, "--window", 0, "--count", 10**12, "--duration", seconds]
        if rooms:                     # nchan: a channel of its own
            args += ["--room-names", "blast%dx%d" % (os.getpid(), time.monotonic_ns() % 10**9)]
        self.proc = subprocess.Popen([str(WSBENCH), "client", *map(str, args), "--pause",
                                      "--timeout", str(timeout)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started, self.result, self.wait_s = threading.Event(), None, seconds + 30
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.started.wait(20):
            self.finish()
            raise RuntimeError("blaster did not start")

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("PHASE "):
                self.proc.stdin.write("go\n")
                self.proc.stdin.flush()
                if line.split()[1] == "subs":          # its source is open: blasting now
                    self.started.set()
            elif line.startswith("{"):
                self.result = json.loads(line)

    def finish(self):
        self.reader.join(self.wait_s)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.result is None:
            raise RuntimeError("blaster rc=%s: %s" % (self.proc.returncode,
                                                      self.proc.stderr.read()[-300:]))
        return self.result


def run_blast(target, P, blasting):
    """A paced room (blast_rate msg/s, blast_subs subscribers): its latency alone (blasting=0) or
    while another room's source blasts as fast as it can (blasting=1; issue 9 case 1)."""
    def fn(server, ws, src, rooms):
        marks, blaster = {}, []

        def on_phase(name):
            if name == "subs" and blasting:
                blaster.append(Blaster(target, ws, src, rooms,
                                       P["blast_count"] / P["blast_rate"] + 0.5, P["timeout"]))
            marks[name] = T.cpu_seconds(server.pid)

        try:
            r = loadgen(_common(target, ws, src, rooms) +
                        ["--subs", P["blast_subs"], "--count", P["blast_count"],
                         # window = every message: a stalled relay must not stop the paced source
                         # (messages held back by a window would be stamped late: coordinated
                         # omission); the pacing alone sets the rate
                         "--rate", P["blast_rate"], "--window", P["blast_count"]],
                        on_phase, P["timeout"])
        finally:
            b = blaster[0].finish() if blaster else None
        r["server_cpu_s"] = round(marks["done"] - marks["subs"], 3)
        if b:
            r["blast_mb_per_s"] = b["source_mb_per_s"]
            r["blast_bytes"] = b["source_bytes"]
            r["blast_s"] = b["elapsed_s"]
        return r
    return with_server(target, fn)


def run_ceiling(P, n):
    count = max(P["ceiling_total"] // n, 1)
    sink = subprocess.Popen([str(WSBENCH), "sink", "--port", "0", "--count", str(count),
                             "--conns", str(n)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(sink.stdout.readline().split()[1])
        r = loadgen(["--ws", f"127.0.0.1:{port}", "--source", "none", "--subs", n,
                     "--count", count], None, P["timeout"])
        if r["deliveries"] and r["client_cpu_s"] > 0:
            r["client_ns_per_delivery"] = r["client_cpu_s"] * 1e9 / r["deliveries"]
            r["deliveries_per_client_cpu_s"] = r["deliveries"] / r["client_cpu_s"]
        return r
    finally:
        sink.kill()
        sink.wait()


def rotate(items, k):
    k %= max(len(items), 1)
    return items[k:] + items[:k]


def parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny, seconds-long run (the test)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; smoke 1)")
    ap.add_argument("--targets",  # also: sphincter-flow-off
                    help="relay targets (default %s); when given, also every other scenario's "
                         "unless its own option says otherwise" % DEFAULT_TARGETS["relay"])
    ap.add_argument("--tunnel-targets",
                    help="tunnel targets (default: those of --targets that have a tunnel form; "
                         "without --targets, %s)" % DEFAULT_TARGETS["tunnel"])
    ap.add_argument("--blast-targets",
                    help="relay targets of the blast scenario, nchan's blaster publishes by POST "
                         "(default: --targets; without it, %s)" % DEFAULT_TARGETS["blast"])
    ap.add_argument("--big-targets",
                    help="targets of mem-10k and subs-15k (default: --targets; without it, %s)"
                         % DEFAULT_TARGETS["big"])
    ap.add_argument("--scenarios", "--only", default=",".join(SCENARIOS),
                    help="comma-separated subset of: " + ",".join(SCENARIOS))
    ap.add_argument("--set", action="append", default=[], metavar="PARAM=INT",
                    help="override a profile parameter, e.g. --set lat_n=1000 (latency at N=1000)")
    ap.add_argument("--out-dir", default=str(BENCH / "results"))
    ap.add_argument("--docs", help="markdown report path (default docs/BENCHMARKS.md; "
                                   "smoke: <out-dir>/BENCHMARKS.md)")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--note", action="append", default=[],
                    help="a sentence for the report (what a sphincter@... target is, say)")
    ap.add_argument("--require", action="store_true",
                    help="fail if a requested target is unavailable (CI)")
    ap.add_argument("--from-json", metavar="FILE", nargs="+",
                    help="only re-render the report (markdown, chart) from results JSON files "
                         "(several: a full run, then partial runs of other scenarios)")
    return ap


def scenario_targets(a):
    """{"relay", "tunnel", "blast"} -> comma-separated target names. A group's own option wins;
    without it the group follows --targets when that was given, so a run that names its targets
    never meets one it did not name; with neither, the full bench's sets."""
    if a.targets is None:
        given = dict(DEFAULT_TARGETS)
    else:
        names = [n for n in a.targets.split(",") if n]
        given = {"relay": a.targets, "blast": a.targets, "big": a.targets,
                 "tunnel": ",".join(n for n in names if T.has_tunnel(n))}
    for group, option in (("tunnel", a.tunnel_targets), ("blast", a.blast_targets),
                          ("big", getattr(a, "big_targets", None))):
        if option is not None:
            given[group] = option
    return given


def main(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    if a.from_json:
        meta, runs = report.merge([json.loads(Path(f).read_text()) for f in a.from_json])
        docs = Path(a.docs) if a.docs else T.ROOT / "docs" / "BENCHMARKS.md"
        one = len(a.from_json) == 1             # re-rendered in place: <date><tag>.json
        for p in report.write_all(meta, runs, Path(a.from_json[0]).parent, docs,
                                  with_chart=not a.no_chart, write_json=one,
                                  tag=Path(a.from_json[0]).stem[10:] if one else ""):
            print(f"bench: wrote {p}", file=sys.stderr)
        return 0
    P = dict(PROFILES["smoke" if a.smoke else "full"])
    if a.reps:
        P["reps"] = a.reps
    for item in a.set:
        key, _, value = item.partition("=")
        if key not in P or not value.lstrip("-").isdigit():
            ap.error("--set %s: PARAM=INT with PARAM one of %s" % (item, ", ".join(sorted(P))))
        P[key] = int(value)
    scenarios = [s for s in a.scenarios.split(",") if s]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        ap.error("unknown scenario(s) %s (choose from %s)" % (",".join(unknown), ",".join(SCENARIOS)))
    partial = set(scenarios) != set(SCENARIOS)
    build_wsbench()

    relays, tunnels, blasts, bigs, skipped = [], [], [], [], {}
    wanted = lambda *names: any(s in scenarios for s in names)  # noqa: E731
    given = scenario_targets(a)
    print("bench: targets: %s" % given, file=sys.stderr)
    for names, get, out in ((given["relay"] if wanted("fanout", "latency", "memory", "scale")
                             else "", T.relay, relays),
                            (given["tunnel"] if wanted("tunnel", "tunnel-open") else "",
                             T.tunnel, tunnels),
                            (given["blast"] if wanted("blast") else "", T.relay, blasts),
                            (given["big"] if wanted("mem-10k", "subs-15k") else "", T.relay, bigs)):
        for name in [n for n in names.split(",") if n]:
            target = get(name)
            why = target.available()
            if why:
                skipped[name] = why
                print(f"bench: skipping {name}: {why}", file=sys.stderr)
            else:
                out.append(target)
    if a.require and skipped:
        print(f"bench: required targets unavailable: {skipped}", file=sys.stderr)
        return 2

    runs, t_start = [], time.monotonic()

    def record(scenario, target, n, rep, fn):
        t0 = time.monotonic()
        try:
            r = fn()
        except Exception as e:  # one failed run must not lose the others
            r = {"error": f"{type(e).__name__}: {e}"}
        r["stalled"] = "stalled" in r.get("stderr", "")
        r.update(scenario=scenario, target=target, n=n, rep=rep,
                 wall_s=round(time.monotonic() - t0, 2))
        runs.append(r)
        brief = {k: r.get(k) for k in ("deliveries_per_s", "cpu_us_per_delivery", "loss",
                                       "lat_p99_us", "lat_max_us", "kb_per_sub", "mb_per_s",
                                       "blast_mb_per_s", "close_codes", "connected", "rss_mb",
                                       "error") if r.get(k) is not None}
        print(f"bench: {scenario:11} {target:10} n={n:<6} rep={rep} {brief}", file=sys.stderr,
              flush=True)

    for rep in range(P["reps"]):
        if "ceiling" in scenarios:
            for n in P["ceiling_ns"]:
                record("ceiling", "wsbench", n, rep, lambda n=n: run_ceiling(P, n))
        if "fanout" in scenarios:
            for n in P["fanout_ns"]:
                for t in rotate(relays, rep + n):
                    record("fanout", t.name, n, rep, lambda t=t, n=n: run_fanout(t, P, n))
        if "latency" in scenarios:
            for t in rotate(relays, rep):
                record("latency", t.name, P["lat_n"], rep, lambda t=t: run_latency(t, P))
        if "memory" in scenarios:
            for t in rotate(relays, rep):
                record("memory", t.name, P["mem_subs"], rep, lambda t=t: run_memory(t, P))
        if "tunnel" in scenarios:
            for k in range(P.get("tunnel_rounds", 1)):  # short runs, noisy: more samples
                for t in rotate(tunnels, rep + k):
                    record("tunnel", t.name, 1, rep, lambda t=t: run_tunnel(t, P))
        if "scale" in scenarios and rep == 0:
            for t in relays:
                record("scale", t.name, P["scale_subs"], rep, lambda t=t: run_scale(t, P))
        if "tunnel-open" in scenarios:
            for k in range(P.get("open_rounds", 1)):
                for t in rotate(tunnels, rep + k):
                    record("tunnel-open", t.name, 1, rep, lambda t=t: run_tunnel_open(t, P))
        if "mem-10k" in scenarios:
            for t in rotate(bigs, rep):
                record("mem-10k", t.name, P["mem10k_subs"], rep,
                       lambda t=t: run_memory(t, P, P["mem10k_subs"], 1))
        if "subs-15k" in scenarios:
            for t in rotate(bigs, rep):
                record("subs-15k", t.name, P["subs15k"], rep, lambda t=t: run_subs15k(t, P))
        if "blast" in scenarios:       # n: rooms blasting next door (0: the quiet baseline)
            for t in rotate(blasts, rep):
                for b in rotate([0, 1], rep):
                    record("blast", t.name, b, rep, lambda t=t, b=b: run_blast(t, P, b))

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "profile": "smoke" if a.smoke else "full",
        "params": P,
        "host": {"nproc": os.cpu_count(), "kernel": platform.release(),
                 "python": platform.python_version(),
                 "loadavg_end": os.getloadavg()},
        "skipped": skipped,
        "versions": report.versions(),
        "total_wall_s": round(time.monotonic() - t_start, 1),
        "scenarios": scenarios,
        "notes": a.note,
    }
    meta["scenario_dates"] = {s: meta["date"] for s in scenarios}
    out_dir = Path(a.out_dir)
    tag = "-" + "+".join(scenarios) if partial else ""
    docs = Path(a.docs) if a.docs else (out_dir / "BENCHMARKS.md" if a.smoke
                                        else out_dir / f"{meta['date'][:10]}{tag}.md" if partial
                                        else T.ROOT / "docs" / "BENCHMARKS.md")
    paths = report.write_all(meta, runs, out_dir, docs, with_chart=not a.no_chart, tag=tag)
    for p in paths:
        print(f"bench: wrote {p}", file=sys.stderr)
    errors = [r for r in runs if r.get("error")]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
