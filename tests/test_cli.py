"""The real process: ``python sphincter.py ...`` — exit codes, one-line errors, signals."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
import websocket

from conftest import recv_close, unit, wait_for
from sphincter_lib import __version__, config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = os.path.join(ROOT, "sphincter.py")
LOCAL = ["--tcp-host", "127.0.0.1", "--ws-host", "127.0.0.1"]


def run(*args, env=None, timeout=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SPHINCTER_")}
    e.update(env or {})
    return subprocess.run([sys.executable, ENTRY] + list(args), capture_output=True, text=True,
                          env=e, timeout=timeout or unit(30))


@pytest.mark.parametrize("args,needle", [
    (["--tcp-port", "abc"], "--tcp-port"),
    (["--ws-port", "70000"], "--ws-port"),
    (["--max-message-bytes", "-1"], "--max-message-bytes"),
    (["--framing", "json"], "--framing"),
    (["--subscriber-buffer-bytes", "1KiB"], "--subscriber-buffer-bytes"),
    (["-c", "/nonexistent/sphincter.conf"], "/nonexistent/sphincter.conf"),
])
def test_config_errors_exit_2_with_one_line(args, needle):
    r = run(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("sphincter: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_env_errors_name_the_option():
    r = run(env={"SPHINCTER_MAX_ROOMS": "lots"})
    assert r.returncode == 2 and "--max-rooms" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_port_in_use_exits_nonzero_with_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run(*LOCAL, "--tcp-port", str(port), "--ws-port", "0")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:%d" % port in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    for opt in config.OPTIONS:
        assert opt.flag in flat and opt.env in flat
    r = run("--version")
    assert r.returncode == 0 and __version__ in r.stdout


class Server:
    def __init__(self, *args, env=None):
        e = {k: v for k, v in os.environ.items() if not k.startswith("SPHINCTER_")}
        e.update(env or {})
        self.proc = subprocess.Popen([sys.executable, ENTRY] + LOCAL + list(args),
                                     stderr=subprocess.PIPE, text=True, env=e)
        self.log = []
        line = ""
        while "listening" not in line:
            line = self.proc.stderr.readline()
            assert line, "server exited: %s" % "".join(self.log)
            self.log.append(line)
        m = re.search(r"tcp=([\d.]+):(\d+) ws=([\d.]+):(\d+)", line)
        self.tcp = (m.group(1), int(m.group(2)))
        self.ws = (m.group(3), int(m.group(4)))

    def rest_of_log(self):
        return "".join(self.log) + self.proc.stderr.read()


def health(srv):
    with urllib.request.urlopen("http://%s:%d/healthz" % srv.ws, timeout=unit(5)) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully(sig):
    srv = Server("--tcp-port", "0", "--ws-port", "0")
    try:
        src = socket.create_connection(srv.tcp, timeout=unit(5))
        f = src.makefile("rb")
        code = f.readline().split()[1].decode()
        ws = websocket.create_connection("ws://%s:%d/ws?room=%s" % (srv.ws + (code,)), timeout=unit(5))
        wait_for(lambda: health(srv)["subscribers"] == 1, what="subscriber joined")
        src.sendall(b"one\n")
        assert ws.recv() == "one"
        srv.proc.send_signal(sig)
        assert recv_close(ws) == (1001, "server shutting down")
        assert f.readline() == b"ERROR server shutting down\n"
        assert srv.proc.wait(timeout=unit(15)) == 0
        log = srv.rest_of_log()
        assert "room %s opened by" % code in log
        assert re.search(r"room %s closed: .* messages=1 bytes=3 peak_subscribers=1" % code, log), log
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


def test_runs_from_the_example_config_with_env_override(tmp_path):
    srv = Server("-c", os.path.join(ROOT, "conf", "sphincter.conf"), "--tcp-port", "0",
                 env={"SPHINCTER_WS_PORT": "0", "SPHINCTER_FRAMING": "raw"})
    try:
        src = socket.create_connection(srv.tcp, timeout=unit(5))
        code = src.makefile("rb").readline().split()[1].decode()
        ws = websocket.create_connection("ws://%s:%d/ws?room=%s" % (srv.ws + (code,)), timeout=unit(5))
        wait_for(lambda: health(srv)["subscribers"] == 1, what="subscriber joined")
        src.sendall(b"\x00raw\n")
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY and data == b"\x00raw\n"
        srv.proc.terminate()
        assert recv_close(ws)[0] == 1001
        assert srv.proc.wait(timeout=unit(15)) == 0
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
