"""The short chaos soak of a relay on Redis with Sentinel (issue 22): bench/soak_cluster.py for
SOAK_SECONDS (default 60) with a fault every 8-12 s, so each kind (node SIGKILL and restart, node
SIGSTOP beyond its lease, Redis primary killed: failover, a node's Redis link cut at the proxy)
happens at least once. ``make soak-cluster`` runs the 10-minute version (3 nodes, 20 rooms, 500
subscribers, a fault every 20-40 s).

Passes when no subscriber saw a silent gap or a duplicate, every fault was recovered from, and
every room is alive at the end. Real redis-server and redis-sentinel (missing: skipped, or failed
under CI=true).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from testkit import require_program

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
ROOT = os.path.dirname(HERE)
SECONDS = int(os.environ.get("SOAK_SECONDS", "60"))

pytestmark = pytest.mark.slow


@pytest.mark.timeout(SECONDS + 240)
def test_soak_cluster_short():
    require_program("redis-server", shutil.which("redis-server"))
    require_program("redis-sentinel", shutil.which("redis-sentinel"))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "soak_cluster.py"),
                        "--seconds", str(SECONDS), "--rooms", "10", "--subscribers", "150",
                        "--fault-min", "8", "--fault-max", "12", "--json"],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=SECONDS + 200)
    assert p.stdout, p.stderr[-3000:]
    result = json.loads(p.stdout)
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "soak-cluster-short.json"), "w") as f:
        json.dump(result, f, indent=1)
    assert result["silent_gaps"] == 0 and result["duplicates"] == 0, result
    assert sum(result["faults"].values()) >= 4, result["faults"]
    assert all(r["recovered"] == r["count"] for r in result["recovery"].values()), result["recovery"]
    assert result["rooms_alive"] == result["rooms"], result
    assert result["messages_checked"] > 0 and result["ok"], result
