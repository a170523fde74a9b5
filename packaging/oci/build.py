"""Build dist/sphincter-VERSION-oci.tar: a container image of the release binary, no daemon.

One layer, written here: the one-file binary from the release tarball as /usr/bin/sphincter;
the shared libraries it and the libraries in its archive load from the system (glibc's and
zlib's, found by reading their DT_NEEDED entries, and glibc's NSS modules for host names: a
Redis service by name), copied from the Debian root the binary was built in; /etc/passwd and
/etc/group with the unprivileged user the image runs as; /etc/nsswitch.conf; Debian's CA
bundle (rediss://); /tmp (the binary unpacks itself there). Nothing is pulled.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) that also holds
Docker's manifest.json, so both `podman load -i` and `docker load -i` read it; it loads as
sphincter:VERSION and sphincter:latest. Bytes are reproducible: fixed order, owners, and
mtimes (SOURCE_DATE_EPOCH), gzip without name or time.

Usage: python3 packaging/oci/build.py [--root DIR] TARBALL OUTDIR
       --root: the Debian root the binary was built in (default: build/roots/build)
Standard library only (runs with the host's python3).
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TARBALL_DIR = "sphincter-linux-x64"
#: the unprivileged user and group the image runs as (numeric, so runAsNonRoot can verify it)
UID = GID = 10001
TCP_PORT, WS_PORT = 9000, 8080
#: where the image's libraries go (Debian's multiarch directory, searched by its ld.so)
LIBDIR = "lib/x86_64-linux-gnu"
INTERP = "lib64/ld-linux-x86-64.so.2"
#: loaded with dlopen by glibc, not named in any DT_NEEDED: host names (files, then DNS)
NSS = ("libnss_files.so.2", "libnss_dns.so.2")
#: dlopened by glibc for pthread_cancel and thread exit (the unwinder): without it a stop
#: aborts ("libgcc_s.so.1 must be installed for pthread_cancel to work")
DLOPENED = NSS + ("libgcc_s.so.1",)
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
SEARCH = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")

MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"


def onefile_elf_names(data):
    """{base name: bytes} of the ELF files inside a PyInstaller one-file executable's archive
    (its cookie: magic MEI\\014\\013\\012\\013\\016, then "!IIII64s"; TOC entries "!IIIIBc"
    and a name; tests/release_helpers.onefile_members reads it the same way)."""
    cookie = data.rfind(b"MEI\014\013\012\013\016")
    if cookie < 0:
        raise SystemExit("build-oci: the binary has no PyInstaller archive")
    length, toc_offset, toc_length, _pyver, _pylib = struct.unpack_from("!IIII64s", data, cookie + 8)
    start = cookie + 8 + struct.calcsize("!IIII64s") - length
    toc = data[start + toc_offset:start + toc_offset + toc_length]
    names, pos, head = {}, 0, struct.calcsize("!IIIIBc")
    while pos < len(toc):
        entry_len, offset, stored, _size, compressed, typecode = struct.unpack_from("!IIIIBc", toc, pos)
        name = toc[pos + head:pos + entry_len].rstrip(b"\0").decode("utf-8")
        pos += entry_len
        if typecode in (b"b", b"x", b"n", b"d") or name.endswith(".so") or ".so." in name:
            blob = data[start + offset:start + offset + stored]
            blob = zlib.decompress(blob) if compressed else blob
            if blob[:4] == b"\x7fELF":
                names[os.path.basename(name)] = blob
    return names


def dt_needed(elf):
    """The DT_NEEDED names of a 64-bit little-endian ELF image (from its SHT_DYNAMIC section)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    out = []
    for _name, stype, _flags, _addr, offset, size, link, _info, _align, _entsize in sections:
        if stype != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, val = struct.unpack_from("<qQ", elf, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = elf.index(b"\0", strtab + val)
                out.append(elf[strtab + val:end].decode())
    return out


def find_lib(root, soname):
    for d in SEARCH:
        path = os.path.join(root, d, soname)
        if os.path.exists(path):
            return os.path.realpath(path)
    raise SystemExit("build-oci: %s not found in the root %s" % (soname, root))


def system_libs(binary, root):
    """{soname: bytes} of every library from the root that the binary (its bootloader and the
    libraries and extensions in its archive) loads, with their own needs, plus what glibc dlopens."""
    bundled = onefile_elf_names(binary)
    todo = set(dt_needed(binary)) | set(DLOPENED)
    for blob in bundled.values():
        todo.update(dt_needed(blob))
    todo -= set(bundled) - {"libz.so.1"}   # the bootloader loads libz.so.1 before it unpacks
    found = {}
    while todo:
        soname = todo.pop()
        if soname in found:
            continue
        with open(find_lib(root, soname), "rb") as f:
            found[soname] = f.read()
        todo.update(n for n in dt_needed(found[soname]) if n not in found)
    return found


class Layer:
    """A reproducible tar: entries in path order, owner 0:0 unless given, one mtime."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}

    def dir(self, path, mode=0o755):
        self.entries[path] = (tarfile.DIRTYPE, mode, None, 0, 0)

    def file(self, path, data, mode=0o644, owner=0):
        self.entries[path] = (tarfile.REGTYPE, mode, data, owner, owner)

    def symlink(self, path, target):
        self.entries[path] = (tarfile.SYMTYPE, 0o777, target, 0, 0)

    def tar(self):
        for path in list(self.entries):   # every parent directory, 0755 unless given
            parent = os.path.dirname(path)
            while parent and parent not in self.entries:
                self.dir(parent)
                parent = os.path.dirname(parent)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, mode, data, uid, gid = self.entries[path]
                info = tarfile.TarInfo(path)
                info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, self.mtime, uid, gid
                info.uname = info.gname = ""
                if kind == tarfile.REGTYPE:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    if kind == tarfile.SYMTYPE:
                        info.linkname = data
                    tar.addfile(info)
        return buf.getvalue()


def rootfs(binary, root, mtime):
    layer = Layer(mtime)
    layer.file("usr/bin/sphincter", binary, 0o755)
    for soname, data in system_libs(binary, root).items():
        if soname == os.path.basename(INTERP):
            layer.file(INTERP, data, 0o755)
        else:
            layer.file(LIBDIR + "/" + soname, data)
    layer.file("etc/passwd", ("root:x:0:0:root:/root:/sbin/nologin\n"
                              "sphincter:x:%d:%d:Sphincter relay:/nonexistent:/sbin/nologin\n"
                              % (UID, GID)).encode())
    layer.file("etc/group", ("root:x:0:\nsphincter:x:%d:\n" % GID).encode())
    layer.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    with open(os.path.join(root, CA_BUNDLE), "rb") as f:
        layer.file(CA_BUNDLE, f.read())
    layer.dir("tmp", 0o1777)
    layer.dir("root", 0o700)
    return layer.tar()


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    out["blobs/sha256/" + digest] = data
    return {"digest": "sha256:" + digest, "size": len(data)}


def gz(data):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(data)
    return buf.getvalue()


def image_files(binary, version, root, mtime):
    """{path in the archive: bytes}."""
    layer_tar = rootfs(binary, root, mtime)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
    config = {
        "created": created, "architecture": "amd64", "os": "linux",
        "config": {
            "User": "%d:%d" % (UID, GID),
            "Env": ["PATH=/usr/bin:/bin", "SSL_CERT_FILE=/" + CA_BUNDLE,
                    "SPHINCTER_TCP_HOST=0.0.0.0", "SPHINCTER_TCP_PORT=%d" % TCP_PORT,
                    "SPHINCTER_WS_HOST=0.0.0.0", "SPHINCTER_WS_PORT=%d" % WS_PORT],
            "Entrypoint": ["/usr/bin/sphincter"],
            "ExposedPorts": {"%d/tcp" % TCP_PORT: {}, "%d/tcp" % WS_PORT: {}},
            "WorkingDir": "/",
            "StopSignal": "SIGTERM",
            "Labels": {
                "org.opencontainers.image.title": "sphincter",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description":
                    "TCP-to-WebSocket relay; settings: SPHINCTER_* variables; health: GET /healthz on %d"
                    % WS_PORT,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
        "history": [{"created": created, "created_by": "packaging/oci/build.py (release binary %s)" % version}],
    }
    files = {}
    layer = dict(mediaType=MT_LAYER, **blob(files, gz(layer_tar)))
    cfg = dict(mediaType=MT_CONFIG, **blob(files, canonical(config)))
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cfg, "layers": [layer]}
    man = dict(mediaType=MT_MANIFEST, **blob(files, canonical(manifest)))
    tags = image_tags(version)
    files["index.json"] = canonical({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        dict(man, annotations={"org.opencontainers.image.ref.name": tag,
                               "io.containerd.image.name": "docker.io/library/" + tag})
        for tag in tags]})
    files["oci-layout"] = canonical({"imageLayoutVersion": "1.0.0"})
    files["manifest.json"] = canonical([{"Config": "blobs/sha256/" + cfg["digest"][7:],
                                         "RepoTags": tags,
                                         "Layers": ["blobs/sha256/" + layer["digest"][7:]]}])
    return files


def image_tags(version):
    """The names the archive loads as (podman adds its localhost/ prefix)."""
    return ["sphincter:%s" % version, "sphincter:latest"]


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def read_tarball(path):
    with tarfile.open(path) as tar:
        return tar.extractfile(TARBALL_DIR + "/sphincter").read()


def binary_version(binary):
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "sphincter")
        with open(exe, "wb") as f:
            f.write(binary)
        os.chmod(exe, 0o755)
        out = subprocess.run([exe, "--version"], stdout=subprocess.PIPE, check=True,
                             universal_newlines=True, timeout=60).stdout.strip()
    version = out.split()[-1]
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", version):
        raise SystemExit("build-oci: unexpected version %r" % out)
    return version


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.join(REPO, "build", "roots", "build"))
    ap.add_argument("tarball")
    ap.add_argument("outdir")
    args = ap.parse_args(argv)
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH") or subprocess.run(
        ["git", "-C", REPO, "log", "-1", "--format=%ct"], stdout=subprocess.PIPE,
        universal_newlines=True).stdout.strip() or 315532800)
    binary = read_tarball(args.tarball)
    version = binary_version(binary)
    files = image_files(binary, version, args.root, mtime)
    outer = Layer(mtime)
    for path, data in files.items():
        outer.file(path, data)
    name = "sphincter-%s-oci.tar" % version
    os.makedirs(args.outdir, exist_ok=True)
    dest = os.path.join(args.outdir, name)
    with open(dest + ".tmp", "wb") as f:
        f.write(outer.tar())
    os.replace(dest + ".tmp", dest)
    with open(dest, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print("build-oci: %s  %s (sphincter:%s, sphincter:latest)" % (digest, name, version),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
