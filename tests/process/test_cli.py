"""The real process: ``python sphincter.py ...`` — exit codes, one-line errors, signals."""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
import websocket

from conftest import recv_close, unit, wait_for
from testkit import require_program
from sphincter_lib import __version__
from sphincter_lib.relay import config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


@pytest.mark.parametrize("command", [[], ["connect"]], ids=["relay", "connect"])
@pytest.mark.parametrize("flag", ["--version", "--help", "-h", "--vers"])
@pytest.mark.parametrize("setup", ["bad env", "bad config file", "missing config file"])
def test_help_and_version_never_read_the_configuration(tmp_path, command, flag, setup):
    """A bad SPHINCTER_* value or config file stops a run, never --help or --version."""
    conf = tmp_path / "bad.conf"
    conf.write_text("tcp-port = abc\nno-such-option = 1\n")
    args, env = list(command), {}
    if setup == "bad env":
        env = {"SPHINCTER_TCP_PORT": "abc", "SPHINCTER_CONNECT_RETRY_MIN": "soon"}
    else:
        path = str(conf) if setup == "bad config file" else str(tmp_path / "missing.conf")
        env = {"SPHINCTER_CONFIG": path, "SPHINCTER_CONNECT_CONFIG": path}
        args += ["-c", path]
    r = run(*(args + [flag]), env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    if flag.startswith("--v"):
        assert r.stdout == "sphincter %s\n" % __version__
    else:
        assert r.stdout.startswith("usage: sphincter" + (" connect" if command else ""))


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


# --- --check-config: validate everything, bind nothing (like nginx -t) ----------------------

def check_config(*args, env=None):
    r = run("--check-config", *args, env=env)
    assert "Traceback" not in r.stderr
    return r


def test_check_config_ok_binds_nothing(tmp_path):
    from hardening_util import make_cert

    cert, key = make_cert(str(tmp_path))
    tokens = tmp_path / "tokens"
    tokens.write_text("# sources\ns3cret-token\n")
    conf = tmp_path / "sphincter.conf"
    with open(os.path.join(ROOT, "conf", "sphincter.conf")) as f:
        conf.write_text(f.read() + "\ntls-cert = %s\ntls-key = %s\nsource-tokens = @%s\n"
                        % (cert, key, tokens))
    with socket.socket() as busy:   # the configured port is taken: a real start would fail
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = check_config("-c", str(conf), *LOCAL, "--tcp-port", str(port),
                         env={"SPHINCTER_WS_PORT": str(port)})
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith("sphincter: configuration OK") and len(r.stdout.splitlines()) == 1
    assert "127.0.0.1:%d" % port in r.stdout and str(conf) in r.stdout


def test_check_config_in_help():
    assert "--check-config" in run("--help").stdout


@pytest.fixture
def bad_config(tmp_path):
    """name -> (argv, needle): a bad configuration of each kind, and what the error names."""
    from hardening_util import make_cert

    cert, key = make_cert(str(tmp_path))
    (tmp_path / "other").mkdir()
    _, other_key = make_cert(str(tmp_path / "other"), cn="other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem file\n")
    conf_bad_port = tmp_path / "bad-port.conf"
    conf_bad_port.write_text("tcp-port = 90000\n")
    conf_unknown = tmp_path / "unknown-key.conf"
    conf_unknown.write_text("tcp-prot = 9000\n")
    return {
        "port in the config file": (["-c", str(conf_bad_port)], "--tcp-port"),
        "unknown config key": (["-c", str(conf_unknown)], "tcp-prot"),
        "port syntax": (["--ws-port", "80x"], "--ws-port"),
        "missing certificate": (["--tls-cert", str(tmp_path / "none.pem"), "--tls-key", key],
                                "--tls-cert"),
        "not a certificate": (["--tls-cert", str(garbage), "--tls-key", key], "--tls-cert"),
        "key of another certificate": (["--source-tls-cert", cert, "--source-tls-key", other_key],
                                       "--source-tls-cert"),
        "key without certificate": (["--tls-key", key], "--tls-key"),
        "token file missing": (["--source-tokens", "@" + str(tmp_path / "no-tokens")],
                               "--source-tokens"),
        "host that does not resolve": (["--ws-host", "no-such-host.invalid"], "--ws-host"),
        "config file missing": (["-c", str(tmp_path / "absent.conf")], "absent.conf"),
    }


def test_check_config_errors_exit_2_with_one_line(bad_config):
    for what, (args, needle) in sorted(bad_config.items()):
        r = check_config(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("sphincter: error:") and needle in lines[0], \
            (what, r.stderr)
        assert r.stdout == "", what


def stage_release(tmp_path, binary=None):
    """A release directory as the tarball unpacks (install.sh, env file, units), whose
    ``sphincter`` is a shell script: by default this checkout's sphincter.py."""
    rel = tmp_path / "release"
    rel.mkdir(parents=True)
    for name in ("install.sh", os.path.join("conf", "sphincter.env"),
                 os.path.join("conf", "sphincter.service"), os.path.join("conf", "sphincter@.service")):
        with open(os.path.join(ROOT, name), "rb") as f:
            (rel / os.path.basename(name)).write_bytes(f.read())
    (rel / "sphincter").write_text(binary or "#!/bin/sh\nexec %s %s \"$@\"\n" % (sys.executable, ENTRY))
    (rel / "sphincter").chmod(0o755)
    return rel


def test_install_sh_checks_the_settings_before_touching_anything(tmp_path):
    """install.sh runs the new binary's --check-config on the settings first (staged install,
    DESTDIR; the release tier does the same under systemd with a running service)."""
    rel = stage_release(tmp_path)
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPHINCTER_")}
    # the caller's environment is not the service's: this does not leak into the check
    env.update(DESTDIR=str(root), SPHINCTER_WS_PORT="8099")

    def install():
        return subprocess.run(["sh", str(rel / "install.sh")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, env=env,
                              timeout=unit(60))

    p = install()
    assert p.returncode == 0 and "WebSockets on 0.0.0.0:8080" in p.stdout, p.stdout + p.stderr
    conf = root / "etc" / "default" / "sphincter"
    binary = root / "usr" / "local" / "bin" / "sphincter"
    # the admin's edit, in systemd's EnvironmentFile= syntax (quotes, spaces around '=')
    conf.write_text(conf.read_text() + 'SPHINCTER_WS_PORT = "8081"\n'
                    "SPHINCTER_ADMIN_TOKEN='0123456789abcdef0123'\n")
    binary.unlink()
    p = install()
    assert p.returncode == 0 and "WebSockets on 0.0.0.0:8081" in p.stdout, p.stdout + p.stderr
    assert binary.exists()
    # a bad edit: refused with the one-line reason, and nothing is touched
    conf.write_text(conf.read_text() + "SPHINCTER_WS_PORT=99999\n")
    edited = conf.read_text()
    binary.unlink()
    p = install()
    assert p.returncode != 0, p.stdout + p.stderr
    assert "sphincter: error: argument --ws-port: invalid port '99999'" in p.stderr
    assert "nothing was installed or restarted" in p.stderr and "Traceback" not in p.stderr
    assert not binary.exists() and conf.read_text() == edited


def test_readme_dist_names_the_checks_install_sh_runs():
    """The release's README (packaging/README.dist) says what install.sh checks before it
    installs or restarts anything."""
    with open(os.path.join(ROOT, "install.sh")) as f:
        install = f.read()
    with open(os.path.join(ROOT, "packaging", "README.dist")) as f:
        dist = " ".join(f.read().split())
    for check in ("sphincter --version", "sphincter --check-config", "libz.so.1",
                  "apt-get install zlib1g", "dnf install zlib"):
        assert check in install.replace('"$here/sphincter"', "sphincter"), check
        assert check in dist, check
    assert "nothing is installed and the running service is left alone" in dist


#: what glibc's dynamic loader prints when a program needs a library the host lacks
LOADER_NO_LIBZ = ("%s: error while loading shared libraries: libz.so.1: cannot open shared object "
                  "file: No such file or directory")


def install_sh(rel, root, prefix=()):
    """``sh install.sh`` of the staged release ``rel`` into DESTDIR ``root`` (after ``prefix``)."""
    return subprocess.run(list(prefix) + ["sh", str(rel / "install.sh")], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          env=dict(os.environ, DESTDIR=str(root)), timeout=unit(30))


def install_sh_libz_message(p):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stdout + p.stderr
    return lines[0]


def test_install_sh_names_a_missing_libz_and_how_to_install_it(tmp_path):
    """The release binary's bootloader links the host's libz.so.1: where it is missing,
    install.sh says so in one line with the package to install, and touches nothing."""
    rel = stage_release(tmp_path, '#!/bin/sh\necho "%s" >&2\nexit 127\n' % (LOADER_NO_LIBZ % "$0"))
    root = tmp_path / "root"
    p = install_sh(rel, root)
    assert install_sh_libz_message(p) == (
        "install.sh: error: this machine lacks libz.so.1 (zlib), which the sphincter binary needs: "
        "install it (Debian/Ubuntu: apt-get install zlib1g; RHEL/Fedora: dnf install zlib) and run "
        "install.sh again")
    assert not root.exists()
    # another loader failure that names libz (e.g. a noexec /tmp for the unpacked copy) is not
    # a missing zlib: the loader's own words
    other = "$0: error while loading shared libraries: libz.so.1: failed to map segment from shared object"
    rel = stage_release(tmp_path / "other", "#!/bin/sh\necho \"%s\" >&2\nexit 127\n" % other)
    p = install_sh(rel, root)
    assert "does not run on this machine" in p.stderr and "failed to map segment" in p.stderr
    assert "zlib1g" not in p.stderr and not root.exists()


def _libz_directory():
    """The directory of the libz.so.1 this process mapped, or None."""
    import zlib  # noqa: F401  (maps libz.so.1 unless zlib is linked in statically)
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(None, 5)[-1].strip()
            if "/libz.so" in path:
                return os.path.dirname(os.path.realpath(path))
    return None


def test_install_sh_libz_check_against_the_real_loader(tmp_path):
    """The same with the host's dynamic loader: libz.so.1 hidden in a private mount namespace
    (unshare); the binary is an ELF object that needs it: Python's zlib module run by ld.so,
    or Python itself where zlib is built in. Skipped where user namespaces or libz.so.1 are
    not available."""
    import zlib
    libdir, ldso = _libz_directory(), glob.glob("/lib64/ld-linux-x86-64.so.2")
    if getattr(zlib, "__file__", None):
        needs_libz = "%s %s" % (ldso[0], zlib.__file__) if ldso else None
    else:
        needs_libz = sys.executable              # zlib built in: the interpreter links libz
    unshare = require_program("unshare")
    if not (libdir and needs_libz):
        pytest.skip("needs libz.so.1 as a shared library and ld-linux-x86-64.so.2")
    if subprocess.run([unshare, "-rm", "true"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode != 0:
        pytest.skip("unshare -rm is not permitted here")
    # The directory of libz, seen again without it: symlinks to its other entries through a
    # bind mount of the original, then mounted over it (inside the namespace only).
    orig, shadow = tmp_path / "orig", tmp_path / "shadow"
    orig.mkdir()
    shadow.mkdir()
    for name in os.listdir(libdir):
        if not name.startswith("libz.so"):
            os.symlink(str(orig / name), str(shadow / name))
    hide = 'mount --bind "$1" "$2" && mount --bind "$3" "$1" && shift 3 && exec "$@"'
    rel = stage_release(tmp_path, "#!/bin/sh\nexec %s \"$@\"\n" % needs_libz)
    root = tmp_path / "root"
    p = install_sh(rel, root, [unshare, "-rm", "sh", "-c", hide, "hide", libdir, str(orig), str(shadow)])
    assert "this machine lacks libz.so.1 (zlib)" in install_sh_libz_message(p)
    assert not root.exists()
