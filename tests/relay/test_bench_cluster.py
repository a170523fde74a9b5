"""Smoke run of the cluster bench (issue 13) so it cannot rot: bench/cluster.py --smoke, one round
of every workload, one process and two Redis nodes. Asserts every subscriber got every message on
both nodes and that the results were written. No timed assertions: a benchmark is not a test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import require_program

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_cluster_smoke(tmp_path):
    require_program("gcc")
    require_program("redis-server")
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "cluster.py"), "--smoke",
                        "--rounds", "1", "--configs", "single,two-nodes",
                        "--out-dir", str(tmp_path), "--tag", "smoke"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads(next(tmp_path.glob("*-smoke.json")).read_text())
    runs = data["runs"]
    assert {(r["workload"], r["config"]) for r in runs} == {
        (w, c) for w in ("fanout", "cpu", "paced", "hop") for c in ("single", "two-nodes")}
    for r in runs:
        assert not r.get("error") and r["valid"], r
        assert r["deliveries"] == r["sent"] * r["subs"] > 0, r
        if r["config"] == "two-nodes":               # half of them through Redis
            assert r["deliveries_n1"] == r["deliveries_n2"] > 0, r
    assert next(tmp_path.glob("*-smoke.md")).read_text().startswith("# Cluster bench")
