"""Test helpers with no gevent dependency, shared by conftest.py and the stand-alone helpers
(tests/release_helpers.py also runs as a script inside a container's network namespace)."""
import os
import subprocess

#: one timing unit, scaled on slow machines: SPHINCTER_TEST_TIME_FACTOR=3
TIME_FACTOR = float(os.environ.get("SPHINCTER_TEST_TIME_FACTOR", "1"))
IN_CI = os.environ.get("CI") == "true"


def unit(seconds=1.0):
    return seconds * TIME_FACTOR


def require(what, available, reason=""):
    """Skip when a real component is missing — but fail under CI=true, where a skip proves nothing."""
    if available:
        return
    import pytest

    msg = "%s not available%s" % (what, (": " + reason) if reason else "")
    if IN_CI:
        pytest.fail(msg + " (CI=true: a skipped real component is a failure)")
    pytest.skip(msg)


def stop_process(proc, timeout=None):
    """Terminate ``proc`` (if still running) and reap it; kill it after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=unit(10) if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
