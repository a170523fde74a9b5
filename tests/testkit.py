"""Test helpers with no gevent dependency, shared by conftest.py and the stand-alone helpers
(tests/release_helpers.py also runs as a script inside a container's network namespace)."""
import os
import shutil
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


#: Every program a test runs, and the Debian package that ships it. Tests ask for a program
#: with require_program(); tests/unit/test_deps_declared.py checks that every program the tests name
#: is here and that its package is in scripts/apt-deps.d/*.txt (which `make test` installs).
PROGRAMS = {
    "chromium": "chromium",
    "chroot": "coreutils",
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "gcc": "gcc",
    "git": "git",
    "groff": "groff-base",
    "gzip": "gzip",
    "lintian": "lintian",
    "nginx": "nginx",
    "nsenter": "util-linux",
    "openssl": "openssl",
    "podman": "podman",
    "python3": "python3-minimal",
    "readelf": "binutils",
    "redis-server": "redis-server",
    "rpm": "rpm",
    "rpmbuild": "rpm",
    "rpmlint": "rpmlint",
    "runc": "runc",
    "redis-sentinel": "redis-sentinel",
    "redis-cli": "redis-tools",
    "sh": "dash",
    "ss": "iproute2",
    "scp": "openssh-client",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "sshd": "openssh-server",
    "shellcheck": "shellcheck",
    "skopeo": "skopeo",
    "systemd-analyze": "systemd",
    "systemd-nspawn": "systemd-container",
    "tar": "tar",
    "tinyproxy": "tinyproxy-bin",
    "unshare": "util-linux",
    "Xtigervnc": "tigervnc-standalone-server",
    "xsetroot": "x11-xserver-utils",
}
#: Files a test needs that are not programs, and the Debian package that ships each.
FILES = {
    "/usr/lib/nginx/modules/ngx_stream_module.so": "libnginx-mod-stream",
    "/usr/share/novnc/vnc_lite.html": "novnc",
}
#: Packages every Debian system has (Essential: yes): apt-deps.d need not list them.
ESSENTIAL = ("coreutils", "dash", "dpkg")


def require_program(name, path=None):
    """Path of program *name* (*path*: where the caller found it, when not on PATH), or skip
    naming its Debian package (fail under CI=true). A program missing from PROGRAMS is a
    KeyError: declare it (and its package in scripts/apt-deps.d/) first."""
    package = PROGRAMS[name]
    path = path or shutil.which(name)
    require(name, path is not None,
            "apt-get install %s (scripts/apt-deps.d/, installed by `make test` as root)" % package)
    return path


def require_file(path, what):
    """*path* (a file from a Debian package, see FILES), or skip (fail under CI=true)."""
    require(what, os.path.exists(path), "apt-get install %s (scripts/apt-deps.d/)" % FILES[path])
    return path


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
