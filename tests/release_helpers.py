"""Helpers for tests/release/test_release.py: real processes, real sockets, a real systemd.

Also a small command line, so the same relay check runs inside a container's network
namespace (``nsenter -t PID -n python tests/release_helpers.py relay HOST:PORT WS_URL``).
"""
import marshal
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testkit import IN_CI, TIME_FACTOR, require, require_program, unit  # noqa: E402,F401

sys.path.insert(0, os.path.join(ROOT, "packaging"))
import elfvers  # noqa: E402,F401  (packaging/elfvers.py: symbol versions, stdlib only)

NAME = "sphincter-linux-x64"
TARBALL = NAME + ".tar.gz"

LISTENING_RE = re.compile(r"listening tcp=(\S+):(\d+) ws=(\S+):(\d+)")


def require_tools(*tools):
    for tool in tools:
        require_program(tool)


def require_root(why):
    require("root", os.geteuid() == 0, why)


def build(outdir, env=None, expect_ok=True):
    """`packaging/build.sh OUTDIR`: the tarball (returned) and the .deb beside it."""
    require_root("the release build debootstraps and chroots")
    require_tools("debootstrap", "chroot", "tar", "gzip", "dpkg-deb", "readelf", "python3")
    proc = run(["sh", os.path.join(ROOT, "packaging", "build.sh"), str(outdir)],
               timeout=unit(900), check=False, env=env)
    if expect_ok:
        assert proc.returncode == 0, "build failed:\n" + proc.stderr[-6000:]
    return os.path.join(str(outdir), TARBALL), proc


def wait_for(predicate, timeout, what, interval=0.05):
    """Poll `predicate` until it returns a true value (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def run(argv, timeout=60, check=True, **kw):
    """subprocess.run with text output captured and a helpful failure message."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          universal_newlines=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError("%s exited %s\nstdout:\n%s\nstderr:\n%s"
                             % (argv, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))
    return proc


def onefile_members(binary):
    """{name: bytes} of every file in a PyInstaller one-file executable's archive.

    The format (PyInstaller.archive.readers.CArchiveReader): a cookie at the end, magic
    MEI\\014\\013\\012\\013\\016 then "!IIII64s" (archive length, TOC offset and length, Python
    version, libpython name); TOC entries "!IIIIBc" (entry length, offset, stored length,
    length, zlib flag, type) followed by the NUL-padded name."""
    with open(binary, "rb") as f:
        data = f.read()
    magic = b"MEI\014\013\012\013\016"
    cookie = data.rfind(magic)
    assert cookie >= 0, "%s has no PyInstaller archive" % binary
    length, toc_offset, toc_length, _pyver, _pylib = struct.unpack_from("!IIII64s", data, cookie + 8)
    start = cookie + 8 + struct.calcsize("!IIII64s") - length
    toc = data[start + toc_offset:start + toc_offset + toc_length]
    members, pos, head = {}, 0, struct.calcsize("!IIIIBc")
    while pos < len(toc):
        entry_len, offset, stored, _size, compressed, typecode = struct.unpack_from("!IIIIBc", toc, pos)
        name = toc[pos + head:pos + entry_len].rstrip(b"\0").decode("utf-8")
        pos += entry_len
        if typecode == b"o":
            continue
        blob = data[start + offset:start + offset + stored]
        members[name] = zlib.decompress(blob) if compressed else blob
    return members


def package_modules(root=ROOT):
    """Every module of the ``sphincter_lib`` tree under ``root`` as a dotted name (a package by
    its own name): what every way of shipping Sphincter must hold."""
    found = set()
    base = os.path.join(root, "sphincter_lib")
    for folder, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(folder, root).replace(os.sep, ".")
        found.update(rel if f == "__init__.py" else rel + "." + f[:-3]
                     for f in files if f.endswith(".py"))
    return found


def pyz_modules(binary):
    """The module names in a PyInstaller one-file executable's PYZ archive (its member of type
    'z', PyInstaller.archive.readers.ZlibArchiveReader): magic PYZ\\0, the Python magic, "!i"
    TOC offset; the TOC is a marshalled list (or dict) of (name, (typecode, offset, length))."""
    pyz = [data for name, data in onefile_members(binary).items() if data[:4] == b"PYZ\0"]
    assert len(pyz) == 1, "expected one PYZ archive in %s, found %d" % (binary, len(pyz))
    toc_offset, = struct.unpack_from("!i", pyz[0], 8)
    return set(dict(marshal.loads(pyz[0][toc_offset:])))


class Server:
    """A sphincter process (the binary or ``python sphincter.py``) on real ports, logging to a file."""

    def __init__(self, argv, log_path, env=None):
        self.argv = list(argv)
        self.log_path = str(log_path)
        self.env = env
        self.proc = None
        self.tcp_port = self.ws_port = None

    def start(self, timeout=unit(20)):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError("sphincter exited %s:\n%s" % (self.proc.returncode, self.log()))
            return LISTENING_RE.search(self.log())

        m = wait_for(listening, timeout, "the 'listening' log line")
        self.tcp_port, self.ws_port = int(m.group(2)), int(m.group(4))
        return self

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, timeout=unit(15)):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc:
            self._log.close()
        return self.proc.returncode if self.proc else None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def relay_line(tcp_host, tcp_port, ws_url, text="hello from the source", timeout=unit(15),
               ws_connect=None):
    """Open a TCP source, subscribe a WebSocket client to its room, relay a line; return it.

    The source repeats numbered lines until the subscriber receives one (its subscription is
    registered just after the handshake), so no sleep is needed; bounded by `timeout`.
    """
    import websocket  # websocket-client

    deadline = time.monotonic() + timeout
    src = socket.create_connection((tcp_host, tcp_port), timeout=timeout)
    try:
        banner = b""
        while not banner.endswith(b"\n"):
            chunk = src.recv(1)
            assert chunk, "source closed before the banner (got %r)" % banner
            banner += chunk
        m = re.match(rb"ROOM ([A-Z0-9]{6})\n$", banner)
        assert m, "unexpected banner %r" % banner
        code = m.group(1).decode()
        url = "%s?room=%s" % (ws_url, code)
        ws = ws_connect(url) if ws_connect else websocket.create_connection(url, timeout=timeout)
        try:
            ws.settimeout(0.2)
            n = 0
            while True:
                n += 1
                src.sendall(("%s %d\n" % (text, n)).encode())
                try:
                    got = ws.recv()
                except websocket.WebSocketTimeoutException:
                    if time.monotonic() > deadline:
                        raise AssertionError("no message relayed within %.0fs" % timeout)
                    continue
                if isinstance(got, bytes):
                    got = got.decode()
                assert re.match(r"^%s \d+$" % re.escape(text), got), "relayed %r" % got
                return code, got
        finally:
            ws.close()
    finally:
        src.close()


def process_children():
    """{ppid: [pid, ...]} for every process now visible in /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def ns_pid1(root_pid):
    """The descendant of `root_pid` that is PID 1 of its own PID namespace, or None."""
    tree = process_children()
    todo = list(tree.get(root_pid, []))
    while todo:
        pid = todo.pop(0)
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) > 1 and ids[-1] == "1":
                            return pid
        except OSError:
            continue
        todo.extend(tree.get(pid, []))
    return None


class Container:
    """A debootstrapped root booted by systemd-nspawn with its own systemd, network namespace
    (loopback only) and a throw-away overlay over the root (the cached root stays clean)."""

    PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def __init__(self, root, log_path, binds_ro=()):
        self.root = str(root)
        self.log_path = str(log_path)
        self.binds_ro = list(binds_ro)
        self.proc = None
        self.leader = None

    def start(self, timeout=unit(90)):
        argv = ["systemd-nspawn", "--quiet", "-D", self.root, "--volatile=overlay", "--boot",
                "--register=no", "--keep-unit", "--private-network", "--console=read-only"]
        argv += ["--bind-ro=%s:%s" % (src, dst) for src, dst in self.binds_ro]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

        def leader():
            if self.proc.poll() is not None:
                raise AssertionError("systemd-nspawn exited %s:\n%s"
                                     % (self.proc.returncode, self.log()[-3000:]))
            return ns_pid1(self.proc.pid)

        self.leader = wait_for(leader, timeout, "the container's PID 1")

        def booted():
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            return state in ("running", "degraded") and state

        state = wait_for(booted, timeout, "the container to boot", interval=0.2)
        if state == "degraded":
            failed = self.sh("systemctl --failed --no-legend --plain", check=False).stdout
            print("container booted degraded; failed units:\n" + failed)
        return self

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def sh(self, script, check=True, timeout=unit(60)):
        """Run a shell script inside the container (all its namespaces, as root)."""
        argv = ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i",
                "PATH=" + self.PATH, "LANG=C.UTF-8", "/bin/sh", "-c", script]
        return run(argv, timeout=timeout, check=check)

    def in_netns(self, argv, check=True, timeout=unit(60)):
        """Run a host program (e.g. this venv's Python) inside the container's network only."""
        return run(["nsenter", "-t", str(self.leader), "-n", "--"] + list(argv),
                   timeout=timeout, check=check)

    def relay(self, tcp_port, ws_port, check=True):
        return self.in_netns([sys.executable, os.path.abspath(__file__), "relay",
                              "127.0.0.1:%d" % tcp_port, "ws://127.0.0.1:%d/ws" % ws_port],
                             check=check)

    def stop(self, timeout=unit(60)):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # nspawn: orderly shutdown of the container
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


_RELEASE = {}


def release_tarball(tmp_path_factory):
    """The release tarball, built once per test session and shared by the release tier
    (test_release.py, test_deb.py, test_rpm.py, test_image.py: the .deb, the .rpm and the
    image are made from its binary; the .deb lies beside it)."""
    if "tarball" not in _RELEASE:
        path, proc = build(tmp_path_factory.mktemp("dist"), expect_ok=False)
        print(proc.stderr)
        _RELEASE["tarball"] = path if proc.returncode == 0 else None
        _RELEASE["error"] = "build failed:\n" + proc.stderr[-6000:]
    assert _RELEASE["tarball"], _RELEASE["error"]
    return _RELEASE["tarball"]


def main(argv):
    if len(argv) == 3 and argv[0] == "relay":
        host, port = argv[1].rsplit(":", 1)
        code, got = relay_line(host, int(port), argv[2])
        print("relayed room=%s %s" % (code, got))
        return 0
    print("usage: release_helpers.py relay TCPHOST:PORT WS_URL", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
