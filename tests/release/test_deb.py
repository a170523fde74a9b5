"""Release tier (slow): dist/sphincter_<version>_amd64.deb, built by `make dist` from the same
binary as the tarball (packaging/deb.sh): contents, modes, conffiles, Depends, lintian; then
its whole life under a real systemd (systemd-nspawn, the bullseye root of test_release.py):
install, upgrade over an edited /etc/default/sphincter, an upgrade over a bad setting, remove,
purge. One build (the session's `dist`), one container boot.

Needs root, dpkg-deb, lintian, systemd-nspawn (scripts/apt-deps.d/release.txt); outside CI a
missing piece skips with the reason, under CI=true it fails.
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import tarfile

import pytest

from release_helpers import (NAME, ROOT, Container, onefile_members, release_tarball, require,
                             require_root, require_tools, run, unit, wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="session")
def dist(tmp_path_factory):
    """The tarball's path, built once per session (release_helpers.release_tarball); the .deb
    is beside it."""
    return release_tarball(tmp_path_factory)


CONTENTS = {  # path in the package -> mode
    "usr/bin/sphincter": 0o755,
    "lib/systemd/system/sphincter.service": 0o644,
    "lib/systemd/system/sphincter@.service": 0o644,
    "etc/default/sphincter": 0o600,
    "usr/share/man/man1/sphincter.1.gz": 0o644,
    "usr/share/doc/sphincter/copyright": 0o644,
    "usr/share/doc/sphincter/changelog.gz": 0o644,
    "usr/share/doc/sphincter/examples/nginx-sphincter.conf": 0o644,
    "usr/share/doc/sphincter/examples/nginx-cluster.conf": 0o644,
    "usr/share/doc/sphincter/examples/nginx-cluster-stream.conf": 0o644,
    "usr/share/lintian/overrides/sphincter": 0o644,
}
#: the libraries glibc's package ships (libc6), as a binary names them in DT_NEEDED
GLIBC_LIBS = {"libc.so.6", "libdl.so.2", "libpthread.so.0", "libm.so.6", "librt.so.1",
              "libutil.so.1", "ld-linux-x86-64.so.2"}
NEXT = "+test2"  # appended to the version: the upgrades in the container
THIRD = "+test3"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def deb(dist):
    require_tools("dpkg-deb")
    found = glob.glob(os.path.join(os.path.dirname(dist), "sphincter_*_amd64.deb"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def unpacked_tarball(dist, tmp_path_factory):
    where = tmp_path_factory.mktemp("tarball")
    run(["tar", "-xzf", dist, "-C", str(where)])
    return os.path.join(str(where), NAME)


@pytest.fixture(scope="module")
def extracted(deb, tmp_path_factory):
    where = tmp_path_factory.mktemp("deb")
    run(["dpkg-deb", "-R", deb, str(where)])
    return str(where)


def field(deb, name):
    return run(["dpkg-deb", "-f", deb, name]).stdout.strip()


def version_of(unpacked_tarball):
    return run([os.path.join(unpacked_tarball, "sphincter"), "--version"]).stdout.split()[1]


def test_name_version_contents_and_modes(deb, unpacked_tarball):
    version = version_of(unpacked_tarball)
    assert os.path.basename(deb) == "sphincter_%s_amd64.deb" % version
    assert field(deb, "Package") == "sphincter" and field(deb, "Version") == version
    assert field(deb, "Architecture") == "amd64"
    # dpkg-deb --fsys-tarfile: the data archive as tar
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE,
                          check=True, timeout=unit(60)).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        files = {m.name[2:]: m for m in members if m.isfile()}
        assert {n: m.mode & 0o7777 for n, m in files.items()} == CONTENTS
        assert all(m.uid == 0 and m.gid == 0 and m.uname == "root" for m in members)
        assert all(m.mode & 0o7777 == 0o755 for m in members if m.isdir())
        binary = tar.extractfile(files["usr/bin/sphincter"]).read()
        units = {n: tar.extractfile(files["lib/systemd/system/" + n]).read().decode()
                 for n in ("sphincter.service", "sphincter@.service")}
        env = tar.extractfile(files["etc/default/sphincter"]).read()
    # the very binary and settings the tarball holds
    with open(os.path.join(unpacked_tarball, "sphincter"), "rb") as f:
        assert sha256(binary) == sha256(f.read())
    with open(os.path.join(unpacked_tarball, "sphincter.env"), "rb") as f:
        assert env == f.read()
    for name, text in units.items():
        with open(os.path.join(unpacked_tarball, name)) as f:
            shipped = f.read()
        assert text == shipped.replace("ExecStart=/usr/local/bin/sphincter", "ExecStart=/usr/bin/sphincter")
        assert "ExecStart=/usr/bin/sphincter\n" in text, name


def test_control_files(deb, extracted):
    control = os.path.join(extracted, "DEBIAN")
    with open(os.path.join(control, "conffiles")) as f:
        assert f.read() == "/etc/default/sphincter\n"
    for script in ("postinst", "prerm", "postrm"):
        assert os.stat(os.path.join(control, script)).st_mode & 0o777 == 0o755, script
    assert not os.path.exists(os.path.join(control, "preinst"))


def test_depends_are_what_the_binary_really_links(deb, unpacked_tarball):
    """Depends: glibc (>= the floor) and zlib, because the executable links exactly those; the
    libraries it bundles need nothing but glibc's (what they need beyond each other)."""
    with open(os.path.join(unpacked_tarball, "GLIBC_FLOOR")) as f:
        floor = f.read().strip()
    assert field(deb, "Depends") == "libc6 (>= %s), zlib1g" % floor
    assert floor == "2.17"
    for name in ("Pre-Depends", "Recommends", "Suggests"):
        assert field(deb, name) == "", name
    binary = os.path.join(unpacked_tarball, "sphincter")
    needed = set(re.findall(r"\(NEEDED\).*\[(.*)\]", run(["readelf", "-d", binary]).stdout))
    assert needed - GLIBC_LIBS == {"libz.so.1"}, needed
    bundled = {os.path.basename(n): data for n, data in onefile_members(binary).items()
               if data[:4] == b"\x7fELF"}
    tmp = os.path.join(os.path.dirname(unpacked_tarball), "elf")
    from_bundled = set()
    for name, data in bundled.items():
        with open(tmp, "wb") as f:
            f.write(data)
        from_bundled |= set(re.findall(r"\(NEEDED\).*\[(.*)\]", run(["readelf", "-d", tmp]).stdout))
    assert from_bundled - set(bundled) <= GLIBC_LIBS, sorted(from_bundled - set(bundled))


def test_man_page_is_the_generated_one(extracted):
    import gzip

    with gzip.open(os.path.join(extracted, "usr/share/man/man1/sphincter.1.gz"), "rt") as f:
        text = f.read()
    assert text.startswith(".TH SPHINCTER 1 ") and "\\-\\-check\\-config" in text


def test_lintian_reports_no_error_nor_warning(deb):
    require_tools("lintian")
    p = run(["lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", deb],
            check=False, timeout=unit(300))
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not re.search(r"^[EW]: ", p.stdout, re.M), p.stdout


def test_the_deb_is_reproducible_from_the_tarball(deb, unpacked_tarball, tmp_path):
    """packaging/deb.sh on the unpacked tarball gives the same bytes as `make dist`."""
    out = tmp_path / "again"
    run(["sh", os.path.join(ROOT, "packaging", "deb.sh"), unpacked_tarball, str(out)],
        timeout=unit(300))
    with open(deb, "rb") as a, open(str(out / os.path.basename(deb)), "rb") as b:
        assert sha256(a.read()) == sha256(b.read()), "the .deb is not reproducible"


# --- a real systemd: install, upgrades, remove, purge ----------------------------------------

def base_root():
    root = os.path.join(ROOT, "build", "roots", "base")
    require("the debootstrapped bullseye root", os.path.isfile(os.path.join(root, ".done")),
            "packaging/mkroot.sh base")
    return root


@pytest.fixture(scope="module")
def next_debs(deb, unpacked_tarball, tmp_path_factory):
    """Two later versions from the same binary (DEB_VERSION): the upgrades."""
    out = tmp_path_factory.mktemp("next")
    version = version_of(unpacked_tarball)
    for suffix in (NEXT, THIRD):
        run(["sh", os.path.join(ROOT, "packaging", "deb.sh"), unpacked_tarball, str(out)],
            env=dict(os.environ, DEB_VERSION=version + suffix), timeout=unit(300))
    shutil.copy(deb, str(out))
    return str(out), version


def test_deb_lifecycle_in_nspawn(next_debs, tmp_path):
    require_root("systemd-nspawn boots a container")
    require_tools("systemd-nspawn", "nsenter")
    debs, version = next_debs
    apt = ("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
           "/opt/debs/sphincter_%s_amd64.deb 2>&1")
    with Container(base_root(), tmp_path / "nspawn.log", binds_ro=[(debs, "/opt/debs")]) as ct:
        def svc(*props):
            out = ct.sh("systemctl show sphincter -p " + ",".join(props)).stdout
            return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

        def listening(port):
            return re.search(r":%d\s" % port, ct.sh("ss -Htln").stdout + " ") is not None

        # install: user, enabled, started, answering a source and a subscriber
        out = ct.sh(apt % version, timeout=unit(180)).stdout
        assert "sphincter: configuration OK" in out and "sphincter.service is running" in out, out
        assert ct.sh("systemctl is-enabled sphincter").stdout.strip() == "enabled"
        assert svc("ActiveState")["ActiveState"] == "active"
        assert ct.sh("stat -c '%a %U' /etc/default/sphincter /usr/bin/sphincter").stdout.split() \
            == ["600", "root", "755", "root"]
        ct.relay(9000, 8080)
        user = ct.sh("ps -o user= -p $(systemctl show -p MainPID --value sphincter)").stdout.strip()
        assert user == "sphincter"
        assert ct.sh("id -u sphincter").stdout.strip() != "0"

        # edit /etc/default/sphincter, install the next version over it: edit kept, restarted
        ct.sh("echo SPHINCTER_TCP_PORT=9100 >> /etc/default/sphincter")
        before = svc("MainPID", "ActiveEnterTimestampMonotonic")
        out = ct.sh(apt % (version + NEXT), timeout=unit(180)).stdout
        assert "sphincter.service is running" in out, out
        assert "SPHINCTER_TCP_PORT=9100" in ct.sh("cat /etc/default/sphincter").stdout
        assert not ct.sh("ls /etc/default").stdout.count("dpkg-"), "a conffile prompt's leftovers"
        after = svc("MainPID", "ActiveEnterTimestampMonotonic", "ActiveState")
        assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"]
        assert after["ActiveEnterTimestampMonotonic"] != before["ActiveEnterTimestampMonotonic"]
        ct.relay(9100, 8080)
        assert not listening(9000)
        assert ct.sh("dpkg-query -W -f '${Version}' sphincter").stdout == version + NEXT

        # a bad setting, then an upgrade: installed, the old process keeps running, and why
        message = ct.sh("SPHINCTER_WS_PORT=99999 /usr/bin/sphincter", check=False).stderr.strip()
        assert message.startswith("sphincter: error: argument --ws-port"), message
        ct.sh("echo SPHINCTER_WS_PORT=99999 >> /etc/default/sphincter")
        running = svc("MainPID")["MainPID"]
        p = ct.sh(apt % (version + THIRD), check=False, timeout=unit(180))
        assert p.returncode == 0, p.stdout
        assert message in p.stdout, p.stdout
        assert "sphincter.service keeps running the previous version" in p.stdout, p.stdout
        assert svc("ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": running}
        assert ct.sh("dpkg-query -W -f '${Status} ${Version}' sphincter").stdout \
            == "install ok installed " + version + THIRD
        ct.relay(9100, 8080)
        ct.sh("sed -i /99999/d /etc/default/sphincter")

        # remove: stopped, settings and user kept
        ct.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y sphincter", timeout=unit(120))
        assert ct.sh("systemctl is-active sphincter", check=False).stdout.strip() == "inactive"
        assert not listening(9100) and not listening(8080)
        assert ct.sh("test -e /usr/bin/sphincter", check=False).returncode != 0
        assert "SPHINCTER_TCP_PORT=9100" in ct.sh("cat /etc/default/sphincter").stdout
        ct.sh("id sphincter")

        # purge: settings, user and enablement gone
        ct.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y sphincter", timeout=unit(120))
        assert ct.sh("test -e /etc/default/sphincter", check=False).returncode != 0
        assert ct.sh("id sphincter", check=False).returncode != 0
        assert ct.sh("ls /etc/systemd/system/multi-user.target.wants/").stdout.count("sphincter") == 0
        assert ct.sh("dpkg-query -W -f '${Status}' sphincter", check=False).stdout.strip() \
            in ("", "unknown ok not-installed")
        wait_for(lambda: not listening(8080), unit(5), "nothing on 8080")
