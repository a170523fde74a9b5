"""The case ``sphincter pipe`` is for, with clients nobody here wrote: OpenSSH's ``ssh`` with
``-o ProxyCommand='sphincter pipe URL'`` through the real relay (raw, write-back) to a real
``sshd`` that ``sphincter connect --local-connect on-write`` bridges into the room."""

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

pytestmark = pytest.mark.timeout(120)


class Sshd:
    """``sshd -D`` on a free loopback port with its own host key and one authorized key."""

    def __init__(self, tmp_path):
        sshd, keygen = require_program("sshd"), require_program("ssh-keygen")
        self.dir = tmp_path
        for name in ("host", "client"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)],
                           check=True, timeout=unit(30))
        (tmp_path / "authorized_keys").write_text((tmp_path / "client.pub").read_text())
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (tmp_path / "sshd_config").write_text("\n".join([
            "Port %d" % self.port, "ListenAddress 127.0.0.1", "HostKey %s" % (tmp_path / "host"),
            "AuthorizedKeysFile %s" % (tmp_path / "authorized_keys"), "StrictModes no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "PermitRootLogin prohibit-password", "PidFile none", "LogLevel VERBOSE"]) + "\n")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)    # its privilege separation dir
        self.log_path = str(tmp_path / "sshd.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(tmp_path / "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        stop_process(self.proc)
        self._log.close()


def test_ssh_through_pipe_and_the_relay(relays, tmp_path):
    ssh = require_program("ssh")
    relay = relays()
    sshd = Sshd(tmp_path)
    connect = subprocess.Popen(
        [sys.executable, ENTRY, "connect", "--relay", "%s:%d" % relay.tcp, "--from",
         "tcp:127.0.0.1:%d" % sshd.port, "--framing", "raw", "--local-connect", "on-write",
         "--stats-interval", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env())
    try:
        with gevent.Timeout(unit(20), AssertionError("no ROOM/WRITE lines from connect")):
            code = connect.stdout.readline().decode().split()[1]
            key = connect.stdout.readline().decode().split()[1]
        url = "ws://%s:%d/ws?room=%s&key=%s" % (relay.ws + (code, key))
        proxy = "%s %s pipe %s" % (shlex.quote(sys.executable), shlex.quote(ENTRY), shlex.quote(url))
        data = os.urandom(3 << 20)
        p = subprocess.run(
            [ssh, "-F", "/dev/null", "-i", str(tmp_path / "client"), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ProxyCommand=" + proxy, "-o", "LogLevel=ERROR", "-p", str(sshd.port),
             "%s@relay-tunnel" % os.environ.get("USER", "root"), "sha256sum"],
            input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
            timeout=unit(60))
        assert p.returncode == 0, (p.stderr.decode(), sshd.log())
        assert p.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
        assert b"Traceback" not in p.stderr, p.stderr
    finally:
        stop_process(connect)
        sshd.stop()
