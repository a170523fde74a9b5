"""Smoke run of the benchmark suite so it cannot rot (issue 4).

Builds the C load generator with the machine's gcc, then runs ``bench/run.py --smoke``: tiny N,
a few hundred messages, every scenario, against Sphincter and the asyncio baseline (nchan,
websockify and socat are the full bench's business).  Asserts zero loss, no failed run and that
the results were written.  No timed assertions: a benchmark is not a test.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import require_program

ROOT = Path(__file__).resolve().parents[2]

#: every scenario's targets, each named (bench/run.py's options ending in -targets): with
#: --require a missing one fails the run. tests/unit/test_deps_declared.py checks that this names
#: all of run.py's target options and that the Debian packages of these targets are declared.
TARGETS = {"--targets": "sphincter,asyncio", "--tunnel-targets": "sphincter,asyncio",
           "--blast-targets": "sphincter,asyncio", "--big-targets": "sphincter,sphincter-redis"}


@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path):
    require_program("gcc")
    require_program("redis-server")             # the sphincter-redis target
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # a fresh build every time: the C source must keep compiling
    build = subprocess.run([sys.executable, "-c",
                            "import sys; sys.path.insert(0, 'bench'); import run; "
                            "run.build_wsbench(force=True)"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    named = [arg for option in TARGETS.items() for arg in option]
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--require",
                        *named, "--out-dir", str(tmp_path), "--no-chart"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-3000:]

    results = list(tmp_path.glob("*.json"))
    assert len(results) == 1, p.stderr[-2000:]
    data = json.loads(results[0].read_text())
    runs = data["runs"]
    assert {r["scenario"] for r in runs} == {"ceiling", "fanout", "latency", "memory", "tunnel",
                                             "scale", "tunnel-open", "blast", "mem-10k", "subs-15k"}
    for scenario, option in (("fanout", "--targets"), ("tunnel", "--tunnel-targets"),
                             ("blast", "--blast-targets"), ("subs-15k", "--big-targets")):
        assert {r["target"] for r in runs if r["scenario"] == scenario} == set(
            TARGETS[option].split(",")), scenario
    for r in runs:
        assert not r.get("error"), r
        assert r["loss"] == 0, r
        assert r["connected"] == r["subs"], r
        assert r["reorder"] == 0 and r["gaps"] == 0, r
        if r["scenario"] in ("fanout", "latency", "scale", "subs-15k"):
            assert r["sent"] > 0 and r["deliveries"] == r["sent"] * r["subs"], r
            assert r["closed"] == 0, r
        if r["scenario"] in ("tunnel", "tunnel-open"):
            assert r["bytes"] == r["source_bytes"] > 0 and r["corrupt"] == 0, r
            assert r["closed"] == 0, r
        if r["scenario"] == "blast":
            assert r["sent"] > 0 and r["deliveries"] == r["sent"] * r["subs"], r
            assert (r.get("blast_bytes", 0) > 0) == (r["n"] == 1), r
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Fan-out" in md and "sphincter" in md and "asyncio" in md
    assert "## Open-loop tunnel" in md and "## Blast next door" in md
