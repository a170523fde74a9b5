"""Smoke run of the session tunnel bench (issue 20) so it cannot rot: ``bench/sessions.py`` with
tiny sizes, one round, every scenario, against Sphincter (the relay and ``connect --sessions``
as processes) and the ``direct`` ceiling; websockify is the full bench's business. Asserts every
byte arrived exactly and the results were written. No timed assertions: a bench is not a test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_bench_sessions_smoke(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "sessions.py"), "--rounds", "1",
                        "--targets", "direct,sphincter", "--mib", "2", "--opens", "10",
                        "--open-concurrency", "3", "--conc-sessions", "5", "--conc-mib", "1",
                        "--idle-sessions", "10", "--out-dir", str(tmp_path), "--docs", "",
                        "--tag", "smoke"],
                       cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=150, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    results = list(tmp_path.glob("*-smoke.json"))
    assert len(results) == 1 and list(tmp_path.glob("*-smoke.md"))
    runs = json.loads(results[0].read_text())["runs"]
    assert {(r["scenario"], r["target"]) for r in runs} == {
        ("throughput", "direct"), ("throughput", "sphincter"), ("open", "sphincter"),
        ("concurrent", "sphincter"), ("idle", "sphincter")}
    for r in runs:
        assert r["exact"] and not r.get("errors") and "error" not in r, r
    idle = [r for r in runs if r["scenario"] == "idle"][0]
    assert idle["sessions"] == 10, idle
