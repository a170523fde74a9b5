#!/usr/bin/env python3
"""Sphincter at two git revisions, side by side: is NEW slower than OLD beyond the noise?

    python bench/revs.py OLD NEW [--reps 7] [--ns 10,100,1000] [--tag layout-old-vs-new]
    make bench-revs OLD=802e3cc NEW=HEAD [TAG=layout-old-vs-new] [BENCH_ARGS="--reps 7"]

Each revision's ``sphincter.py`` and ``sphincter_lib/`` are extracted once with ``git archive``
(bench/targets.py ``sphincter@REV``, bench/build/revs/<commit>/) and run with this venv. Two
scenarios, at every N, OLD and NEW interleaved (the order alternates: ABBA...):

* fanout — run.py's closed-loop fan-out (one process, one room, N WebSocket subscribers,
  wsbench.c): deliveries/s and the relay process's CPU per delivery (/proc utime+stime over the
  sending phase / deliveries);
* room — bench/roomloop.py: one room in process, no sockets (publish, flush, take/commit),
  CPU per delivery; much less noisy, only the room code.

Writes <out-dir>/<date>-<tag>.json and .md: medians with min..max, the new/old ratio of the
medians, the median of the per-repetition (paired) ratios and the spread ((max-min)/median) as
the noise. Every run is bounded in count and time (run.py's full profile; roomloop's caps).
"""
import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import run as R  # noqa: E402
import targets as T  # noqa: E402

BENCH = Path(__file__).resolve().parent
#: per scenario: (metric, label, higher is better)
METRICS = {"fanout": [("deliveries_per_s", "deliveries/s", True),
                      ("cpu_us_per_delivery", "CPU µs/delivery", False)],
           "room": [("cpu_us_per_delivery", "CPU µs/delivery", False),
                    ("deliveries_per_s", "deliveries/s (wall)", True)]}
ROOM = {"full": dict(deliveries=20_000_000, seconds=10.0), "smoke": dict(deliveries=20_000, seconds=2.0)}


def run_room(target, n, caps, timeout=120):
    """bench/roomloop.py in a fresh process against the target's tree."""
    argv = [sys.executable, str(BENCH / "roomloop.py"), "--tree", str(target.tree), "--subs", str(n),
            "--deliveries", str(caps["deliveries"]), "--seconds", str(caps["seconds"])]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"roomloop rc={p.returncode}: {p.stderr[-500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def commit_info(sha):
    p = subprocess.run(["git", "log", "-1", "--format=%h %cs %s", sha], cwd=str(T.ROOT),
                       capture_output=True, text=True)
    return p.stdout.strip()


def _stats(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    if not vals:
        return None
    med = statistics.median(vals)
    return {"median": med, "min": min(vals), "max": max(vals), "n": len(vals),
            "spread": (max(vals) - min(vals)) / med if med else None}


def summarize(runs, old, new, ns):
    """Per (scenario, n, metric): old and new stats, ratio of medians, paired ratios, verdict."""
    out = []
    for scenario, metrics in METRICS.items():
        for n in ns:
            rs = [r for r in runs if r["scenario"] == scenario and r["n"] == n and not r.get("error")]
            for metric, label, higher in metrics:
                by = {t: {r["rep"]: r.get(metric) for r in rs if r["target"] == t} for t in (old, new)}
                a, b = _stats(by[old].values()), _stats(by[new].values())
                if not a or not b:
                    continue
                paired = [by[new][k] / by[old][k] for k in by[old]
                          if by[new].get(k) and by[old][k]]
                ratio = b["median"] / a["median"] if a["median"] else None
                if ratio is None or min(a["n"], b["n"]) < 2:
                    verdict = "–"
                elif b["min"] <= a["max"] and a["min"] <= b["max"]:
                    verdict = "within noise"
                else:
                    worse = (ratio < 1) if higher else (ratio > 1)
                    verdict = "new %s by %.1f%%" % ("worse" if worse else "better",
                                                    abs(ratio - 1) * 100)
                out.append({"scenario": scenario, "n": n, "metric": metric, "label": label,
                            "old": a, "new": b, "ratio": ratio, "paired": _stats(paired),
                            "verdict": verdict,
                            "loss": sum(r.get("loss") or 0 for r in rs),
                            "errors": [r["error"] for r in runs if r["scenario"] == scenario
                                       and r["n"] == n and r.get("error")]})
    return out


def _num(v, metric):
    if v is None:
        return "–"
    if metric == "deliveries_per_s":
        return f"{v / 1e3:,.0f} k"
    return f"{v:.4f}" if v < 1 else f"{v:.2f}"


def markdown(meta, summary):
    old, new = meta["old"], meta["new"]
    lines = [f"# Sphincter {old['rev']} vs {new['rev']} (bench/revs.py)", "",
             f"- old: `{old['commit'][:12]}` {old['info']}",
             f"- new: `{new['commit'][:12]}` {new['info']}",
             f"- date: {meta['date']}, {meta['host']['nproc']} cores, Python "
             f"{meta['host']['python']}, gevent {meta['versions'].get('gevent', '?')}; load average "
             f"{meta['host']['loadavg_start'][0]:.2f} at the start, "
             f"{meta['host']['loadavg_end'][0]:.2f} at the end; {meta['total_wall_s']:.0f} s",
             f"- command: `{meta['command']}`",
             f"- {meta['reps']} repetitions of each (revision, scenario, N), old and new interleaved "
             "(the order alternates run by run); each run a fresh process.",
             "- fanout: run.py's closed loop (window %(window)s, %(duration)s s per run, 99-byte "
             "lines, one room, N WebSocket subscribers, wsbench.c on the same box); CPU = the relay "
             "process's utime+stime over the sending phase / deliveries." % meta["fanout_params"],
             "- room: bench/roomloop.py, one room in process, no sockets (publish 16-message bursts, "
             "flush, take/commit per subscriber), at most %(deliveries)s deliveries or %(seconds)s s "
             "per run; CPU = process time of the timed loop / deliveries." % meta["room_params"],
             "", "Medians (min..max). *new/old*: ratio of the medians; *paired*: median (min..max) "
             "of new/old within each repetition. *spread*: (max-min)/median of each side, the noise. "
             "*verdict*: \"within noise\" when the old and new ranges overlap.", "",
             "| scenario | N | metric | old | new | new/old | paired | spread old / new | verdict |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for s in summary:
        m = s["metric"]
        rng = lambda st: f"{_num(st['median'], m)} ({_num(st['min'], m)}..{_num(st['max'], m)})"  # noqa
        p = s["paired"]
        paired = f"{p['median']:.3f} ({p['min']:.2f}..{p['max']:.2f})" if p else "–"
        ratio = f"**{s['ratio']:.3f}**" if s["ratio"] is not None else "–"
        spread = " / ".join("–" if s[k]["spread"] is None else f"{s[k]['spread'] * 100:.0f}%"
                            for k in ("old", "new"))
        lines.append(f"| {s['scenario']} | {s['n']} | {s['label']} | {rng(s['old'])} | "
                     f"{rng(s['new'])} | {ratio} | {paired} | {spread} | {s['verdict']} |")
    losses = {(s["scenario"], s["n"]): s["loss"] for s in summary if s["loss"]}
    errors = sorted({e for s in summary for e in s["errors"]})
    lines += ["", "Loss (deliveries, all runs): " + (", ".join(
        f"{sc} N={n}: {loss}" for (sc, n), loss in losses.items()) or "none") + ". Failed runs: "
        + ("; ".join(errors) or "none") + "."]
    busy = meta.get("client_busy") or {}
    if busy:
        lines += ["", "Load generator (wsbench) busy, median of all fan-out runs: " + ", ".join(
            f"N={n}: {b * 100:.0f}%" for n, b in busy.items()) + " — near 100% its speed, not the "
            "relay's, bounds deliveries/s; CPU µs/delivery is then the figure to watch."]
    if meta.get("notes"):
        lines += [""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="git revision (802e3cc, main, HEAD~3...)")
    ap.add_argument("new", help="git revision")
    ap.add_argument("--reps", type=int, help="repetitions (default 7; smoke 1)")
    ap.add_argument("--ns", help="subscriber counts (default 10,100,1000)")
    ap.add_argument("--scenarios", default="fanout,room", help="fanout,room or one of them")
    ap.add_argument("--tag", help="file name tag (default <old>-vs-<new>)")
    ap.add_argument("--out-dir", default=str(BENCH / "results"))
    ap.add_argument("--note", action="append", default=[], help="a sentence for the report")
    ap.add_argument("--smoke", action="store_true", help="tiny run, seconds (a self-check)")
    a = ap.parse_args(argv)
    profile = "smoke" if a.smoke else "full"
    P = dict(R.PROFILES[profile])
    reps = a.reps or (1 if a.smoke else 7)
    ns = [int(x) for x in (a.ns or ("3,10" if a.smoke else "10,100,1000")).split(",") if x]
    scenarios = [s for s in a.scenarios.split(",") if s]
    if set(scenarios) - set(METRICS):
        ap.error("scenarios: fanout, room")
    tag = a.tag or re.sub(r"[^A-Za-z0-9._-]+", "_", f"{a.old}-vs-{a.new}")
    R.build_wsbench()
    old, new = T.relay("sphincter@" + a.old), T.relay("sphincter@" + a.new)
    for t in (old, new):
        why = t.available()
        if why:
            print(f"bench-revs: {t.name}: {why}", file=sys.stderr)
            return 2
    if old.name == new.name:
        ap.error("OLD and NEW are the same name")
    print(f"bench-revs: {old.name} = {old.commit[:12]}, {new.name} = {new.commit[:12]}", file=sys.stderr)

    runs, t0, load0 = [], time.monotonic(), os.getloadavg()
    for rep in range(reps):
        for i, n in enumerate(ns):
            pair = [old, new] if (rep + i) % 2 == 0 else [new, old]
            for scenario in scenarios:
                for t in pair:
                    w0 = time.monotonic()
                    try:
                        r = (R.run_fanout(t, P, n) if scenario == "fanout"
                             else run_room(t, n, ROOM[profile]))
                    except Exception as e:     # one failed run must not lose the others
                        r = {"error": f"{type(e).__name__}: {e}"}
                    r.update(scenario=scenario, target=t.name, commit=t.commit, n=n, rep=rep,
                             wall_s=round(time.monotonic() - w0, 2))
                    runs.append(r)
                    brief = {k: r.get(k) for k in ("deliveries_per_s", "cpu_us_per_delivery",
                                                   "loss", "error") if r.get(k) is not None}
                    print(f"bench-revs: {scenario:6} {t.name:22} n={n:<5} rep={rep} {brief}",
                          file=sys.stderr, flush=True)

    now = dt.datetime.now(dt.timezone.utc)
    cmd = os.environ.get("BENCH_REVS_COMMAND") or "python bench/revs.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    meta = {"date": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "profile": profile, "command": cmd,
            "old": {"rev": a.old, "commit": old.commit, "info": commit_info(old.commit)},
            "new": {"rev": a.new, "commit": new.commit, "info": commit_info(new.commit)},
            "reps": reps, "ns": ns, "scenarios": scenarios,
            "fanout_params": {k: P[k] for k in ("window", "duration", "count", "timeout")},
            "room_params": ROOM[profile],
            "host": {"nproc": os.cpu_count(), "kernel": platform.release(),
                     "python": platform.python_version(), "loadavg_start": load0,
                     "loadavg_end": os.getloadavg()},
            "versions": report.versions(), "total_wall_s": round(time.monotonic() - t0, 1),
            "notes": a.note}
    summary = summarize(runs, old.name, new.name, ns)
    meta["client_busy"] = {n: statistics.median(b) for n in ns for b in [[
        r["client_busy"] for r in runs if r["scenario"] == "fanout" and r["n"] == n
        and isinstance(r.get("client_busy"), (int, float))]] if b}
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = f"{now:%Y-%m-%d}-{tag}"
    (out / (base + ".json")).write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                                   indent=1) + "\n")
    (out / (base + ".md")).write_text(markdown(meta, summary))
    for suffix in (".json", ".md"):
        print(f"bench-revs: wrote {out / (base + suffix)}", file=sys.stderr)
    return 1 if any(r.get("error") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
