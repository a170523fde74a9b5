"""The short soak (CI): bench/soak.py for SPHINCTER_SOAK_SECONDS (default 45).

Steady load with subscriber and source churn against a real server process;
passes when no healthy subscriber lost or reordered a line, RSS growth after
warm-up is bounded and the fd count is back to idle.  ``make soak`` runs the
10-minute version.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
ROOT = os.path.dirname(HERE)
SECONDS = int(os.environ.get("SPHINCTER_SOAK_SECONDS", "45"))


@pytest.mark.timeout(SECONDS + 120)
def test_soak_short():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "soak.py"),
                        "--seconds", str(SECONDS), "--warmup", str(min(15, SECONDS // 3)),
                        "--source-churn", "5", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 100)
    assert p.stdout, p.stderr[-3000:]
    result = json.loads(p.stdout)
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "soak-short.json"), "w") as f:
        json.dump(result, f, indent=1)
    assert result["lost"] == 0 and result["reordered"] == 0, result
    assert result["n_errors"] == 0, result["errors"]
    assert result["healthy_bad_close_codes"] == [], result
    assert result["rss_growth_kib"] <= result["rss_growth_allowed_kib"], result
    assert result["fds_end"] <= result["fds_idle"], result
    assert result["lines_received_healthy"] > 0 and result["ok"], result
