"""Turn the runner's raw records into results JSON, a markdown report and a PNG chart."""
import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

METRICS = {
    "ceiling": ["deliveries_per_s", "mb_per_s", "client_ns_per_delivery",
                "deliveries_per_client_cpu_s"],
    "fanout": ["deliveries_per_s", "cpu_us_per_delivery", "loss", "lat_p99_us", "client_busy"],
    "latency": ["lat_p50_us", "lat_p99_us", "lat_max_us", "cpu_us_per_delivery", "loss"],
    "memory": ["kb_per_sub", "rss_kb_before", "rss_kb_after", "connected"],
    "tunnel": ["mb_per_s", "loss", "server_cpu_s", "cpu_us_per_mb"],
    "scale": ["connected", "deliveries", "loss", "connect_s", "kb_per_sub", "closed"],
    "tunnel-open": ["mb_per_s", "loss", "corrupt", "bytes", "source_bytes", "server_cpu_s",
                    "cpu_us_per_mb"],
    "blast": ["lat_p50_us", "lat_p99_us", "lat_max_us", "loss", "blast_mb_per_s", "server_cpu_s"],
    "mem-10k": ["kb_per_sub", "rss_kb_before", "rss_kb_after", "connected"],
    "subs-15k": ["connected", "deliveries", "loss", "lat_p50_us", "lat_p99_us", "lat_max_us",
                 "connect_s", "kb_per_sub", "rss_mb", "closed"],
}


def versions():
    out = {}
    for name, cmd in (("gcc", ["gcc", "-dumpfullversion"]), ("nginx", ["nginx", "-v"]),
                      ("socat", ["socat", "-V"])):
        if shutil.which(cmd[0]):
            p = subprocess.run(cmd, capture_output=True, text=True)
            text = (p.stdout + p.stderr).strip().splitlines()
            out[name] = next((ln for ln in text if ln.strip()), "")[:80]
    for mod in ("websockets", "websockify", "gevent", "matplotlib"):
        try:
            from importlib.metadata import version
            out[mod] = version(mod)
        except Exception:
            pass
    return out


def _stats(values):
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["target"], r["n"]), []).append(r)
    summary = {}
    for (scenario, target, n), rs in groups.items():
        ok = [r for r in rs if not r.get("error")]
        entry = {m: _stats([r.get(m) for r in ok]) for m in METRICS.get(scenario, [])}
        entry["runs"] = len(rs)
        entry["errors"] = [r["error"] for r in rs if r.get("error")]
        entry["loss_total"] = sum(r.get("loss", 0) or 0 for r in ok)
        entry["closed_total"] = sum(r.get("closed", 0) or 0 for r in ok)
        entry["stalls"] = sum(1 for r in ok if r.get("stalled") or "stalled" in r.get("stderr", ""))
        entry["close_codes"] = sorted({c for r in ok for c in r.get("close_codes") or []})
        summary.setdefault(scenario, {}).setdefault(target, {})[str(n)] = entry
    return summary


def _get(summary, scenario, target, n, metric, key="median"):
    try:
        return summary[scenario][target][str(n)][metric][key]
    except (KeyError, TypeError):
        return None


def _fmt(v, digits=0, scale=1.0):
    if v is None:
        return "–"
    v = v / scale
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _cell(summary, scenario, target, n, metric, digits=0, scale=1.0):
    s = (summary.get(scenario, {}).get(target, {}).get(str(n)) or {}).get(metric)
    if not s:
        return "–"
    if s["n"] == 1 or s["min"] == s["max"]:
        return _fmt(s["median"], digits, scale)
    return f"{_fmt(s['median'], digits, scale)} ({_fmt(s['min'], digits, scale)}–{_fmt(s['max'], digits, scale)})"


def _ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.2f}×"


def merge(datas):
    """One (meta, runs) from several results files: a full run first, then partial runs (for
    instance ``--only tunnel-open,blast``) whose scenarios replace the full run's."""
    meta = dict(datas[0]["meta"])
    meta["params"] = dict(meta["params"])
    dates = dict(meta.get("scenario_dates") or
                 {s: meta["date"] for s in {r["scenario"] for r in datas[0]["runs"]}})
    runs = list(datas[0]["runs"])
    for d in datas[1:]:
        newer = {r["scenario"] for r in d["runs"]}
        runs = [r for r in runs if r["scenario"] not in newer] + list(d["runs"])
        for k, v in d["meta"]["params"].items():
            meta["params"].setdefault(k, v)
        dates.update({s: d["meta"]["date"] for s in newer})
    meta["scenario_dates"] = dates
    meta["notes"] = [n if i == 0 else f"(run of {d['meta']['date']}): {n}"
                     for i, d in enumerate(datas) for n in d["meta"].get("notes", [])]
    return meta, runs


def _measured(meta, scenario):
    date = (meta.get("scenario_dates") or {}).get(scenario)
    return f" *Measured {date}.*" if date and date != meta["date"] else ""


def _later_runs(meta):
    later = sorted({(d, s) for s, d in (meta.get("scenario_dates") or {}).items() if d != meta["date"]})
    if not later:
        return ""
    return (" Sections marked *Measured <date>* come from a later run of only those scenarios "
            "(`make bench-flow`, or `BENCH_ARGS=\"--only ...\"`), rendered together with "
            "`bench/run.py --from-json FULL.json PARTIAL.json`: " +
            ", ".join(f"{s} ({d})" for d, s in later) + ".")


def _flow_sections(meta, summary):
    """Issue 9: the open-loop tunnel and the paced room next to a blast."""
    P, L = meta["params"], []
    op = summary.get("tunnel-open", {})
    if op:
        L += ["## Open-loop tunnel: 1 source → 1 subscriber, raw, 64 KiB writes, no window", "",
              "The source writes as fast as the relay takes its bytes "
              + (f"for {P['open_duration']:g} s " if P.get("open_duration") else "")
              + f"(at most {P['open_bytes'] >> 20:,} MiB), "
              "then waits for the subscriber to receive everything: nothing but the relay's own flow "
              "control keeps the tunnel lossless. Byte loss = bytes the subscriber lacks at the end "
              "(a subscriber that was cut lost everything after its cut); corrupt = received reads "
              "that differ from the source's byte pattern." + _measured(meta, "tunnel-open"), "",
              "| target | MB/s | byte loss | corrupt | close codes | vs websockify | vs socat | "
              "server CPU µs/MB |",
              "|---|---|---|---|---|---|---|---|"]
        for t in sorted(op):
            e = op[t].get("1", {})
            v = _get(summary, "tunnel-open", t, 1, "mb_per_s")
            corrupt = sum(int(x) for x in [_get(summary, "tunnel-open", t, 1, "corrupt", "max")]
                          if x is not None)
            L.append(f"| {t} | {_cell(summary, 'tunnel-open', t, 1, 'mb_per_s')} | "
                     f"{_fmt(e.get('loss_total'))} | {corrupt} | "
                     f"{', '.join(map(str, e.get('close_codes', []))) or 'none'} | "
                     f"{_ratio(v, _get(summary, 'tunnel-open', 'websockify', 1, 'mb_per_s'))} | "
                     f"{_ratio(v, _get(summary, 'tunnel-open', 'socat', 1, 'mb_per_s'))} | "
                     f"{_cell(summary, 'tunnel-open', t, 1, 'cpu_us_per_mb')} |")
        L.append("")
    bl = summary.get("blast", {})
    if bl:
        L += [f"## Blast next door: a paced room ({P['blast_rate']:g} msg/s, {P['blast_subs']} "
              f"subscriber, {P['blast_count']} messages) alone and next to a blasting room", "",
              "A second load generator process opens another room (no subscribers) and writes "
              "100-byte lines into it as fast as the relay reads them, for the whole paced run "
              "(issue 9, case 1: before flow control, p50 513 ms and max 2,020 ms). Latency is "
              "source write → subscriber read, measured by the paced load generator on one clock; "
              "the paced source is never held back by a window (it may run all its messages "
              "ahead), so a stalled relay shows as latency, not as a slower rate."
              + _measured(meta, "blast"), "",
              "| target | next door | p50 ms | p99 ms | max ms | loss | blaster MB/s | "
              "max vs quiet |", "|---|---|---|---|---|---|---|---|"]
        for t in sorted(bl):
            quiet = _get(summary, "blast", t, 0, "lat_max_us")
            for n, what in ((0, "quiet"), (1, "blasting")):
                if str(n) not in bl[t]:
                    continue
                L.append(f"| {t} | {what} | {_cell(summary, 'blast', t, n, 'lat_p50_us', 2, 1000)} | "
                         f"{_cell(summary, 'blast', t, n, 'lat_p99_us', 2, 1000)} | "
                         f"{_cell(summary, 'blast', t, n, 'lat_max_us', 2, 1000)} | "
                         f"{bl[t][str(n)].get('loss_total', '–')} | "
                         f"{_cell(summary, 'blast', t, n, 'blast_mb_per_s', 1) if n else '–'} | "
                         f"{_ratio(_get(summary, 'blast', t, n, 'lat_max_us'), quiet) if n else '–'} |")
        L.append("")
    return L


#: the tracemalloc breakdown of an idle subscriber (bench/memprobe.py's figures, written up)
MEMPROBE = Path(__file__).resolve().parent / "results" / "memprobe.md"


def _big_sections(P, summary, meta=None):
    """Issue 21: 10,000 idle subscribers in one room (memory), 15,000 in one process."""
    meta = meta or {"date": None}
    L = []
    mem = summary.get("mem-10k", {})
    if mem:
        n = P["mem10k_subs"]
        L += [f"## Memory: {n:,} idle subscribers in one room", "",
              "| target | RSS growth KB per subscriber (median, min..max) | RSS before → after (MB) "
              "| connected | vs nchan |", "|---|---|---|---|---|"]
        for t in sorted(mem):
            L.append(f"| {t} | {_cell(summary, 'mem-10k', t, n, 'kb_per_sub', 1)} | "
                     f"{_fmt(_get(summary, 'mem-10k', t, n, 'rss_kb_before'), 1, 1024)} → "
                     f"{_fmt(_get(summary, 'mem-10k', t, n, 'rss_kb_after'), 1, 1024)} | "
                     f"{_cell(summary, 'mem-10k', t, n, 'connected')} | "
                     f"{_ratio(_get(summary, 'mem-10k', t, n, 'kb_per_sub'), _get(summary, 'mem-10k', 'nchan', n, 'kb_per_sub'))} |")
        L += ["", "RSS of the server's process tree (nginx: master and worker; sphincter-redis: "
              "the Sphincter process, not its redis-server) after the subscribers joined and "
              "the server settled, minus before, divided by the subscribers."
              + _measured(meta, "mem-10k"), ""]
    big = summary.get("subs-15k", {})
    if big:
        n = P["subs15k"]
        L += [f"## {n:,} subscribers in one process, {P['subs15k_probes']} messages fanned out "
              "to all (each after the last reached everyone)", "",
              "| target | connected | deliveries (expected) | loss | p50 ms | p99 ms | max ms "
              "| connect s | RSS MB | closed | errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        if _measured(meta, "subs-15k"):
            L[-2:-2] = [_measured(meta, "subs-15k").strip(), ""]
        for t in sorted(big):
            e = big[t].get(str(n), {})
            L.append(f"| {t} | {_cell(summary, 'subs-15k', t, n, 'connected')} | "
                     f"{_cell(summary, 'subs-15k', t, n, 'deliveries')} ({n * P['subs15k_probes']:,}) | "
                     f"{e.get('loss_total', '–')} | {_cell(summary, 'subs-15k', t, n, 'lat_p50_us', 1, 1000)} | "
                     f"{_cell(summary, 'subs-15k', t, n, 'lat_p99_us', 1, 1000)} | "
                     f"{_cell(summary, 'subs-15k', t, n, 'lat_max_us', 1, 1000)} | "
                     f"{_cell(summary, 'subs-15k', t, n, 'connect_s', 2)} | "
                     f"{_cell(summary, 'subs-15k', t, n, 'rss_mb', 1)} | {e.get('closed_total', '–')} | "
                     f"{'; '.join(e.get('errors', [])) or 'none'} |")
        L.append("")
    if mem and MEMPROBE.exists():          # where the bytes go (bench/memprobe.py, by hand)
        L += [MEMPROBE.read_text().strip(), ""]
    return L


def markdown(meta, summary, chart_rel):
    P = meta["params"]
    reps = P["reps"]
    L = ["# Benchmarks", "",
         f"Generated by `make bench` (`bench/run.py`, profile `{meta['profile']}`) on "
         f"{meta['date']}; {meta['host']['nproc']} CPUs, Linux {meta['host']['kernel']}, "
         f"Python {meta['host']['python']}; total {meta['total_wall_s']} s." + _later_runs(meta), "",
         "**Read the ratios, not the absolute numbers.** The machine has 2 cores shared with other "
         "work; the server, the load generator and the source all run on it. Every scenario runs "
         f"the targets interleaved (order rotated each repetition), {reps} repetition(s); cells show "
         "the median and, in parentheses, min–max.", "",
         "Server CPU-µs per delivery is the steadier comparison: it does not depend on how much "
         "of a core the scheduler handed each process during the run (see the 'busy' figures in "
         "the JSON: `server_cpu_s / elapsed_s`).", "",
         "Method: one fresh server process per run, loopback only. The load generator "
         "(`bench/wsbench.c`, one epoll loop, reads in 256 KiB batches) holds every subscriber and "
         "the source; the source is closed-loop — message *s* is sent only once every subscriber "
         f"has received message *s − {P['window']}* — so kernel buffers do not dominate. Messages "
         "are 100-byte lines carrying a sequence number (loss/order check on every subscriber) and "
         "a send timestamp (latency). Server CPU = utime+stime of the server's process tree from "
         "`/proc` over the sending phase, divided by deliveries. nchan: nginx with 1 worker "
         "process (one core, like Sphincter's single process), published by pipelined HTTP POST "
         "on one keep-alive connection, `nchan_message_buffer_length 1024` (≥ the window). Sphincter and the asyncio relay get the source over TCP.",
         ""]
    for n in meta.get("notes") or []:
        L += [f"Note {n}" if n.startswith("(") else f"Note: {n}", ""]
    if meta.get("skipped"):
        L += ["Skipped targets: " + "; ".join(f"{k}: {v}" for k, v in meta["skipped"].items()), ""]

    fan = summary.get("fanout", {})
    if fan:
        L += [f"## Fan-out: deliveries/s summed over subscribers ({P['duration'] or 'count-bound'} s "
              "per run)", "",
              "| N | target | deliveries/s | server CPU µs/delivery | loss | p99 latency ms | vs nchan | vs asyncio | load generator busy |",
              "|---|---|---|---|---|---|---|---|---|"]
        for n in P["fanout_ns"]:
            for t in sorted(fan):
                d = _get(summary, "fanout", t, n, "deliveries_per_s")
                L.append(f"| {n} | {t} | {_cell(summary, 'fanout', t, n, 'deliveries_per_s')} | "
                         f"{_cell(summary, 'fanout', t, n, 'cpu_us_per_delivery', 2)} | "
                         f"{fan[t].get(str(n), {}).get('loss_total', '–')} | "
                         f"{_cell(summary, 'fanout', t, n, 'lat_p99_us', 1, 1000)} | "
                         f"{_ratio(d, _get(summary, 'fanout', 'nchan', n, 'deliveries_per_s'))} | "
                         f"{_ratio(d, _get(summary, 'fanout', 'asyncio', n, 'deliveries_per_s'))} | "
                         f"{_fmt(100 * (_get(summary, 'fanout', t, n, 'client_busy') or 0))} % |")
        stalls = [f"{t} N={n}" for t in sorted(fan) for n, e in fan[t].items() if e.get("stalls")]
        L += ["", "Loss counts every message a subscriber had not received when the run ended; a run "
              "in which no delivery progressed for 5 s is ended by the load generator and its "
              "missing messages count as loss" +
              (f" (stalled runs this time: {', '.join(stalls)})." if stalls else " (none stalled).") +
              " Seen with nchan at N = 10 in about one run in three, with message buffer "
              "lengths 16 and 1024: nginx answered 202 to every POST of the last window, but "
              "those messages (at most the window, 128) reached no subscriber within 5 s; "
              "whether nchan holds or drops them was not determined."]
        if chart_rel:
            L += ["", f"![deliveries/s vs N]({chart_rel})"]
        L.append("")

    lat = summary.get("latency", {})
    if lat:
        n = P["lat_n"]
        L += [f"## Latency: N = {n}, {P['lat_rate']} msg/s paced ({P['lat_count']} messages)", "",
              "| target | p50 ms | p99 ms | max ms | server CPU µs/delivery | loss | p99 vs nchan |",
              "|---|---|---|---|---|---|---|"]
        for t in sorted(lat):
            L.append(f"| {t} | {_cell(summary, 'latency', t, n, 'lat_p50_us', 2, 1000)} | "
                     f"{_cell(summary, 'latency', t, n, 'lat_p99_us', 2, 1000)} | "
                     f"{_cell(summary, 'latency', t, n, 'lat_max_us', 2, 1000)} | "
                     f"{_cell(summary, 'latency', t, n, 'cpu_us_per_delivery', 2)} | "
                     f"{lat[t].get(str(n), {}).get('loss_total', '–')} | "
                     f"{_ratio(_get(summary, 'latency', t, n, 'lat_p99_us'), _get(summary, 'latency', 'nchan', n, 'lat_p99_us'))} |")
        L.append("")

    mem = summary.get("memory", {})
    if mem:
        n = P["mem_subs"]
        L += [f"## Memory: {n} idle subscribers over {P['mem_rooms']} rooms", "",
              "| target | RSS growth KB per subscriber | RSS before → after (MB) | vs nchan |",
              "|---|---|---|---|"]
        for t in sorted(mem):
            L.append(f"| {t} | {_cell(summary, 'memory', t, n, 'kb_per_sub', 1)} | "
                     f"{_fmt(_get(summary, 'memory', t, n, 'rss_kb_before'), 1, 1024)} → "
                     f"{_fmt(_get(summary, 'memory', t, n, 'rss_kb_after'), 1, 1024)} | "
                     f"{_ratio(_get(summary, 'memory', t, n, 'kb_per_sub'), _get(summary, 'memory', 'nchan', n, 'kb_per_sub'))} |")
        L.append("")

    L += _big_sections(P, summary, meta)

    tun = summary.get("tunnel", {})
    if tun:
        L += ["## Tunnel: 1 source → 1 subscriber, raw framing, 64 KiB writes", "",
              "| target | MB/s | byte loss | vs websockify | vs socat | server CPU µs/MB | CPU vs socat |",
              "|---|---|---|---|---|---|---|"]
        for t in sorted(tun):
            v = _get(summary, "tunnel", t, 1, "mb_per_s")
            c = _get(summary, "tunnel", t, 1, "cpu_us_per_mb")
            L.append(f"| {t} | {_cell(summary, 'tunnel', t, 1, 'mb_per_s')} | "
                     f"{tun[t].get('1', {}).get('loss_total', '–')} | "
                     f"{_ratio(v, _get(summary, 'tunnel', 'websockify', 1, 'mb_per_s'))} | "
                     f"{_ratio(v, _get(summary, 'tunnel', 'socat', 1, 'mb_per_s'))} | "
                     f"{_cell(summary, 'tunnel', t, 1, 'cpu_us_per_mb')} | "
                     f"{_ratio(c, _get(summary, 'tunnel', 'socat', 1, 'cpu_us_per_mb'))} |")
        L += ["", "socat runs with `-b 65536` (plain TCP, no WebSocket: the limit); "
              "websockify forks a process per connection (its CPU is counted). MB/s swings with "
              "how much CPU the scheduler gives the server and the load generator on a shared "
              "machine; CPU-µs per MB (lower is better) is the steadier comparison.", ""]

    sc = summary.get("scale", {})
    if sc:
        n = P["scale_subs"]
        L += [f"## Scale: {n:,} subscribers in one room, {P['scale_probes']} probes each", "",
              "| target | connected | deliveries (expected) | loss | connect s | RSS KB/subscriber | closed | errors |",
              "|---|---|---|---|---|---|---|---|"]
        for t in sorted(sc):
            e = sc[t].get(str(n), {})
            L.append(f"| {t} | {_cell(summary, 'scale', t, n, 'connected')} | "
                     f"{_cell(summary, 'scale', t, n, 'deliveries')} ({n * P['scale_probes']:,}) | "
                     f"{e.get('loss_total', '–')} | {_cell(summary, 'scale', t, n, 'connect_s', 2)} | "
                     f"{_cell(summary, 'scale', t, n, 'kb_per_sub', 1)} | {e.get('closed_total', '–')} | "
                     f"{'; '.join(e.get('errors', [])) or 'none'} |")
        L.append("")

    ce = summary.get("ceiling", {}).get("wsbench", {})
    if ce:
        L += ["## Load generator ceiling (wsbench against a trivial C sink)", "",
              "| N | deliveries/s (sink + client on 2 cores) | MB/s | client CPU ns/delivery | deliveries per client CPU-second |",
              "|---|---|---|---|---|"]
        for n in P["ceiling_ns"]:
            L.append(f"| {n} | {_cell(summary, 'ceiling', 'wsbench', n, 'deliveries_per_s')} | "
                     f"{_cell(summary, 'ceiling', 'wsbench', n, 'mb_per_s')} | "
                     f"{_cell(summary, 'ceiling', 'wsbench', n, 'client_ns_per_delivery', 1)} | "
                     f"{_cell(summary, 'ceiling', 'wsbench', n, 'deliveries_per_client_cpu_s')} |")
        L += ["", "The sink and the client share the same 2 cores, so the first column is the pair's "
              "limit; the last column is what one core of the client can absorb. The fan-out table's "
              "'load generator busy' column is the client's CPU over the run's wall time: well "
              "below 100 % means the client was not the bottleneck.", ""]

    L += _flow_sections(meta, summary)
    L += _targets_section(meta, summary)
    L += ["## Versions", "", "| component | version |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in sorted(meta.get("versions", {}).items())]
    L.append("")
    return "\n".join(L)


def _targets_section(meta, summary):
    """Issue 4's targets for Sphincter, as measured in this run."""
    P = meta["params"]
    g = lambda *a: _get(summary, *a)  # noqa: E731
    rows = []

    def row(what, value, ok):
        verdict = "–" if ok is None else ("met" if ok else "**not met**")
        rows.append(f"| {what} | {value} | {verdict} |")

    for n in P["fanout_ns"]:
        s, x = g("fanout", "sphincter", n, "deliveries_per_s"), g("fanout", "nchan", n, "deliveries_per_s")
        if s is not None and x:
            row(f"fan-out deliveries/s ≥ nchan at N = {n}", f"{s / x:.2f}× nchan", s >= x)
    for n in P["fanout_ns"]:
        c = g("fanout", "sphincter", n, "cpu_us_per_delivery")
        if c is not None:
            row(f"server CPU ≤ 1 µs/delivery at N = {n}", f"{c:.2f} µs", c <= 1.0)
    loss = sum(e.get("loss_total", 0) for sc in ("fanout", "latency", "scale")
               for e in summary.get(sc, {}).get("sphincter", {}).values())
    if summary.get("fanout", {}).get("sphincter"):
        row("zero loss (fan-out, latency, scale)", f"{loss} lost", loss == 0)
    s, x = g("latency", "sphincter", P["lat_n"], "lat_p99_us"), g("latency", "nchan", P["lat_n"], "lat_p99_us")
    if s is not None and x:
        row("latency p99 ≤ nchan", f"{s / 1000:.2f} ms vs {x / 1000:.2f} ms", s <= x)
    s, x = g("memory", "sphincter", P["mem_subs"], "kb_per_sub"), g("memory", "nchan", P["mem_subs"], "kb_per_sub")
    if s is not None and x:
        row("memory per idle subscriber ≤ nchan", f"{s:.1f} KB vs {x:.1f} KB", s <= x)
    s, w, so = (g("tunnel", t, 1, "mb_per_s") for t in ("sphincter", "websockify", "socat"))
    if s is not None and w:
        row("tunnel ≥ websockify", f"{s / w:.2f}×", s >= w)
    if s is not None and so:
        row("tunnel ≥ 0.7 × socat", f"{s / so:.2f}×", s >= 0.7 * so)
    c, cs = g("tunnel", "sphincter", 1, "cpu_us_per_mb"), g("tunnel", "socat", 1, "cpu_us_per_mb")
    if c is not None and cs:
        row("(context) tunnel server CPU per MB vs socat", f"{c / cs:.2f}× socat's", None)
    e = summary.get("tunnel-open", {}).get("sphincter", {}).get("1")
    if e:
        corrupt = g("tunnel-open", "sphincter", 1, "corrupt", "max") or 0
        row("open-loop tunnel lossless (issue 9)",
            f"{e['loss_total']} bytes lost, {corrupt:.0f} corrupt reads, close "
            f"{', '.join(map(str, e['close_codes'])) or 'none'}",
            e["loss_total"] == 0 and not corrupt and not e["errors"])
    s, w, so = (g("tunnel-open", t, 1, "mb_per_s") for t in ("sphincter", "websockify", "socat"))
    if s is not None and w and so:
        c, cw = (g("tunnel-open", t, 1, "cpu_us_per_mb") for t in ("sphincter", "websockify"))
        row("(context) open-loop tunnel MB/s vs websockify, socat; server CPU/MB vs websockify",
            f"{s / w:.2f}×, {s / so:.2f}×; {c / cw:.2f}×" if c and cw else f"{s / w:.2f}×, {s / so:.2f}×",
            None)
    s, q = g("blast", "sphincter", 1, "lat_max_us"), g("blast", "sphincter", 0, "lat_max_us")
    if s is not None:
        row("paced room next to a blast: max latency < 100 ms (issue 9)",
            f"{s / 1000:.1f} ms" + (f" (quiet: {q / 1000:.1f} ms)" if q is not None else ""),
            s < 100_000)
    e = summary.get("scale", {}).get("sphincter", {}).get(str(P["scale_subs"]))
    if e:
        conn = g("scale", "sphincter", P["scale_subs"], "connected")
        ok = not e["errors"] and e["loss_total"] == 0 and conn == P["scale_subs"]
        row(f"{P['scale_subs']:,} subscribers in one process without errors",
            f"{_fmt(conn)} connected, {e['loss_total']} lost", ok)
    kb = g("mem-10k", "sphincter", P.get("mem10k_subs"), "kb_per_sub")
    if kb is not None:
        row(f"RSS ≤ 5 KB per idle subscriber at {P['mem10k_subs']:,} in one room (issue 21)",
            f"{kb:.1f} KB (nchan: {_fmt(g('mem-10k', 'nchan', P['mem10k_subs'], 'kb_per_sub'), 1)} KB)",
            kb <= 5)
    e = summary.get("subs-15k", {}).get("sphincter", {}).get(str(P.get("subs15k")))
    if e:
        conn = g("subs-15k", "sphincter", P["subs15k"], "connected")
        p99 = g("subs-15k", "sphincter", P["subs15k"], "lat_p99_us")
        row(f"{P['subs15k']:,} subscribers in one process, a message to all, 0 loss (issue 21)",
            f"{_fmt(conn)} connected, {e['loss_total']} lost, p99 {_fmt(p99, 1, 1000)} ms",
            not e["errors"] and e["loss_total"] == 0 and conn == P["subs15k"])
    if not rows:
        return []
    return ["## Targets (Sphincter, this run)", "", "| target | measured | verdict |",
            "|---|---|---|", *rows, ""]


def chart(meta, summary, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ns = meta["params"]["fanout_ns"]
    for t in sorted(summary.get("fanout", {})):
        xs, ys, lo, hi = [], [], [], []
        for n in ns:
            s = summary["fanout"][t].get(str(n), {}).get("deliveries_per_s")
            if s:
                xs.append(n)
                ys.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=t)
    ce = summary.get("ceiling", {}).get("wsbench", {})
    if ce:
        vals = [v["deliveries_per_client_cpu_s"]["median"] for v in ce.values()
                if v.get("deliveries_per_client_cpu_s")]
        if vals:
            ax.axhline(min(vals), linestyle="--", color="grey",
                       label="load generator ceiling (one core)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers N (one room)")
    ax.set_ylabel("deliveries/s (sum over subscribers)")
    ax.set_title(f"Fan-out, closed loop, 100-byte messages — {meta['date'][:10]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


#: sections of docs/BENCHMARKS.md that other benches write (bench/sessions.py): a run of this
#: report keeps them as they are, at the end
KEPT_SECTIONS = ("## Session tunnels",)


def _kept_sections(docs):
    try:
        text = docs.read_text()
    except OSError:
        return ""
    kept = []
    for title in KEPT_SECTIONS:
        start = text.find("\n" + title + "\n")
        if start < 0:
            continue
        end = text.find("\n## ", start + 1)
        kept.append(text[start:end if end >= 0 else len(text)].rstrip("\n") + "\n")
    return "".join(kept)


def write_all(meta, runs, out_dir, docs, with_chart=True, tag="", write_json=True):
    """JSON <out_dir>/<date><tag>.json, the fan-out chart (when there is a fan-out), markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = meta["date"][:10] + tag
    summary = summarize(runs)
    paths = []
    png = None
    if with_chart and summary.get("fanout"):
        png = chart(meta, summary, out_dir / f"{meta['date'][:10]}-fanout.png")
        if png:
            paths.append(png)
    if write_json:
        js = out_dir / f"{stamp}.json"
        js.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1,
                                 default=str))
        paths.append(js)
    docs = Path(docs)
    docs.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(png, docs.parent) if png else None
    docs.write_text(markdown(meta, summary, rel) + _kept_sections(docs))
    paths.append(docs)
    return paths
