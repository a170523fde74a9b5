#!/usr/bin/env python3
"""Cluster bench (issue 13): fan-out at N = 1000 on one Sphincter process vs the same subscribers
spread over two nodes sharing a real redis-server, side by side in one run.

    python bench/cluster.py                     # make bench-cluster: 3 rounds, about 4 minutes
    python bench/cluster.py --rounds 1 --only fanout --configs single,two-nodes   # quick look
    python bench/cluster.py --dry-run           # no Redis mode yet: start everything, run 'single'

Configurations (one fresh set of processes per run, loopback only):
  single      one process, no Redis (today's relay)
  one-node    one process in Redis mode, every subscriber on it: the cost of Redis mode alone
  two-nodes   nodes n1 and n2 sharing one redis-server; the source on n1, each room's subscribers
              split evenly (wsbench --ws n1,n2): half of them get every message through Redis
  CONFIG@SCRIPT  the same with the nodes run by SCRIPT (same command line as sphincter.py), a
              launcher that applies a candidate change (bench/candidates/), measured side by side
Workloads (wsbench closed loop unless paced; every run bounded by count, duration and timeout):
  fanout      the standard closed loop (window 128, 100-byte lines): the relay batches up to 128
              messages per send, wsbench (one core at most) is the limit
  cpu         closed loop, window 16, 8000-byte lines: at most 16 messages per send, and each
              delivery costs the relay (a send() in Python; on loopback the sender also runs the
              receiving TCP stack) ~1.6x what it costs wsbench (a read() in C): the relay, not the
              generator, is CPU-bound, so a second node has CPU to gain (probed: windows 1..32,
              100..32000 bytes; with 100-byte lines the ratio is ~1.3x, with 8000 ~1.6-1.8x)
  paced       a fixed rate below saturation, window = every message (no coordinated
              omission): latency p50/p99, per node (n2's p50 - n1's p50 = what the Redis path adds)
  hop         the same with 10 subscribers (5 per node): the hop itself, without 500 local
              sends on n1 ahead of it
Server CPU = utime+stime from /proc/<pid>/stat of every node AND redis-server between wsbench's
PHASE subs and PHASE done, divided by deliveries. Rounds alternate the configurations (order
rotated each round); the report gives medians with min-max.
Writes <out-dir>/<date>-cluster.json and <date>-cluster.md.
"""
import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import report  # noqa: E402
import run as R  # noqa: E402
import targets as T  # noqa: E402

N = 1000
WORKLOADS = {
    "fanout": dict(window=128, msg_bytes=100, count=10**8, duration=3.0),
    "cpu": dict(window=16, msg_bytes=8000, count=10**8, duration=3.0),
    "paced": dict(rate=50, msg_bytes=100, count=250),    # 5 s, 50,000 deliveries/s offered
    "hop": dict(rate=50, msg_bytes=100, count=250, subs=10),
}
CONFIGS = ["single", "one-node", "two-nodes"]
#: subscriber handshakes in flight (wsbench --conc; its default is 128). Below 100: redis-py 8's
#: default connection pool holds 100 connections, and a node whose admissions find it exhausted
#: takes "Too many connections" for "Redis unreachable" and closes new subscribers with 1013
#: (seen with 128; reported). The same for every configuration.
CONC = 64
LISTENING = re.compile(r"listening tcp=(\S+):(\d+) ws=(\S+):(\d+)")
#: --pin layouts: process role -> CPU list for taskset (roles: n1, n2, wsbench, redis)
PIN = {
    "none": {},
    # each node alone on a core; the load generator and redis-server float
    "nodes": {"n1": "0", "n2": "1"},
}


class Proc:
    """A child process with its output in a log file; ``stop()`` always ends it."""

    def __init__(self, name, argv, workdir, pin=None):
        self.name, self.workdir = name, Path(workdir)
        self.log_path = self.workdir / (name + ".log")
        self.log = open(self.log_path, "wb")
        if pin is not None:
            argv = ["taskset", "-c", pin] + argv
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(T.ROOT),
                                     preexec_fn=T._raise_nofile)

    @property
    def pid(self):
        return self.proc.pid

    def tail(self, n=600):
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_for(self, check, what, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("%s: no %s (rc=%s): %s" % (self.name, what, self.proc.poll(),
                                                               self.tail()))
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def start_redis(wd, pin=None):
    port = T.free_port()
    p = Proc("redis", [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no", "--daemonize", "no"], wd, pin)
    p.wait_for(lambda: T.listening(port), "listening port")
    p.url = "redis://127.0.0.1:%d/0" % port
    return p


def start_node(wd, name, python, redis_url=None, pin=None, script="sphincter.py"):
    """A Sphincter process on ports 0; its addresses come from its 'listening' log line."""
    argv = [python, str(T.ROOT / script), "--tcp-host", "127.0.0.1", "--tcp-port", "0",
            "--ws-host", "127.0.0.1", "--ws-port", "0", "--log-level", "info",
            "--max-subscribers-per-room", "20000",
            "--subscriber-buffer-bytes", str(T.SUBSCRIBER_BUFFER), "--framing", "lines"]
    if redis_url:
        argv += ["--redis-url", redis_url, "--node-name", name]
    p = Proc(name, argv, wd, pin)
    m = p.wait_for(lambda: LISTENING.search(p.tail(100000)), "'listening tcp=... ws=...' line")
    p.tcp = "%s:%s" % (m.group(1), m.group(2))
    p.ws = "%s:%s" % (m.group(3), m.group(4))
    return p


#: /metrics counters kept per node (after the run): where a two-node run waited
METRICS_KEPT = ("source_pauses_total", "source_paused_seconds_total",
                "redis_batches_published_total", "redis_batches_received_total")


def node_metrics(ws):
    try:
        with urllib.request.urlopen("http://%s/metrics" % ws, timeout=3) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("sphincter_") and name[10:] in METRICS_KEPT:
            try:
                out[name[10:]] = float(value)
            except ValueError:
                pass
    return out


def cpu_of(procs):
    return {p.name: T.cpu_seconds(p.pid) for p in procs}


def run_one(config, workload, a):
    """One measurement: fresh processes, one wsbench client run, CPU of every server process."""
    wd = T.workdir()
    pin = PIN[a.pin]
    config, _, script = config.partition("@")
    script = script or "sphincter.py"
    procs = []
    try:
        redis = None
        if config != "single":
            redis = start_redis(wd, pin.get("redis"))
            procs.append(redis)
        url = redis.url if redis else None
        n1 = start_node(wd, "n1", a.python, url, pin.get("n1"), script)
        procs.append(n1)
        ws = [n1.ws]
        if config == "two-nodes":
            n2 = start_node(wd, "n2", a.python, url, pin.get("n2"), script)
            procs.append(n2)
            ws.append(n2.ws)
        W = WORKLOADS[workload]
        subs = W.get("subs", a.subs)
        args = ["--ws", ",".join(ws), "--source", "lines:" + n1.tcp, "--subs", subs,
                "--count", W["count"], "--msg-bytes", W["msg_bytes"], "--conc", CONC]
        if "rate" in W:
            args += ["--rate", W["rate"], "--window", W["count"]]
        else:
            args += ["--window", W["window"], "--duration", W["duration"]]
        marks = {}

        def on_phase(name):
            marks[name] = (time.monotonic(), cpu_of(procs))

        r = loadgen(args, on_phase, a.timeout, pin.get("wsbench"))
        (t0, c0), (t1, c1) = marks["subs"], marks["done"]
        cpu = {k: c1[k] - c0[k] for k in c0}
        wall = t1 - t0
        r["cpu_s"] = {k: round(v, 3) for k, v in cpu.items()}
        r["busy"] = {k: round(v / wall, 3) for k, v in cpu.items()} if wall > 0 else {}
        r["busy"]["wsbench"] = round(r["client_cpu_s"] / wall, 3) if wall > 0 else None
        r["wsbench_us_per_delivery"] = (r["client_cpu_s"] * 1e6 / r["deliveries"]
                                        if r["deliveries"] else None)
        total = sum(cpu.values())
        r["server_cpu_s"] = round(total, 3)
        r["cpu_us_per_delivery"] = total * 1e6 / r["deliveries"] if r["deliveries"] else None
        nodes_cpu = sum(v for k, v in cpu.items() if k != "redis")
        r["nodes_cpu_us_per_delivery"] = (nodes_cpu * 1e6 / r["deliveries"]
                                          if r["deliveries"] else None)
        for name, grp in zip(("n1", "n2"), r.get("groups") or []):
            for k in ("lat_p50_us", "lat_p99_us"):        # -1: no sample from that node
                r[k + "_" + name] = grp[k] if grp[k] >= 0 else None
            r["deliveries_" + name] = grp["deliveries"]
        for q in ("p50", "p99"):
            x, y = r.get("lat_%s_us_n1" % q), r.get("lat_%s_us_n2" % q)
            if x is not None and y is not None:
                r["hop_%s_us" % q] = y - x
        # valid = every subscriber got every message, in order, once, and none was closed
        r["valid"] = (r["connected"] == subs and r["loss"] == 0 and r["gaps"] == 0
                      and r["reorder"] == 0 and r["closed"] == 0
                      and "stalled" not in r.get("stderr", ""))
        r["ws"] = ws
        r["metrics"] = {p.name: node_metrics(p.ws) for p in procs if p.name != "redis"}
        if not r["valid"]:          # what the nodes said about it (warnings and errors)
            r["logs"] = {p.name: [ln for ln in p.tail(200000).splitlines()
                                  if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln][-8:]
                         for p in procs if p.name != "redis"}
        return r
    except Exception:
        for p in procs:
            print("bench: %s log tail: %s" % (p.name, p.tail(400)), file=sys.stderr)
        raise
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(wd, ignore_errors=True)


def loadgen(args, on_phase, timeout, pin=None):
    """bench/run.py's loadgen, under taskset when the layout pins the load generator."""
    if not pin:
        return R.loadgen(args, on_phase, timeout)
    real = R.WSBENCH
    wrapper = Path(T.workdir()) / "wsbench"
    wrapper.write_text('#!/bin/sh\nexec taskset -c %s %s "$@"\n' % (pin, real))
    wrapper.chmod(0o755)
    R.WSBENCH = wrapper
    try:
        return R.loadgen(args, on_phase, timeout)
    finally:
        R.WSBENCH = real
        shutil.rmtree(wrapper.parent, ignore_errors=True)


# ---- report -------------------------------------------------------------------------------------

METRICS = ["deliveries_per_s", "cpu_us_per_delivery", "nodes_cpu_us_per_delivery",
           "wsbench_us_per_delivery", "lat_p50_us",
           "lat_p99_us", "lat_p50_us_n1", "lat_p50_us_n2", "lat_p99_us_n1", "lat_p99_us_n2",
           "hop_p50_us", "hop_p99_us", "loss", "gaps", "closed"]
BUSY = ["n1", "n2", "redis", "wsbench"]


def summarize(runs):
    out = {}
    for r in runs:
        out.setdefault(r["workload"], {}).setdefault(r["config"], []).append(r)
    summary = {}
    for w, by in out.items():
        for c, rs in by.items():
            ok = [r for r in rs if not r.get("error")]
            bad = [r for r in ok if not r.get("valid")]
            e = {m: report._stats([r.get(m) for r in ok]) for m in METRICS}
            for b in BUSY:
                e["busy_" + b] = report._stats([r.get("busy", {}).get(b) for r in ok])
            e["runs"], e["errors"] = len(rs), [r["error"] for r in rs if r.get("error")]
            e["invalid"] = len(bad)
            e["close_codes"] = sorted({c for r in ok for c in r.get("close_codes") or []})
            summary.setdefault(w, {})[c] = e
    return summary


def cell(e, m, digits=0, scale=1.0):
    s = (e or {}).get(m)
    if not s:
        return "–"
    f = lambda v: report._fmt(v, digits, scale)  # noqa: E731
    return f(s["median"]) if s["min"] == s["max"] else "%s (%s–%s)" % (
        f(s["median"]), f(s["min"]), f(s["max"]))


def med(summary, w, c, m):
    try:
        return summary[w][c][m]["median"]
    except (KeyError, TypeError):
        return None


def ratio(a, b):
    return "–" if a is None or not b else "%.2f×" % (a / b)


def markdown(meta, summary):
    L = ["# Cluster bench: one process vs two nodes on Redis (issue 13)", "",
         "Generated by `make bench-cluster` (`bench/cluster.py`) on %s; %s CPUs, Linux %s, "
         "Python %s (nodes: %s), %s; N = %d subscribers (hop: 10), one room, source on n1; "
         "%d round(s), "
         "configurations alternating (order rotated each round); total %.0f s." % (
             meta["date"], meta["host"]["nproc"], meta["host"]["kernel"],
             meta["host"]["python"], meta["node_python"], meta["redis_version"], meta["subs"],
             meta["rounds"], meta["total_wall_s"]), "",
         "Machine load before the run: `%s`; load average at the end: %s. "
         "**Read ratios, not absolute values**: 2 shared cores; the nodes, redis-server and the "
         "load generator all run on them." % (
             meta["uptime_before"], ", ".join("%.2f" % x for x in meta["host"]["loadavg_end"])),
         "",
         "Pinning: %s." % meta["pin_text"], "",
         "Server CPU = utime+stime of every node and of redis-server (from `/proc/<pid>/stat`) "
         "between wsbench's `PHASE subs` and `PHASE done`, over deliveries; busy = CPU s / wall s "
         "of that window. Cells: median (min–max).", ""]
    for w in [w for w in WORKLOADS if w in summary]:
        W = WORKLOADS[w]
        desc = ("closed loop, window %d, %d-byte lines, %.0f s" % (
            W["window"], W["msg_bytes"], W["duration"]) if "window" in W
            else "paced %d msg/s, %d messages of %d bytes, N = %d" % (
                W["rate"], W["count"], W["msg_bytes"], W.get("subs", meta["subs"])))
        L += ["## %s (%s)" % (w, desc), "",
              "| config | deliveries/s | vs single | server CPU µs/delivery (nodes+redis) | vs "
              "single | nodes only | wsbench µs/delivery | p50 ms | p99 ms | p50 ms n1 / n2 | "
              "p99 ms n1 / n2 | busy n1 | busy n2 | busy redis | busy wsbench | loss | closed |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in sorted(summary[w], key=lambda c: (CONFIGS.index(c.split("@")[0]), c)):
            e = summary[w][c]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s | %s "
                     "| %s | %s | %s | %s |" % (
                         c, cell(e, "deliveries_per_s"),
                         ratio(med(summary, w, c, "deliveries_per_s"),
                               med(summary, w, "single", "deliveries_per_s")),
                         cell(e, "cpu_us_per_delivery", 2),
                         ratio(med(summary, w, c, "cpu_us_per_delivery"),
                               med(summary, w, "single", "cpu_us_per_delivery")),
                         cell(e, "nodes_cpu_us_per_delivery", 2),
                         cell(e, "wsbench_us_per_delivery", 2),
                         cell(e, "lat_p50_us", 2, 1000), cell(e, "lat_p99_us", 2, 1000),
                         cell(e, "lat_p50_us_n1", 2, 1000), cell(e, "lat_p50_us_n2", 2, 1000),
                         cell(e, "lat_p99_us_n1", 2, 1000), cell(e, "lat_p99_us_n2", 2, 1000),
                         cell(e, "busy_n1", 2), cell(e, "busy_n2", 2), cell(e, "busy_redis", 2),
                         cell(e, "busy_wsbench", 2), cell(e, "loss"), cell(e, "closed")))
            if e["invalid"]:
                L.append("| %s: %d run(s) with loss, gaps, closes or a stall (close codes %s): "
                         "not comparable | | | | | | | | | | | | | | | |" % (
                             c, e["invalid"], ",".join(map(str, e["close_codes"])) or "none"))
            if e["errors"]:
                L.append("| %s: %d failed run(s): %s | | | | | | | | | | | | | | | |" % (
                    c, len(e["errors"]), "; ".join(sorted(set(x[:160] for x in e["errors"])))))
        L.append("")
    L += goals(summary)
    return "\n".join(L) + "\n"


#: the single process counts as CPU-bound when its busy median reaches this
BOUND = 0.9


def goals(summary):
    def clean(w, *configs):
        return all(summary.get(w, {}).get(c) and not summary[w][c]["invalid"]
                   and not summary[w][c]["errors"] for c in configs)

    def verdict(ok, w, *configs):
        if not clean(w, *configs):
            return "not measured, or runs with loss, closes or errors"
        return "–" if ok is None else ("met" if ok else "**not met**")

    def ms(v):
        return "%.2f ms" % (v / 1000)

    rows = []
    twos = sorted({c for by in summary.values() for c in by if c.startswith("two-nodes")})
    cr = med(summary, "cpu", "single", "cpu_us_per_delivery")
    cg = med(summary, "cpu", "single", "wsbench_us_per_delivery")
    if cr and cg:
        rows.append(("cpu case: best possible gain on 2 cores if two nodes cost what one does "
                     "(2·relay / (relay + wsbench) per delivery, single's medians)",
                     "%.2f×" % (2 * cr / (cr + cg)), "(reference)"))
    for two in twos:
        tag = "" if two == "two-nodes" else " — " + two
        for w in [w for w in ("fanout", "cpu", "paced") if w in summary]:   # N = 1000 only
            a = med(summary, w, two, "cpu_us_per_delivery")
            b = med(summary, w, "single", "cpu_us_per_delivery")
            rows.append(("Redis path ≤ 1.3× single-process CPU per delivery (%s)%s" % (w, tag),
                         ratio(a, b), verdict(a / b <= 1.3 if a and b else None, w, "single", two)))
        for w in [w for w in ("paced", "hop") if w in summary]:
            hop = med(summary, w, two, "hop_p50_us")
            if hop is not None:
                rows.append(("Redis path adds < 1 ms at p50 (%s; n2's p50 − n1's p50, same run)%s"
                             % (w, tag), ms(hop), verdict(hop < 1000, w, two)))
        p2 = med(summary, "paced", two, "lat_p50_us_n2")
        p1 = med(summary, "paced", "single", "lat_p50_us")
        if p2 is not None and p1 is not None:
            rows.append(("paced: n2's p50 − the single process's p50%s" % tag, ms(p2 - p1),
                         verdict(p2 - p1 < 1000, "paced", "single", two)))
        a = med(summary, "cpu", two, "deliveries_per_s")
        b = med(summary, "cpu", "single", "deliveries_per_s")
        busy = med(summary, "cpu", "single", "busy_n1")
        if a and b:
            v = verdict(a > b, "cpu", "single", two)
            if busy is not None and busy < BOUND and v in ("met", "**not met**"):
                v = ("inconclusive: the single process was not CPU-bound (busy < %.0f %%: the "
                     "shared machine's other work took the rest)" % (100 * BOUND))
            rows.append(("two nodes deliver more than one where one process is CPU-bound (cpu; "
                         "single's busy %.0f %%)%s" % (100 * (busy or 0), tag), ratio(a, b), v))
    L = ["## Against the goals (medians)", "", "| goal | measured | verdict |", "|---|---|---|"]
    L += ["| %s | %s | %s |" % r for r in rows]
    return L + [""]


def redis_version():
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        return out.split()[2] if out else "redis-server ?"
    except OSError:
        return "redis-server missing"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: 6 subscribers, a few hundred messages (tests/relay/test_bench_cluster.py)")
    ap.add_argument("--subs", type=int, default=N)
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help="workloads, comma-separated: " + ",".join(WORKLOADS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--pin", choices=sorted(PIN), default="none",
                    help="taskset layout (nodes: n1 on CPU 0, n2 on CPU 1, the rest floats)")
    ap.add_argument("--python", default=sys.executable, help="the nodes' Python")
    ap.add_argument("--dry-run", action="store_true",
                    help="Redis mode not there yet: run 'single' and check that redis-server "
                         "and nodes with --redis-url start")
    ap.add_argument("--window", type=int, help="the cpu workload's window (default 16)")
    ap.add_argument("--msg-bytes", type=int, help="the cpu workload's line size (default 8000)")
    ap.add_argument("--rate", type=int, help="the paced workload's rate (default 50)")
    ap.add_argument("--timeout", type=int, default=60)
    ap.add_argument("--out-dir", default=str(BENCH / "results"))
    ap.add_argument("--tag", default="cluster", help="results file name: <date>-<tag>.json/.md")
    ap.add_argument("--render", metavar="JSON", help="only re-render JSON's markdown next to it")
    a = ap.parse_args(argv)
    if a.render:
        data = json.loads(Path(a.render).read_text())
        data["summary"] = summarize(data["runs"])
        Path(a.render).write_text(json.dumps(data, indent=1) + "\n")
        Path(a.render).with_suffix(".md").write_text(markdown(data["meta"], data["summary"]))
        return 0
    if a.smoke:
        a.subs = 6
        for W in WORKLOADS.values():
            W.update(count=200, duration=0) if "window" in W else W.update(count=50, rate=100)
            W.pop("subs", None)
    if a.window:
        WORKLOADS["cpu"]["window"] = a.window
    if a.msg_bytes:
        WORKLOADS["cpu"]["msg_bytes"] = a.msg_bytes
    if a.rate:
        WORKLOADS["paced"]["rate"] = a.rate
        WORKLOADS["paced"]["count"] = a.rate * 5
    workloads = [w for w in a.only.split(",") if w]
    configs = [c for c in a.configs.split(",") if c]
    bad = sorted(set(workloads) - set(WORKLOADS)) + sorted(
        c for c in configs if c.split("@")[0] not in CONFIGS
        or ("@" in c and not (T.ROOT / c.split("@", 1)[1]).exists()))
    if bad:
        ap.error("unknown: " + ",".join(bad))
    if configs != ["single"] and not shutil.which("redis-server"):
        ap.error("redis-server not installed (apt-get install redis-server)")
    R.build_wsbench()
    # what `uptime` ends with, without procps (not on a minimal Debian)
    uptime = "load average: " + ", ".join("%.2f" % x for x in os.getloadavg())
    print("bench: before the run, " + uptime, file=sys.stderr)
    if a.dry_run:
        wd = T.workdir()
        try:                               # the node flags parse and both processes start
            redis = start_redis(wd)
            node = start_node(wd, "n1", a.python, redis.url)
            print("bench: dry run: redis %s, node ws=%s tcp=%s started" % (
                redis.url, node.ws, node.tcp), file=sys.stderr)
            node.stop()
            redis.stop()
        finally:
            shutil.rmtree(wd, ignore_errors=True)
    runs, t_start = [], time.monotonic()
    for rnd in range(a.rounds):
        for w in workloads:
            for c in R.rotate(configs, rnd):
                t0 = time.monotonic()
                try:
                    r = run_one(c, w, a)
                except Exception as e:  # one failed run must not lose the others
                    r = {"error": "%s: %s" % (type(e).__name__, str(e)[:400])}
                r.update(workload=w, config=c, round=rnd, wall_s=round(time.monotonic() - t0, 2))
                runs.append(r)
                brief = {k: r.get(k) for k in ("deliveries_per_s", "cpu_us_per_delivery",
                                               "lat_p50_us", "lat_p99_us", "hop_p50_us", "busy",
                                               "loss", "close_codes", "error")
                         if r.get(k) not in (None, [], 0)}
                print("bench: %-6s %-9s round=%d %s" % (w, c, rnd, brief), file=sys.stderr,
                      flush=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "workloads": {w: WORKLOADS[w] for w in workloads}, "configs": configs,
        "subs": a.subs, "rounds": a.rounds, "pin": a.pin,
        "pin_text": ("none (the scheduler places every process)" if a.pin == "none" else
                     "`taskset -c`: " + ", ".join("%s on CPU %s" % kv
                                                  for kv in sorted(PIN[a.pin].items())) +
                     "; the other processes unpinned"),
        "host": {"nproc": os.cpu_count(), "kernel": platform.release(),
                 "python": platform.python_version(), "loadavg_end": os.getloadavg()},
        "node_python": subprocess.run([a.python, "-c", "import platform; "
                                       "print(platform.python_version())"],
                                      capture_output=True, text=True).stdout.strip(),
        "redis_version": redis_version(), "uptime_before": uptime, "dry_run": a.dry_run,
        "versions": report.versions(), "total_wall_s": round(time.monotonic() - t_start, 1),
    }
    summary = summarize(runs)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / ("%s-%s" % (meta["date"][:10], a.tag))
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs,
                                                     "summary": summary}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(meta, summary))
    print("bench: wrote %s.json and .md" % stem, file=sys.stderr)
    print(markdown(meta, summary))
    return 1 if any(r.get("error") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
