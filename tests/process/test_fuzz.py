"""A bounded atheris run of tests/fuzz_wsproto.py (the frame parser).

CI runs SPHINCTER_FUZZ_SECONDS (default 45) seconds; ``make fuzz`` runs longer.
A crash fails the test and leaves its input in build/fuzz/ for reproduction.
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
ROOT = os.path.dirname(HERE)
SECONDS = int(os.environ.get("SPHINCTER_FUZZ_SECONDS", "45"))


@pytest.mark.timeout(SECONDS + 120)
def test_fuzz_frame_parser_bounded():
    try:
        import atheris  # noqa: F401
    except ImportError as exc:
        msg = "atheris not installed (requirements-dev.txt): %s" % exc
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    workdir = os.path.join(ROOT, "build", "fuzz")
    os.makedirs(workdir, exist_ok=True)
    p = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_wsproto.py"),
                        "-max_total_time=%d" % SECONDS, "-rss_limit_mb=2048",
                        "-print_final_stats=1"],
                       cwd=workdir, capture_output=True, text=True, timeout=SECONDS + 100)
    tail = "\n".join(p.stderr.splitlines()[-25:])
    print(tail)
    assert p.returncode == 0, tail
    assert "Done" in p.stderr
