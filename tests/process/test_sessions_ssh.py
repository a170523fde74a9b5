"""Session rooms (issue 20) with clients nobody here wrote: OpenSSH's ``ssh`` and ``scp -O`` (the scp protocol: the test sshd has no sftp subsystem) with
``ProxyCommand='sphincter pipe URL'`` through the real relay (``--sessions on``) to a real
``sshd`` behind ``sphincter connect --sessions``: sshd speaks first, every ssh/scp run is its own
session (its own connection to sshd)."""

import hashlib
import os
import shlex
import subprocess
import sys

import gevent
import pytest

from conftest import unit
from testkit import require_program, stop_process
from test_pipe import ENTRY, RelayProcess, clean_env, relays  # noqa: F401  (the fixture)
from test_pipe_ssh import Sshd

pytestmark = pytest.mark.timeout(180)


def test_ssh_and_scp_through_a_session_room(relays, tmp_path):
    ssh, scp = require_program("ssh"), require_program("scp")
    relay = relays("--sessions", "on")
    sshd = Sshd(tmp_path)
    connect = subprocess.Popen(
        [sys.executable, ENTRY, "connect", "--relay", "%s:%d" % relay.tcp, "--from",
         "tcp:127.0.0.1:%d" % sshd.port, "--sessions", "--stats-interval", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env())
    try:
        with gevent.Timeout(unit(20), AssertionError("no ROOM/WRITE lines from connect")):
            code = connect.stdout.readline().decode().split()[1]
            key = connect.stdout.readline().decode().split()[1]
        url = "ws://%s:%d/ws?room=%s&key=%s" % (relay.ws + (code, key))
        proxy = "%s %s pipe %s" % (shlex.quote(sys.executable), shlex.quote(ENTRY), shlex.quote(url))
        opts = ["-F", "/dev/null", "-i", str(tmp_path / "client"), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ProxyCommand=" + proxy, "-o", "LogLevel=ERROR"]
        user = os.environ.get("USER", "root")

        def run(args, **kw):
            p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
                               timeout=unit(90), **kw)
            assert p.returncode == 0, (p.stderr.decode(), sshd.log(), relay.log()[-3000:])
            return p.stdout

        out = run([ssh] + opts + ["-p", str(sshd.port), "%s@relay-tunnel" % user, "echo", "hello there"])
        assert out == b"hello there\n"
        up = tmp_path / "up.bin"
        up.write_bytes(os.urandom(10 << 20))
        remote = tmp_path / "remote.bin"
        back = tmp_path / "back.bin"
        run([scp, "-O"] + opts + ["-P", str(sshd.port), str(up), "%s@relay-tunnel:%s" % (user, remote)])
        run([scp, "-O"] + opts + ["-P", str(sshd.port), "%s@relay-tunnel:%s" % (user, remote), str(back)])
        digest = hashlib.sha256(up.read_bytes()).hexdigest()
        assert hashlib.sha256(remote.read_bytes()).hexdigest() == digest
        assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
        assert relay.log().count("session %s." % code) >= 3       # one log line per session
    finally:
        stop_process(connect)
        sshd.stop()
