"""Release tier (slow): dist/sphincter-VERSION-oci.tar (issue 23), written by
packaging/oci/build.py from the release tarball of the session (the same binary) and the
libraries of the Debian root it was built in; no daemon, nothing pulled.

Checked: the archive (OCI layout plus Docker's manifest.json, every blob's digest, the config:
non-root user, SPHINCTER_* environment, ports 9000 and 8080, entrypoint), the layer (the
release binary byte for byte, every library the binary loads from the system, nothing else),
the same bytes twice, `skopeo inspect`; then `podman load` and `podman run` (runc, cgroupfs,
host network, its own storage under tmp): a source gets its room code, a WebSocket subscriber
receives its line, /healthz answers, the process runs as the image's non-root user, SIGTERM
stops it gracefully (exit 0); then the container and the image are removed.

Not run here: `docker load` (no Docker daemon on this machine; the archive carries Docker's
manifest.json, which podman reads the same way) and compose (examples/compose.yaml is checked
as YAML in tests/unit/test_compose_example.py; it needs Redis's image from a registry).

Needs podman, runc, skopeo (scripts/apt-deps.d/release.txt); under CI=true a missing one fails.
"""
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.request

import pytest

from release_helpers import (ROOT, elfvers, relay_line, release_tarball, require_root,
                             require_tools, run, unit, wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

with open(os.path.join(ROOT, "sphincter_lib", "__init__.py")) as _f:
    VERSION = re.search(r'__version__ = "([^"]+)"', _f.read()).group(1)
IMAGE = "sphincter-%s-oci.tar" % VERSION
BUILD_ROOT = os.path.join(ROOT, "build", "roots", "build")
UID = 10001
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
"""


def build_image(tarball, outdir):
    proc = run([sys.executable, os.path.join(ROOT, "packaging", "oci", "build.py"),
                "--root", BUILD_ROOT, tarball, str(outdir)], timeout=unit(300), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return os.path.join(str(outdir), IMAGE)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    return release_tarball(tmp_path_factory)


@pytest.fixture(scope="module")
def image(tarball, tmp_path_factory):
    return build_image(tarball, tmp_path_factory.mktemp("image"))


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def archive(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def layer_members(files):
    manifest = json.loads(files["manifest.json"])[0]
    (layer,) = manifest["Layers"]
    with tarfile.open(fileobj=io.BytesIO(files[layer]), mode="r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_archive_is_an_oci_layout_and_a_docker_archive(image):
    files = archive(image)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():   # every blob is named by its digest
        if name.startswith("blobs/sha256/"):
            assert sha256(data) == name.rsplit("/", 1)[1], name
    index = json.loads(files["index.json"])
    refs = sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"])
    assert refs == sorted(["sphincter:%s" % VERSION, "sphincter:latest"])
    (digest,) = {m["digest"] for m in index["manifests"]}
    manifest = json.loads(files["blobs/sha256/" + digest[7:]])
    docker = json.loads(files["manifest.json"])
    assert docker[0]["RepoTags"] == ["sphincter:%s" % VERSION, "sphincter:latest"]
    assert docker[0]["Config"] == "blobs/sha256/" + manifest["config"]["digest"][7:]
    config = json.loads(files[docker[0]["Config"]])
    c = config["config"]
    assert c["User"] == "%d:%d" % (UID, UID)
    assert c["Entrypoint"] == ["/usr/bin/sphincter"]
    assert set(c["ExposedPorts"]) == {"9000/tcp", "8080/tcp"}
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["SPHINCTER_TCP_PORT"] == "9000" and env["SPHINCTER_WS_PORT"] == "8080"
    assert "/healthz" in c["Labels"]["org.opencontainers.image.description"]
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    layer_blob = files[docker[0]["Layers"][0]]
    assert config["rootfs"]["diff_ids"] == ["sha256:" + sha256(gzip.decompress(layer_blob))]


def test_layer_holds_the_release_binary_and_what_it_loads(image, tarball):
    members = layer_members(archive(image))
    with tarfile.open(tarball) as tar:
        shipped = tar.extractfile("sphincter-linux-x64/sphincter").read()
    m, data = members["usr/bin/sphincter"]
    assert sha256(data) == sha256(shipped) and m.mode == 0o755
    assert members["tmp"][0].mode == 0o1777
    assert all(m.uid == 0 and m.gid == 0 for m, _ in members.values())
    passwd = members["etc/passwd"][1].decode()
    assert "sphincter:x:%d:%d:" % (UID, UID) in passwd
    libs = {os.path.basename(n) for n, (m, _) in members.items()
            if m.isfile() and (n.startswith("lib/") or n.startswith("lib64/"))}
    # what the binary and the libraries in its archive need from the system (glibc, zlib),
    # what glibc loads by name (NSS for host names, libgcc_s for thread exit), nothing else
    assert libs == {"ld-linux-x86-64.so.2", "libc.so.6", "libdl.so.2", "libm.so.6", "libpthread.so.0",
                    "librt.so.1", "libutil.so.1", "libz.so.1", "libnss_files.so.2", "libnss_dns.so.2",
                    "libresolv.so.2", "libgcc_s.so.1"}, sorted(libs)
    # the binary keeps its own floor (2.17); the image's glibc is the build root's
    assert elfvers.glibc_floor(data)[:2] <= (2, 17)


def test_same_bytes_twice_and_skopeo_reads_it(image, tarball, tmp_path):
    again = build_image(tarball, tmp_path)
    with open(image, "rb") as a, open(again, "rb") as b:
        assert sha256(a.read()) == sha256(b.read()), "the image archive is not reproducible"
    require_tools("skopeo")
    out = run(["skopeo", "inspect", "oci-archive:%s:sphincter:%s" % (image, VERSION)]).stdout
    info = json.loads(out)
    assert info["Labels"]["org.opencontainers.image.version"] == VERSION
    assert info["Architecture"] == "amd64" and len(info["Layers"]) == 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Podman:
    """podman with its own storage and run directories and containers.conf, so nothing of
    another podman user on this machine is seen or touched (the run directory: podman wants
    at most 50 characters)."""

    def __init__(self, where):
        require_root("Debian's podman runs here as root")
        require_tools("podman", "runc")
        conf = where / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.runroot = tempfile.mkdtemp(prefix="sph-podman-", dir="/tmp")
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))
        self.base = ["podman", "--root", str(where / "storage"), "--runroot", self.runroot,
                     "--storage-driver", "vfs"]

    def close(self):
        shutil.rmtree(self.runroot, ignore_errors=True)

    def __call__(self, *args, check=True, timeout=unit(120)):
        return run(self.base + list(args), env=self.env, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def podman(image, tmp_path_factory):
    """The image loaded into a podman of its own; removed (and nothing left) afterwards."""
    podman = Podman(tmp_path_factory.mktemp("podman"))
    try:
        out = podman("load", "-i", image, timeout=unit(300)).stdout
        assert "Loaded image: localhost/sphincter:%s" % VERSION in out, out
        assert "Loaded image: localhost/sphincter:latest" in out, out
        yield podman
        podman("rmi", "-f", "localhost/sphincter:%s" % VERSION, "localhost/sphincter:latest")
        assert not podman("images", "-q").stdout.strip()
    finally:
        podman.close()


class Node:
    """One container of the image on the host's network, on two free loopback ports."""

    def __init__(self, podman, name, *env):
        self.podman, self.name = podman, "%s-%d" % (name, os.getpid())
        self.tcp, self.ws = free_port(), free_port()
        args = ["run", "-d", "--name", self.name, "--network", "host",
                "-e", "SPHINCTER_TCP_HOST=127.0.0.1", "-e", "SPHINCTER_TCP_PORT=%d" % self.tcp,
                "-e", "SPHINCTER_WS_HOST=127.0.0.1", "-e", "SPHINCTER_WS_PORT=%d" % self.ws]
        for e in env:
            args += ["-e", e]
        podman(*(args + ["sphincter:%s" % VERSION]))
        wait_for(self.listening, unit(60), "the container's 'listening' line", interval=0.3)

    def logs(self):
        out = self.podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def listening(self):
        state = self.podman("inspect", "-f", "{{.State.Running}}", self.name).stdout.strip()
        assert state == "true", "the container stopped:\n" + self.logs()
        return "listening tcp=127.0.0.1:%d ws=127.0.0.1:%d" % (self.tcp, self.ws) in self.logs()

    @property
    def ws_url(self):
        return "ws://127.0.0.1:%d/ws" % self.ws

    def remove(self):
        self.podman("rm", "-f", self.name, check=False)


def test_podman_run_relays_answers_healthz_as_non_root_and_stops_gracefully(podman):
    node = Node(podman, "sphincter-test")
    try:
        code, got = relay_line("127.0.0.1", node.tcp, node.ws_url)
        assert re.match(r"^[A-Z0-9]{6}$", code) and got.startswith("hello from the source")
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % node.ws, timeout=unit(10)) as r:
            assert r.status == 200
            health = json.loads(r.read().decode())
        assert health["status"] == "ok" and health["version"] == VERSION
        # non-root: the image's user, in the container and on the host
        assert podman("inspect", "-f", "{{.Config.User}}", node.name).stdout.strip() == "%d:%d" % (UID, UID)
        top = podman("top", node.name, "user", "huser", "args").stdout.splitlines()[1:]
        assert top and all(line.split()[:2] == ["sphincter", str(UID)] for line in top), top
        # SIGTERM reaches Python through the one-file bootloader: a graceful stop, exit 0
        podman("stop", "-t", "20", node.name, timeout=unit(60))
        assert podman("inspect", "-f", "{{.State.ExitCode}}", node.name).stdout.strip() == "0", node.logs()
        assert "received SIGTERM, stopping" in node.logs() and "stopped in" in node.logs()
    finally:
        node.remove()


def test_two_containers_share_rooms_through_redis_by_host_name(podman):
    """examples/compose.yaml's premise: nodes of the image reach Redis by a host name (glibc's
    NSS modules are in the image) and a subscriber on one node receives a source on the other."""
    from rediskit import RedisServer

    redis = RedisServer()
    url = "SPHINCTER_REDIS_URL=redis://localhost:%d/0" % redis.port
    nodes = []
    try:
        nodes.append(Node(podman, "sphincter-node1", url, "SPHINCTER_NODE_NAME=node1"))
        nodes.append(Node(podman, "sphincter-node2", url, "SPHINCTER_NODE_NAME=node2"))
        code, got = relay_line("127.0.0.1", nodes[0].tcp, nodes[1].ws_url)
        assert got.startswith("hello from the source"), got
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % nodes[1].ws, timeout=unit(10)) as r:
            assert json.loads(r.read().decode())["status"] == "ok"
        # a name the image cannot resolve is refused by the check, as on a host
        bad = podman("run", "--rm", "--network", "host", "-e", "SPHINCTER_TCP_HOST=no-such-host.invalid",
                     "sphincter:%s" % VERSION, "--check-config", check=False)
        assert bad.returncode == 2 and "cannot resolve" in bad.stderr, bad.stdout + bad.stderr
    finally:
        for node in nodes:
            node.remove()
        redis.stop()
