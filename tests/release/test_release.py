"""Release tier (slow): the tarball, its binary, install.sh/uninstall.sh, the systemd unit under
a real systemd (systemd-nspawn), and nginx in front for wss://. Real programs throughout.

Needs root, debootstrap, systemd-nspawn, nginx, openssl, shellcheck, systemd-analyze
(scripts/apt-deps.d/release.txt). Outside CI a missing piece skips with the reason; under
CI=true it fails. The Debian 11 roots are cached in build/roots (first build ~4-5 min: the
roots, the zig toolchain from PyPI, libc++ and greenlet compiled by it; then ~1 min).

The binary targets glibc 2.17. The oldest root this machine can build is Debian 11 (glibc
2.31; Debian's mirror no longer serves 10 or 9), so the floor is checked from the symbol
versions of the binary and of every library in its archive, and at run time from what the
dynamic linker really binds (LD_DEBUG); the systemd cycle runs in the bullseye root.
"""
import hashlib
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tarfile

import pytest

from release_helpers import (NAME, ROOT, TARBALL, Container, Server, build, elfvers,
                             onefile_members, package_modules, pyz_modules, relay_line,
                             release_tarball, require, require_root, require_tools, run, unit,
                             wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="session")
def dist(tmp_path_factory):
    """The tarball's path, built once per session (release_helpers.release_tarball); the .deb
    is beside it."""
    return release_tarball(tmp_path_factory)


#: the highest glibc symbol version the binary and its bundled libraries may need
GLIBC_MAX = (2, 17)
EXPOSURE_MAX = 2.0
SHIPPED = {  # file in the archive -> mode
    "sphincter": 0o755, "install.sh": 0o755, "uninstall.sh": 0o755, "sphincter.env": 0o644,
    "sphincter.service": 0o644, "sphincter@.service": 0o644, "nginx-sphincter.conf": 0o644,
    "nginx-cluster.conf": 0o644, "nginx-cluster-stream.conf": 0o644, "README": 0o644, "GLIBC_FLOOR": 0o644,
}
INSTALLED = {  # file under DESTDIR -> mode
    "usr/local/bin/sphincter": 0o755,
    "etc/default/sphincter": 0o600,  # may hold SPHINCTER_ADMIN_TOKEN
    "etc/systemd/system/sphincter.service": 0o644,
    "etc/systemd/system/sphincter@.service": 0o644,
}
HELP_SKIP = {"help", "version", "config", "check-config"}


@pytest.fixture(scope="module")
def unpacked(dist, tmp_path_factory):
    """The tarball unpacked somewhere else, as a user would."""
    where = tmp_path_factory.mktemp("unpacked")
    run(["tar", "-xzf", dist, "-C", str(where)])
    return os.path.join(str(where), NAME)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def long_options(help_text):
    return sorted(set(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]+)", help_text)) - HELP_SKIP)


def normalize_help(text):
    """--help of the binary (CPython 3.9) vs. the script (any CPython): same content; the
    program name, line wrapping and argparse's 3.10 section title may differ."""
    text = text.replace("sphincter.py", "sphincter").replace("optional arguments:", "options:")
    return re.sub(r"\s+", " ", text).strip()


# --- the archive and its binary ------------------------------------------------------------

@pytest.mark.timeout(900)
def test_archive_contents_and_modes(dist):
    with tarfile.open(dist) as tar:
        members = {m.name: m for m in tar.getmembers()}
    files = {name[len(NAME) + 1:]: m for name, m in members.items() if m.isfile()}
    assert set(files) == set(SHIPPED)
    for name, mode in SHIPPED.items():
        assert stat.S_IMODE(files[name].mode) == mode, name
        assert files[name].uid == 0 and files[name].gid == 0, name
    assert all(name == NAME or name.startswith(NAME + "/") for name in members)


@pytest.mark.timeout(900)
def test_two_builds_give_the_same_bytes(dist, tmp_path):
    again, _ = build(tmp_path)
    assert sha256(again) == sha256(dist), "the build is not reproducible"


def version_tuple(text):
    return (tuple(int(p) for p in text.split(".")) + (0, 0))[:3]


def bundled_elf(binary):
    """{name: ELF bytes} for the executable and every shared object in its archive."""
    with open(binary, "rb") as f:
        found = {"(executable)": f.read()}
    found.update((name, data) for name, data in onefile_members(binary).items()
                 if data[:4] == b"\x7fELF")
    return found


def test_binary_holds_every_module(unpacked):
    """A module the build left out (a subpackage not staged, an import PyInstaller did not see)
    fails only when its code runs: every module of the tree is in the binary."""
    bundled = pyz_modules(os.path.join(unpacked, "sphincter"))
    assert "gevent" in bundled and "sphincter_lib.__main__" in bundled, sorted(bundled)[:40]
    missing = sorted(m for m in package_modules() if m not in bundled and m + ".__init__" not in bundled)
    assert not missing, "modules missing from the binary: %s" % missing


def test_glibc_floor_is_recorded_and_low(unpacked):
    with open(os.path.join(unpacked, "GLIBC_FLOOR")) as f:
        floor = f.read().strip()
    assert version_tuple(floor)[:2] <= GLIBC_MAX, floor
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "glibc %s" % floor in f.read(), "README.md should state the floor"
    # The recorded floor is the real one, read here independently of the build: the highest
    # non-weak GLIBC_ version needed by the executable or any library it bundles.
    floors = {name: elfvers.glibc_floor(data)
              for name, data in bundled_elf(os.path.join(unpacked, "sphincter")).items()}
    assert len(floors) > 20 and floors["(executable)"], sorted(floors)
    assert any(name.startswith("libpython3") for name in floors), sorted(floors)
    too_new = {n: f for n, f in floors.items() if f and f[:2] > GLIBC_MAX}
    assert not too_new, too_new
    assert max(f for f in floors.values() if f) == version_tuple(floor)
    # no C++ runtime of the build root (libstdc++.so.6 needs GLIBC_2.18): greenlet has libc++ inside
    assert not [n for n in floors if n.startswith(("libstdc++", "libgcc_s"))], sorted(floors)


BINDING_RE = re.compile(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: "
                        r"normal symbol `([^']+)' \[GLIBC_([\d.]+)\]")


def test_binary_binds_nothing_newer_than_the_floor(unpacked, tmp_path):
    """At run time (startup, a relay, shutdown) every glibc symbol that the executable or a
    bundled library binds is of a version <= GLIBC_FLOOR, except weak references (which the
    library checks for NULL: on an older glibc they stay unbound)."""
    binary = os.path.join(unpacked, "sphincter")
    with open(os.path.join(unpacked, "GLIBC_FLOOR")) as f:
        floor = version_tuple(f.read().strip())
    weak = {}
    for name, data in bundled_elf(binary).items():
        _needs, symbols = elfvers.read(data)
        weak[os.path.basename(name)] = {s["name"] for s in symbols if s["undefined"] and s["weak"]}
    weak[os.path.basename(binary)] = weak.pop("(executable)")
    debug = tmp_path / "ld"
    debug.mkdir()
    env = dict(os.environ, LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(debug / "b"),
               TMPDIR=str(tmp_path))
    argv = [binary, "--tcp-host", "127.0.0.1", "--tcp-port", "0", "--ws-host", "127.0.0.1",
            "--ws-port", "0"]
    with Server(argv, tmp_path / "sphincter.log", env=env) as srv:
        relay_line("127.0.0.1", srv.tcp_port, "ws://127.0.0.1:%d/ws" % srv.ws_port)
    ours, bad = 0, []
    for path in debug.iterdir():
        for m in BINDING_RE.finditer(path.read_text(errors="replace")):
            user, _lib, symbol, version = m.groups()
            if not (user == binary or "/_MEI" in user):
                continue  # glibc's own libraries binding among themselves
            ours += 1
            if version_tuple(version) > floor and symbol not in weak.get(os.path.basename(user), ()):
                bad.append("%s: %s@GLIBC_%s" % (os.path.basename(user), symbol, version))
    assert ours > 1000, "LD_DEBUG saw only %d bindings" % ours
    assert not bad, sorted(set(bad))


@pytest.mark.timeout(900)
def test_build_fails_when_the_floor_rises(dist, tmp_path):
    """GLIBC_MAX below the real floor: the build stops and says why (the guard that keeps the
    floor from creeping up when a pin or the build root changes)."""
    _, proc = build(tmp_path, env=dict(os.environ, GLIBC_MAX="2.16"), expect_ok=False)
    assert proc.returncode != 0
    assert "error: glibc floor 2.17 is above the allowed 2.16" in proc.stderr, proc.stderr[-3000:]
    assert not os.path.exists(os.path.join(str(tmp_path), TARBALL))


def test_binary_version_and_help_match_python(unpacked):
    binary = os.path.join(unpacked, "sphincter")
    script = os.path.join(ROOT, "sphincter.py")
    v_bin = run([binary, "--version"]).stdout.strip()
    v_py = run([sys.executable, script, "--version"]).stdout.strip()
    assert v_bin == v_py and re.search(r"\d+\.\d+", v_bin)
    env = dict(os.environ, COLUMNS="100")
    h_bin = run([binary, "--help"], env=env).stdout
    h_py = run([sys.executable, script, "--help"], env=env).stdout
    assert normalize_help(h_bin) == normalize_help(h_py)


def test_binary_config_error_exits_2_like_python(unpacked):
    binary = os.path.join(unpacked, "sphincter")
    script = os.path.join(ROOT, "sphincter.py")
    env = dict(os.environ, SPHINCTER_TCP_PORT="99999")
    b = run([binary], env=env, check=False, timeout=unit(30))
    p = run([sys.executable, script], env=env, check=False, timeout=unit(30))
    assert b.returncode == p.returncode == 2
    assert len(b.stderr.strip().splitlines()) == 1, b.stderr
    assert b.stderr.replace("sphincter.py", "sphincter") == p.stderr.replace("sphincter.py", "sphincter")


def test_binary_relays_a_line(unpacked, tmp_path):
    binary = os.path.join(unpacked, "sphincter")
    argv = [binary, "--tcp-host", "127.0.0.1", "--tcp-port", "0",
            "--ws-host", "127.0.0.1", "--ws-port", "0"]
    with Server(argv, tmp_path / "sphincter.log") as srv:
        code, got = relay_line("127.0.0.1", srv.tcp_port, "ws://127.0.0.1:%d/ws" % srv.ws_port)
        # a large message (>= 64 KiB takes the server's other write path) through CPython 3.9
        _, big = relay_line("127.0.0.1", srv.tcp_port, "ws://127.0.0.1:%d/ws" % srv.ws_port,
                            text="x" * 200000)
        assert len(big) > 200000
        # the package data (viewer page) is inside the one-file binary
        import urllib.request

        with open(os.path.join(ROOT, "sphincter_lib", "static", "index.html"), "rb") as f:
            page = f.read()
        with urllib.request.urlopen("http://127.0.0.1:%d/" % srv.ws_port, timeout=unit(10)) as r:
            body = r.read()
            status = r.status
        # the same page (the server only adds ?v= tags to its asset links)
        assert status == 200 and re.sub(rb"\?v=[\w.-]+", b"", body) == page, body[:400]
        with urllib.request.urlopen("http://127.0.0.1:%d/viewer.js" % srv.ws_port, timeout=unit(10)) as r:
            assert r.status == 200
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % srv.ws_port, timeout=unit(10)) as r:
            assert r.status == 200
    assert got.startswith("hello from the source")
    assert srv.proc.returncode in (0, -15), srv.log()


def test_env_file_lists_every_option_with_its_default():
    """conf/sphincter.env is generated from --help and up to date (packaging/gen_env.py)."""
    help_text = run([sys.executable, os.path.join(ROOT, "sphincter.py"), "--help"],
                    env=dict(os.environ, COLUMNS="1000")).stdout
    with open(os.path.join(ROOT, "conf", "sphincter.env")) as f:
        env_file = f.read()
    for opt in long_options(help_text):
        var = "SPHINCTER_" + opt.upper().replace("-", "_")
        assert re.search(r"^#%s=" % var, env_file, re.M), "%s missing from sphincter.env" % var
    # Every line is a comment, blank, or KEY=VALUE (systemd's EnvironmentFile= syntax).
    for line in env_file.splitlines():
        assert not line or line.startswith("#") or re.match(r"^SPHINCTER_[A-Z_]+=", line), line
    run([sys.executable, os.path.join(ROOT, "packaging", "gen_env.py"), "--check"])


# --- scripts and unit, statically -----------------------------------------------------------

def test_shellcheck_scripts():
    require_tools("shellcheck")
    scripts = [os.path.join(ROOT, s) for s in ("install.sh", "uninstall.sh")]
    scripts += [os.path.join(ROOT, "packaging", s)
                for s in sorted(os.listdir(os.path.join(ROOT, "packaging"))) if s.endswith(".sh")]
    scripts += [os.path.join(ROOT, "packaging", "deb", s) for s in ("postinst", "prerm", "postrm")]
    proc = run(["shellcheck", "--shell=sh"] + scripts, check=False)
    assert proc.returncode == 0, proc.stdout


def test_unit_verify_is_silent_and_exposure_low(unpacked, tmp_path):
    require_tools("systemd-analyze")
    dest = tmp_path / "root"
    run(["sh", os.path.join(unpacked, "install.sh")], env=dict(os.environ, DESTDIR=str(dest)))
    unit_path = str(dest / "etc/systemd/system/sphincter.service")
    # verify resolves the unit's dependencies (sysinit.target ...) inside --root: give it
    # the host's unit files, next to the installed unit and binary.
    shutil.copytree("/usr/lib/systemd/system", str(dest / "usr/lib/systemd/system"), symlinks=True)
    # a template verifies as one of its instances (sphincter@1.service)
    for name, path in (("sphincter.service", unit_path),
                       ("sphincter@1.service", str(dest / "etc/systemd/system/sphincter@.service"))):
        v = run(["systemd-analyze", "verify", "--root=%s" % dest, "/etc/systemd/system/" + name],
                check=False)
        assert v.returncode == 0 and not (v.stdout + v.stderr).strip(), name + v.stdout + v.stderr
        s = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", path], check=False)
        m = re.search(r"Overall exposure level for sphincter@?i?\.service: (\d+\.\d+)", s.stdout)
        assert m, s.stdout + s.stderr
        print(name, "exposure", m.group(1))
        assert float(m.group(1)) <= EXPOSURE_MAX, s.stdout


# --- install.sh / uninstall.sh into a DESTDIR -----------------------------------------------

def tree(root):
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def test_destdir_install_reinstall_uninstall_purge(unpacked, tmp_path):
    dest = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(dest))
    install = ["sh", os.path.join(unpacked, "install.sh")]
    uninstall = ["sh", os.path.join(unpacked, "uninstall.sh")]

    run(install, env=env)
    assert tree(dest) == INSTALLED
    conf = dest / "etc/default/sphincter"
    with open(os.path.join(unpacked, "sphincter.env")) as f:
        assert conf.read_text() == f.read()
    assert sha256(str(dest / "usr/local/bin/sphincter")) == sha256(os.path.join(unpacked, "sphincter"))

    run(install, env=env)  # idempotent
    assert tree(dest) == INSTALLED

    conf.write_text(conf.read_text() + "SPHINCTER_TCP_PORT=9100\n")
    out = run(install, env=env).stdout
    assert "SPHINCTER_TCP_PORT=9100" in conf.read_text()
    assert "sphincter.new" in out
    assert tree(dest) == dict(INSTALLED, **{"etc/default/sphincter.new": 0o600})

    run(uninstall, env=env)
    assert tree(dest) == {"etc/default/sphincter": 0o600}
    assert "SPHINCTER_TCP_PORT=9100" in conf.read_text()
    run(uninstall, env=env)  # harmless twice
    assert tree(dest) == {"etc/default/sphincter": 0o600}
    run(uninstall + ["--purge"], env=env)
    assert tree(dest) == {}
    run(uninstall + ["--purge"], env=env)


def test_install_refuses_a_binary_that_does_not_run(unpacked, tmp_path):
    bad = tmp_path / NAME
    shutil.copytree(unpacked, str(bad))
    (bad / "sphincter").write_bytes(b"\x7fELF garbage")
    dest = tmp_path / "root"
    p = run(["sh", str(bad / "install.sh")], env=dict(os.environ, DESTDIR=str(dest)), check=False)
    assert p.returncode != 0 and "does not run" in p.stderr
    assert not dest.exists(), "install.sh touched the target before checking the binary"


# --- a real systemd: the whole operating cycle ----------------------------------------------

def base_root():
    root = os.path.join(ROOT, "build", "roots", "base")
    require("the debootstrapped bullseye root", os.path.isfile(os.path.join(root, ".done")),
            "packaging/mkroot.sh base")
    return root


@pytest.mark.timeout(900)
def test_systemd_cycle_in_nspawn(unpacked, tmp_path):
    require_root("systemd-nspawn boots a container")
    require_tools("systemd-nspawn", "nsenter")
    root = base_root()
    rel = "/opt/release/" + NAME
    with Container(root, tmp_path / "nspawn.log", binds_ro=[(unpacked, rel)]) as ct:
        assert ct.sh("command -v python3 || echo none").stdout.strip() == "none"

        def svc(*props):
            out = ct.sh("systemctl show sphincter -p " + ",".join(props)).stdout
            return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

        def listening(port):
            return re.search(r":%d\s" % port, ct.sh("ss -Htln").stdout + " ") is not None

        # --no-start: files and user, systemd untouched
        out = ct.sh("%s/install.sh --no-start" % rel, timeout=unit(120))
        assert ct.sh("systemctl is-active sphincter", check=False).stdout.strip() == "inactive"
        assert ct.sh("systemctl is-enabled sphincter", check=False).stdout.strip() == "disabled"
        ct.sh("test -x /usr/local/bin/sphincter && test -f /etc/default/sphincter && id sphincter")

        # install -> active on 9000/8080 -> relay works
        out = ct.sh("%s/install.sh" % rel, timeout=unit(120))
        assert "sphincter is running" in out.stdout, out.stdout + out.stderr
        assert "/etc/default/sphincter: sphincter: configuration OK" in out.stdout, out.stdout
        assert svc("ActiveState")["ActiveState"] == "active"
        assert ct.sh("id -u sphincter && stat -c '%a %U' /etc/default/sphincter"
                     " /usr/local/bin/sphincter /etc/systemd/system/sphincter.service").stdout.split()[1:] \
            == ["600", "root", "755", "root", "644", "root"]
        # the unit is clean for the systemd of Debian 11 (247) too
        v = ct.sh("systemd-analyze verify /etc/systemd/system/sphincter.service", check=False)
        assert v.returncode == 0 and not (v.stdout + v.stderr).strip(), v.stdout + v.stderr
        ct.relay(9000, 8080)
        user = ct.sh("ps -o user= -p $(systemctl show -p MainPID --value sphincter)").stdout.strip()
        assert user == "sphincter"
        limits = ct.sh("cat /proc/$(systemctl show -p MainPID --value sphincter)/limits").stdout
        # LimitNOFILE=262144, capped by the container's own hard limit (a sandboxed host's)
        pid1 = re.search(r"Max open files\s+\d+\s+(\d+)", ct.sh("cat /proc/1/limits").stdout)
        want = min(262144, int(pid1.group(1)))
        assert re.search(r"Max open files\s+%d\s+%d" % (want, want), limits), limits

        # edit the port in /etc/default/sphincter -> restart -> the new port
        ct.sh("echo SPHINCTER_TCP_PORT=9100 >> /etc/default/sphincter && systemctl restart sphincter")
        assert svc("ActiveState")["ActiveState"] == "active"
        ct.relay(9100, 8080)
        assert not listening(9000)
        # the stop was graceful: SIGTERM reached Python through the one-file bootloader
        journal = ct.sh("journalctl -u sphincter --no-pager -o cat").stdout
        assert "received SIGTERM, stopping" in journal and "stopped in" in journal, journal[-3000:]

        # reinstall keeps the edit (and still serves on the edited port)
        out = ct.sh("%s/install.sh" % rel, timeout=unit(120)).stdout
        assert "kept your /etc/default/sphincter" in out
        assert "SPHINCTER_TCP_PORT=9100" in ct.sh("cat /etc/default/sphincter").stdout
        ct.relay(9100, 8080)

        # kill -9 the main process -> systemd restarts it
        before = svc("MainPID", "NRestarts")
        ct.sh("kill -9 %s" % before["MainPID"])

        def restarted():
            now = svc("MainPID", "NRestarts", "ActiveState")
            return (now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])
                    and int(now["NRestarts"]) > int(before["NRestarts"]))

        wait_for(restarted, unit(30), "systemd to restart sphincter after kill -9", interval=0.2)
        ct.relay(9100, 8080)

        # a bad edit -> install.sh refuses (the new binary's --check-config, run as the service
        # user) and leaves the running service alone: the same process, still relaying
        message = ct.sh("SPHINCTER_WS_PORT=99999 /usr/local/bin/sphincter", check=False).stderr
        assert len(message.strip().splitlines()) == 1, message
        running = svc("MainPID")["MainPID"]
        ct.sh("echo SPHINCTER_WS_PORT=99999 >> /etc/default/sphincter")
        p = ct.sh("%s/install.sh" % rel, check=False, timeout=unit(120))
        assert p.returncode != 0 and message.strip() in p.stderr, p.stdout + p.stderr
        assert "nothing was installed or restarted" in p.stderr, p.stderr
        assert svc("ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": running}
        ct.relay(9100, 8080)

        # restarted by hand anyway -> the restart fails (exit 2, no restart loop), the message
        # is in the journal
        p = ct.sh("systemctl restart sphincter", check=False, timeout=unit(60))
        assert p.returncode != 0
        st = svc("ActiveState", "Result", "ExecMainStatus")
        assert st["ActiveState"] == "failed" and st["ExecMainStatus"] == "2", st
        journal = wait_for(
            lambda: message.strip() in ct.sh("journalctl -u sphincter --no-pager -o cat").stdout,
            unit(10), "the config error in the journal")

        # uninstall keeps the config and the user; twice is harmless; --purge removes them
        ct.sh("sed -i /99999/d /etc/default/sphincter")
        ct.sh("%s/uninstall.sh" % rel)
        ct.sh("%s/uninstall.sh" % rel)
        left = ct.sh("ls /usr/local/bin /etc/systemd/system /etc/default; id -u sphincter").stdout
        assert "sphincter.service" not in left and "\nsphincter\n" in "\n" + left
        assert ct.sh("systemctl is-active sphincter", check=False).stdout.strip() == "inactive"
        assert not ct.sh("test -e /usr/local/bin/sphincter", check=False).returncode == 0
        ct.sh("%s/uninstall.sh --purge" % rel)
        assert ct.sh("test -e /etc/default/sphincter", check=False).returncode != 0
        assert ct.sh("id sphincter", check=False).returncode != 0
        ct.sh("%s/uninstall.sh --purge" % rel)


# --- nginx in front: wss:// -----------------------------------------------------------------

NGINX_MAIN = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    include {prefix}/sphincter.conf;
}}
"""


def render_nginx_block(port_tls, port_ws, cert, key):
    """The shipped block with only the site-specific lines replaced (each exactly once)."""
    with open(os.path.join(ROOT, "conf", "nginx-sphincter.conf")) as f:
        text = f.read()
    subs = [
        (r"^\s*listen 443 ssl;$", "    listen 127.0.0.1:%d ssl;" % port_tls),
        (r"^\s*listen \[::\]:443 ssl;$", ""),
        (r"^\s*server 127\.0\.0\.1:8080;$", "    server 127.0.0.1:%d;" % port_ws),
        (r"^\s*ssl_certificate .*;$", "    ssl_certificate %s;" % cert),
        (r"^\s*ssl_certificate_key .*;$", "    ssl_certificate_key %s;" % key),
    ]
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n == 1, "the shipped nginx block no longer has %r" % pattern
    return text


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_nginx_wss_in_front(unpacked, tmp_path):
    require_tools("nginx", "openssl")
    import websocket

    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", cert])
    argv = [os.path.join(unpacked, "sphincter"), "--tcp-host", "127.0.0.1", "--tcp-port", "0",
            "--ws-host", "127.0.0.1", "--ws-port", "0", "--log-level", "debug"]
    with Server(argv, tmp_path / "sphincter.log") as srv:
        prefix = tmp_path / "nginx"
        (prefix / "tmp").mkdir(parents=True)
        port_tls = free_port()
        (prefix / "sphincter.conf").write_text(render_nginx_block(port_tls, srv.ws_port, cert, key))
        (prefix / "nginx.conf").write_text(NGINX_MAIN.format(prefix=prefix))
        conf = str(prefix / "nginx.conf")
        run(["nginx", "-t", "-c", conf, "-p", str(prefix)])
        nginx = subprocess.Popen(["nginx", "-c", conf, "-p", str(prefix), "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            def up():
                assert nginx.poll() is None, (prefix / "error.log").read_text()
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port_tls)) == 0

            wait_for(up, unit(20), "nginx to listen")

            def wss_from_127_0_0_2(url):
                """A wss:// client whose address (127.0.0.2) differs from nginx's (127.0.0.1),
                verifying the self-signed certificate as its own CA."""
                ctx = ssl.create_default_context(cafile=cert)
                raw = socket.socket()
                raw.settimeout(unit(15))
                raw.bind(("127.0.0.2", 0))
                raw.connect(("127.0.0.1", port_tls))
                tls = ctx.wrap_socket(raw, server_hostname="localhost")
                return websocket.create_connection(url, socket=tls, timeout=unit(15))

            code, got = relay_line("127.0.0.1", srv.tcp_port,
                                   "wss://localhost:%d/ws" % port_tls, ws_connect=wss_from_127_0_0_2)
            assert got.startswith("hello from the source")
            log = wait_for(lambda: "127.0.0.2" in srv.log() and srv.log(), unit(10),
                           "sphincter to log the forwarded client address")
            assert re.search(r"127\.0\.0\.2.*%s|%s.*127\.0\.0\.2" % (code, code), log), log[-3000:]

            # A client that is not a trusted proxy cannot forge its address with the header.
            def direct_forged(url):
                raw = socket.socket()
                raw.settimeout(unit(15))
                raw.bind(("127.0.0.3", 0))
                raw.connect(("127.0.0.1", srv.ws_port))
                return websocket.create_connection(url, socket=raw, timeout=unit(15),
                                                   header=["X-Forwarded-For: 198.51.100.7"])

            code, _ = relay_line("127.0.0.1", srv.tcp_port, "ws://127.0.0.1:%d/ws" % srv.ws_port,
                                 ws_connect=direct_forged)
            log = wait_for(lambda: "127.0.0.3" in srv.log() and srv.log(), unit(10),
                           "sphincter to log the direct client's own address")
            assert "198.51.100.7" not in log
        finally:
            nginx.terminate()
            nginx.wait(unit(15))


# --- single-file mode on every CPython 3.9 .. 3.13 the machine has ------------------------

PYTHONS = ["3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]


def pyenv_python(version):
    import glob

    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python" + version)))
    if not found and shutil.which("python" + version):
        found = [shutil.which("python" + version)]
    require("CPython " + version, bool(found), "install it with pyenv")
    return found[-1]


@pytest.mark.parametrize("version", PYTHONS)
def test_single_file_mode_on_cpython(version, tmp_path):
    """`python sphincter.py -c FILE` with requirements.txt (pinned per version) relays a line."""
    python = pyenv_python(version)
    venv = os.path.join(ROOT, "build", "pyvenvs", version)
    stamp = os.path.join(venv, ".requirements")
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        wanted = f.read()
    if not (os.path.exists(stamp) and open(stamp).read() == wanted):
        shutil.rmtree(venv, ignore_errors=True)
        run([python, "-m", "venv", venv], timeout=unit(120))
        if version == "3.6":   # its pip 18.1 cannot install manylinux2014 wheels (gevent's)
            run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                 "--disable-pip-version-check", "pip==21.3.1"], timeout=unit(300))
        run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", "-r", os.path.join(ROOT, "requirements.txt")],
            timeout=unit(600))
        with open(stamp, "w") as f:
            f.write(wanted)
    conf = tmp_path / "sphincter.conf"
    with open(os.path.join(ROOT, "conf", "sphincter.conf")) as f:
        shipped = f.read()
    # the shipped example, with the ports made free ones (the file beats the defaults)
    conf.write_text(shipped + "\ntcp-host = 127.0.0.1\ntcp-port = 0\nws-host = 127.0.0.1\nws-port = 0\n")
    argv = [os.path.join(venv, "bin", "python"), os.path.join(ROOT, "sphincter.py"), "-c", str(conf)]
    with Server(argv, tmp_path / "sphincter.log") as srv:
        _, got = relay_line("127.0.0.1", srv.tcp_port, "ws://127.0.0.1:%d/ws" % srv.ws_port)
    assert got.startswith("hello from the source")
