"""Release tier (slow): dist/sphincter-VERSION-1.x86_64.rpm (issue 23), made by
packaging/rpm/build.sh from the release tarball of the session (the same binary).

Checked here: the name and header, the file list with modes, owners and flags
(`%config(noreplace)` /etc/sysconfig/sphincter), the dependencies (glibc >= 2.17 and zlib's
libz.so.1, nothing else), reproducible bytes, rpmlint, the scriptlets through shellcheck; then
`rpm --root SCRATCH --noscripts -i` lands the files with their modes, and those files and the
package's own scriptlets (%pre, %post, %preun, %postun as rpm runs them: `sh -c SCRIPT - N`)
run under a real systemd (the bullseye root booted by systemd-nspawn): install creates the user,
enables and starts the service (a source and a subscriber through it), an upgrade restarts it
once the new binary's check passes and leaves it alone when the settings fail it, removal stops
and disables it and the template's instances.

Not run here: an install by dnf/yum (dependency resolution, the transaction's ordering) and the
scriptlets under an RPM-based distribution's own systemd and shadow-utils; this machine cannot
make an RPM-based root (no such repository is reachable), so the scriptlets run with Debian's
systemctl/useradd/getent, which take the same arguments.

Needs rpm (rpmbuild), shellcheck, systemd-nspawn; rpmlint is run when installed
(scripts/apt-deps.d/release.txt lists it; under CI=true a missing one fails).
"""
import hashlib
import os
import re
import tarfile

import pytest

from release_helpers import (ROOT, Container, release_tarball, require, require_root,
                             require_tools, run, unit)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

with open(os.path.join(ROOT, "sphincter_lib", "__init__.py")) as _f:
    VERSION = re.search(r'__version__ = "([^"]+)"', _f.read()).group(1)
RPM = "sphincter-%s-1.x86_64.rpm" % VERSION
FILES = {  # path -> (mode, owner, group, flags)
    "/usr/bin/sphincter": ("-rwxr-xr-x", "root", "root", ""),
    "/usr/lib/systemd/system/sphincter.service": ("-rw-r--r--", "root", "root", ""),
    "/usr/lib/systemd/system/sphincter@.service": ("-rw-r--r--", "root", "root", ""),
    "/etc/sysconfig/sphincter": ("-rw-------", "root", "root", "cn"),  # config(noreplace)
    "/etc/sphincter": ("drwxr-xr-x", "root", "root", ""),
    "/etc/sphincter/instances": ("drwxr-xr-x", "root", "root", ""),
    "/usr/share/doc/sphincter": ("drwxr-xr-x", "root", "root", ""),
    "/usr/share/doc/sphincter/README": ("-rw-r--r--", "root", "root", "d"),
    "/usr/share/doc/sphincter/nginx-sphincter.conf": ("-rw-r--r--", "root", "root", "d"),
    "/usr/share/doc/sphincter/nginx-cluster.conf": ("-rw-r--r--", "root", "root", "d"),
    "/usr/share/doc/sphincter/nginx-cluster-stream.conf": ("-rw-r--r--", "root", "root", "d"),
    "/usr/share/man/man1/sphincter.1.gz": ("-rw-r--r--", "root", "root", "d"),
}
SCRIPTLETS = ("PREIN", "POSTIN", "PREUN", "POSTUN")


def build_rpm(tarball, outdir):
    require_tools("rpmbuild", "sh")
    proc = run(["sh", os.path.join(ROOT, "packaging", "rpm", "build.sh"), tarball, str(outdir)],
               timeout=unit(300), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = os.path.join(str(outdir), RPM)
    assert os.path.isfile(path), sorted(os.listdir(str(outdir)))
    return path, proc


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    return release_tarball(tmp_path_factory)


@pytest.fixture(scope="module")
def rpm(tarball, tmp_path_factory):
    path, proc = build_rpm(tarball, tmp_path_factory.mktemp("rpm"))
    print(proc.stderr)
    return path


def query(path, fmt):
    require_tools("rpm")
    return run(["rpm", "-qp", "--qf", fmt, path]).stdout


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_header(rpm):
    assert query(rpm, "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{OS}") == "sphincter %s 1 x86_64 linux" % VERSION
    # readable by the rpm of RHEL/CentOS 7 (the glibc 2.17 floor): gzip payload, no zstd
    assert query(rpm, "%{PAYLOADCOMPRESSOR}") == "gzip"
    assert "/etc/sysconfig/sphincter" in query(rpm, "%{DESCRIPTION}")


def test_file_list_modes_and_config(rpm):
    lines = query(rpm, "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags} "
                       "%{FILENAMES}\n]").splitlines()
    got = {}
    for line in lines:
        parts = line.split(" ")
        mode, owner, group, flags, name = parts if len(parts) == 5 else parts[:3] + [""] + parts[3:]
        got[name] = (mode, owner, group, flags)
    assert got == FILES
    assert run(["rpm", "-qpc", rpm]).stdout.split() == ["/etc/sysconfig/sphincter"]


def test_dependencies_are_the_binarys_and_nothing_else(rpm, tarball):
    with tarfile.open(tarball) as tar:
        floor = tar.extractfile("sphincter-linux-x64/GLIBC_FLOOR").read().decode().strip()
    requires = set(run(["rpm", "-qpR", rpm]).stdout.splitlines())
    assert {r for r in requires if not r.startswith("rpmlib(")} == {
        "glibc >= %s" % floor, "libz.so.1()(64bit)", "/bin/sh"}  # /bin/sh: the scriptlets
    provides = set(run(["rpm", "-qp", "--provides", rpm]).stdout.splitlines())
    assert provides == {"sphincter = %s-1" % VERSION, "sphincter(x86-64) = %s-1" % VERSION}
    assert not run(["rpm", "-qp", "--conflicts", "--obsoletes", rpm]).stdout.strip()


def test_same_bytes_twice_and_rpmlint_clean(rpm, tarball, tmp_path):
    again, _ = build_rpm(tarball, tmp_path)
    with open(rpm, "rb") as a, open(again, "rb") as b:
        assert sha256(a.read()) == sha256(b.read()), "the .rpm is not reproducible"
    require_tools("rpmlint")
    lint = run(["rpmlint", "-r", os.path.join(ROOT, "packaging", "rpm", "sphincter.rpmlintrc"), rpm],
               check=False)
    assert lint.returncode == 0 and " 0 errors" in lint.stdout, lint.stdout + lint.stderr


def scriptlets(rpm):
    return {name: query(rpm, "%{" + name + "}") for name in SCRIPTLETS}


def test_scriptlets_are_sh_and_shellcheck_clean(rpm, tmp_path):
    require_tools("shellcheck")
    for name, text in scriptlets(rpm).items():
        assert query(rpm, "%{" + name + "PROG}") == "/bin/sh", name
        path = tmp_path / name
        path.write_text("#!/bin/sh\n" + text)
        proc = run(["shellcheck", "--shell=sh", str(path)], check=False)
        assert proc.returncode == 0, name + "\n" + proc.stdout
    proc = run(["shellcheck", "--shell=sh", os.path.join(ROOT, "packaging", "rpm", "build.sh")],
               check=False)
    assert proc.returncode == 0, proc.stdout


@pytest.fixture(scope="module")
def scratch(rpm, tmp_path_factory):
    """The payload as `rpm --root DIR -i` lays it out (no scriptlets: DIR has no /bin/sh)."""
    where = tmp_path_factory.mktemp("scratch")
    root = where / "root"
    root.mkdir()
    run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "--nodeps", "--noscripts",
         "--ignorearch", "--ignoreos", "-i", rpm], timeout=unit(120))
    for name, text in scriptlets(rpm).items():
        (where / name).write_text(text)
    return where


def test_rpm_installs_the_release_binary_with_the_packages_paths(scratch, tarball):
    root = scratch / "root"
    for path, (mode, _owner, _group, _flags) in FILES.items():
        st = os.lstat(str(root) + path)
        assert oct(st.st_mode & 0o7777) == oct(_perms(mode)), path
        assert st.st_uid == 0 and st.st_gid == 0, path
    with tarfile.open(tarball) as tar:
        shipped = tar.extractfile("sphincter-linux-x64/sphincter").read()
    with open(str(root / "usr/bin/sphincter"), "rb") as f:
        assert sha256(f.read()) == sha256(shipped), "not the release binary"
    assert run([str(root / "usr/bin/sphincter"), "--version"]).stdout.strip() == "sphincter " + VERSION
    for unit_name in ("sphincter.service", "sphincter@.service"):
        text = (root / "usr/lib/systemd/system" / unit_name).read_text()
        assert "ExecStart=/usr/bin/sphincter\n" in text and "EnvironmentFile=-/etc/sysconfig/sphincter\n" in text
        assert "/usr/local/bin" not in text and "/etc/default" not in text, unit_name
    assert "/etc/default" not in (root / "etc/sysconfig/sphincter").read_text()


def test_config_noreplace_survives_reinstall_and_removal(rpm, tmp_path):
    """rpm's own handling of %config(noreplace) in a scratch root: an edited
    /etc/sysconfig/sphincter is kept by a reinstall and saved as .rpmsave on removal."""
    root = tmp_path / "root"
    root.mkdir()
    base = ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm"]
    install = ["--nodeps", "--noscripts", "--ignorearch", "--ignoreos"]
    run(base + install + ["-i", rpm], timeout=unit(120))
    conf = root / "etc/sysconfig/sphincter"
    conf.write_text(conf.read_text() + "SPHINCTER_ROOM_GRACE=10\n")
    run(base + install + ["-U", "--replacepkgs", rpm], timeout=unit(120))
    assert conf.read_text().endswith("SPHINCTER_ROOM_GRACE=10\n")
    assert run(base + ["-q", "sphincter"]).stdout.strip() == "sphincter-%s-1.x86_64" % VERSION
    run(base + ["--nodeps", "--noscripts", "-e", "sphincter"], timeout=unit(120))
    assert not (root / "usr/bin/sphincter").exists() and not conf.exists()
    assert (root / "etc/sysconfig/sphincter.rpmsave").read_text().endswith("SPHINCTER_ROOM_GRACE=10\n")


def _perms(text):
    bits, mode = "rwxrwxrwx", 0
    for i, c in enumerate(text[1:10]):
        if c == bits[i]:
            mode |= 1 << (8 - i)
    return mode


def base_root():
    root = os.path.join(ROOT, "build", "roots", "base")
    require("the debootstrapped bullseye root", os.path.isfile(os.path.join(root, ".done")),
            "packaging/mkroot.sh base")
    return root


@pytest.mark.timeout(600)
def test_scriptlets_under_systemd(scratch, tmp_path):
    """The payload copied in as rpm would put it, then the package's scriptlets with rpm's
    arguments: install (pre 1, post 1), upgrade (pre 2, post 2) with good and with bad settings,
    removal (preun 0, postun 0)."""
    require_root("systemd-nspawn boots a container")
    require_tools("systemd-nspawn", "nsenter")
    with Container(base_root(), tmp_path / "nspawn.log", binds_ro=[(str(scratch), "/rpm")]) as ct:
        def scriptlet(name, arg):
            out = ct.sh("sh -c \"$(cat /rpm/%s)\" - %d" % (name, arg), check=False, timeout=unit(120))
            assert out.returncode == 0, (name, out.stdout, out.stderr)
            return out.stdout + out.stderr

        def main_pid():
            return ct.sh("systemctl show -p MainPID --value sphincter").stdout.strip()

        def state(unit_name="sphincter"):
            return (ct.sh("systemctl is-active %s" % unit_name, check=False).stdout.strip(),
                    ct.sh("systemctl is-enabled %s" % unit_name, check=False).stdout.strip())

        ct.sh("! id sphincter 2>/dev/null")
        # install: %pre (user), the payload, %post (enable, check, start)
        scriptlet("PREIN", 1)
        assert int(ct.sh("id -u sphincter").stdout) < 1000, "not a system user"
        ct.sh("cp -a /rpm/root/usr /rpm/root/etc /")
        scriptlet("POSTIN", 1)
        assert state() == ("active", "enabled")
        ct.relay(9000, 8080)
        pid = main_pid()
        assert ct.sh("ps -o user= -p %s" % pid).stdout.strip() == "sphincter"

        # upgrade with good settings: restarted (and a running instance of the template too)
        ct.sh("printf 'SPHINCTER_TCP_PORT=9001\\nSPHINCTER_WS_PORT=8081\\n' >/etc/sphincter/instances/1.env"
              " && systemctl start sphincter@1")
        inst_pid = ct.sh("systemctl show -p MainPID --value sphincter@1").stdout.strip()
        scriptlet("PREIN", 2)
        scriptlet("POSTIN", 2)
        assert state() == ("active", "enabled") and main_pid() != pid
        assert ct.sh("systemctl show -p MainPID --value sphincter@1").stdout.strip() != inst_pid
        ct.relay(9000, 8080)
        ct.relay(9001, 8081)

        # upgrade with settings the new binary refuses: nothing restarted, the reason said
        pid = main_pid()
        ct.sh("echo SPHINCTER_TCP_PORT=99999 >>/etc/sysconfig/sphincter")
        out = scriptlet("POSTIN", 2)
        assert "does not pass the check" in out and "99999" in out, out
        assert state() == ("active", "enabled") and main_pid() == pid
        ct.relay(9000, 8080)

        # removal: the service and the instance stopped and disabled; the user stays
        ct.sh("systemctl enable sphincter@1")
        scriptlet("PREUN", 0)
        ct.sh("rm -rf /usr/bin/sphincter /usr/lib/systemd/system/sphincter.service"
              " /usr/lib/systemd/system/sphincter@.service")
        scriptlet("POSTUN", 0)
        assert state()[0] in ("inactive", "unknown") and state()[1] not in ("enabled",)
        assert state("sphincter@1")[0] in ("inactive", "unknown")
        assert not ct.sh("ls /etc/systemd/system/multi-user.target.wants/ | grep sphincter || true").stdout.strip()
        ct.sh("id sphincter")


def test_make_dist_builds_the_rpm():
    with open(os.path.join(ROOT, "mk", "release.mk")) as f:
        assert "packaging/rpm/build.sh dist/sphincter-linux-x64.tar.gz dist" in f.read()
