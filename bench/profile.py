#!/usr/bin/env python3
"""Profile Sphincter's hot path under the fan-out load (py-spy, sampling, no code changes).

    python bench/profile.py [--ns 100,1000] [--seconds 5] [--out bench/results/<date>-profile.md]

For each N: start Sphincter, connect N subscribers with the load generator, attach
``py-spy record --format raw`` to the server for the sending phase of a closed-loop run, then
fold the sampled stacks into self time and inclusive time per function.  py-spy drops idle
samples (the hub waiting in epoll), so percentages are of the server's busy time; the busy
fraction is samples / (rate x seconds).
"""
import argparse
import collections
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402
import targets as T  # noqa: E402

RATE = 250
#: subscribers opened in the 'connect' profile (the handshake path, cf. the scale scenario)
CONNECT_SUBS = 5000


def py_spy():
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def fold(path):
    """(self, inclusive, total) sample counts per 'function (file)' from py-spy raw output."""
    self_c, incl, total = collections.Counter(), collections.Counter(), 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return self_c, incl, total


def _short(frame):
    # "func (path/to/file.py:123)" -> "func (file.py)"; the process/thread frames are dropped
    if frame.startswith(("process ", "thread ")):
        return None
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    fname = where.rsplit(":", 1)[0]
    parts = fname.split("/")
    short = "/".join(parts[-2:]) if "site-packages" in fname or "lib/python" in fname else parts[-1]
    return f"{name} ({short})"


def profile_n(n, seconds, workdir):
    """n: subscriber count (fan-out, lines) or "tunnel" (1 subscriber, raw, 64 KiB writes)."""
    tunnel = n == "tunnel"
    target = T.SphincterRaw() if tunnel else T.Sphincter()
    out = Path(workdir) / f"pyspy-{n}.txt"
    holder = {}

    def fn(server, ws, src, rooms):
        def on_phase(name):
            if name == ("sources" if n == "connect" else "subs"):
                holder["spy"] = subprocess.Popen(
                    [py_spy(), "record", "--pid", str(server.pid), "--rate", str(RATE),
                     "--duration", str(seconds), "--format", "raw", "--output", str(out),
                     "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                time.sleep(0.5)  # let py-spy attach before the source starts
                holder["cpu0"] = T.cpu_seconds(server.pid)
                holder["t0"] = time.monotonic()
            elif name == ("subs" if n == "connect" else "done"):
                holder["cpu1"] = T.cpu_seconds(server.pid)
                holder["t1"] = time.monotonic()
        if n == "connect":
            load = ["--subs", CONNECT_SUBS, "--window", 1, "--count", 1, "--conc", 256]
        elif n == "paced":
            load = ["--subs", 100, "--window", 128, "--count", 1000 * seconds, "--rate", 1000]
        elif tunnel:
            load = ["--subs", 1, "--chunk", 65536, "--window", 64, "--total-bytes", 64 << 30,
                    "--duration", seconds]
        else:
            load = ["--subs", n, "--window", 128, "--count", 10**8, "--duration", seconds]
        r = R.loadgen(R._common(target, ws, src, rooms) + load, on_phase)
        spy = holder["spy"]
        try:
            _, err = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        r["pyspy_rc"], r["pyspy_err"] = spy.returncode, err[-300:]
        r["server_cpu_s"] = holder["cpu1"] - holder["cpu0"]
        r["phase_s"] = holder["t1"] - holder["t0"]
        return r
    r = R.with_server(target, fn, "raw" if tunnel else "lines")
    return r, out


def report(n, r, out, top):
    lines = [f"### N = {n}", ""]
    if not out.exists():
        return lines + [f"py-spy produced nothing (rc={r.get('pyspy_rc')}): {r.get('pyspy_err')}", ""]
    self_c, incl, total = fold(out)
    cpu_us = r["server_cpu_s"] * 1e6 / r["deliveries"] if r["deliveries"] else 0
    if n == "connect":
        lines = [f"### Connect: {CONNECT_SUBS} subscribers opening (the handshake path)", "",
                 f"{r['connected']} connected in {r['connect_s']:.2f} s, "
                 f"{r['server_cpu_s'] * 1e6 / max(r['connected'], 1):.0f} server CPU-µs per "
                 f"connection; {total} busy samples at {RATE} Hz.", "",
                 "| self % | inclusive % | function (file) |", "|---|---|---|"]
        for f, c in self_c.most_common(top):
            lines.append(f"| {100 * c / total:.1f} | {100 * incl[f] / total:.1f} | `{f}` |")
        return lines + [""]
    if n == "paced":
        lines[0] = "### Paced: N = 100, 1000 msg/s (the latency scenario)"
    if n == "tunnel":
        lines[0] = "### Tunnel (1 subscriber, raw framing, 64 KiB writes)"
        cpu_us = r["server_cpu_s"] * 1e6 / max(r["bytes"] / 1e6, 1e-9)
        lines += [f"{r['mb_per_s']:,.0f} MB/s, {cpu_us:.0f} server CPU-µs per MB, "
                  f"byte loss {r['loss']}; {total} busy samples at {RATE} Hz "
                  f"(≈ {total / RATE:.1f} s busy over ≈ {r['elapsed_s']:.1f} s).", "",
                  "| self % | inclusive % | function (file) |", "|---|---|---|"]
    else:
        lines += [f"{r['deliveries_per_s']:,.0f} deliveries/s, {cpu_us:.2f} server CPU-µs/delivery, "
              f"loss {r['loss']}; {total} busy samples at {RATE} Hz "
                  f"(≈ {total / RATE:.1f} s busy over ≈ {r['elapsed_s']:.1f} s).", "",
                  "| self % | inclusive % | function (file) |", "|---|---|---|"]
    for f, c in self_c.most_common(top):
        lines.append(f"| {100 * c / total:.1f} | {100 * incl[f] / total:.1f} | `{f}` |")
    lines += ["", "Inclusive, top entries under Sphincter's own modules:", "",
              "| inclusive % | function (file) |", "|---|---|"]
    ours = [(f, c) for f, c in incl.most_common() if any(
        m in f for m in ("(rooms.py)", "(web.py)", "(ws.py)", "(ingest.py)", "(framing.py)",
                         "(wsproto.py)", "(server.py)"))]
    for f, c in ours[:top]:
        lines.append(f"| {100 * c / total:.1f} | `{f}` |")
    return lines + [""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="100,1000,paced,tunnel,connect",
                    help="subscriber counts to profile; 'paced' = N=100 at 1000 msg/s (the "
                         "latency case); 'tunnel' = the raw 1->1 case; 'connect' = opening subscribers")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out", help="markdown output (default bench/results/<date>-profile.md)")
    a = ap.parse_args(argv)
    if not py_spy():
        print("profile: py-spy missing (pip install -r requirements-bench.txt)", file=sys.stderr)
        return 2
    R.build_wsbench()
    wd = T.workdir()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    out_md = Path(a.out) if a.out else R.BENCH / "results" / f"{date}-profile.md"
    md = [f"# Sphincter hot-path profile ({date}, py-spy {RATE} Hz; fan-out runs are closed-loop "
          "with 100-byte lines)", "",
          "Percentages are of the server's busy samples (py-spy drops idle ones). `Hub.run` self "
          "time is the event loop itself: libev polling and greenlet switches.", ""]
    for n in [x if x in ("tunnel", "paced", "connect") else int(x) for x in a.ns.split(",")]:
        r, out = profile_n(n, a.seconds, wd)
        md += report(n, r, out, a.top)
        keep = out_md.parent / f"{date}-pyspy-{n}.txt"
        if out.exists():
            out_md.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(out, keep)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(md))
    print("\n".join(md))
    shutil.rmtree(wd, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
