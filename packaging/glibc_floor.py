"""Print the glibc floor of a PyInstaller one-file binary: the highest GLIBC_x.y symbol
version needed by the executable itself or by any shared object bundled in its archive.

Usage: python glibc_floor.py [--max X.Y] BINARY
Runs with the PyInstaller of the build (to read the archive) and binutils' objdump.
Exit 1 if the floor is above --max.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

from PyInstaller.archive.readers import CArchiveReader

VERSION_RE = re.compile(r"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?")


def needed_versions(path):
    """The set of GLIBC_x.y versions `path` references in its dynamic symbol table."""
    out = subprocess.run(["objdump", "-T", path], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, check=False).stdout.decode("latin-1")
    return {tuple(int(p or 0) for p in m.groups()) for m in VERSION_RE.finditer(out)}


def bundled_binaries(binary, dest):
    """Extract every ELF file of the one-file archive into `dest`; yield (name, path)."""
    reader = CArchiveReader(binary)
    for name in sorted(reader.toc):
        data = reader.extract(name)
        if not data or data[:4] != b"\x7fELF":
            continue
        path = os.path.join(dest, name.replace("/", "__"))
        with open(path, "wb") as f:
            f.write(data)
        yield name, path


def fmt(version):
    return "%d.%d" % version[:2] if not version[2] else "%d.%d.%d" % version


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max", default=None, help="fail above this glibc version")
    ap.add_argument("binary")
    args = ap.parse_args()
    per_file = {"(executable)": needed_versions(args.binary)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in bundled_binaries(args.binary, tmp):
            per_file[name] = needed_versions(path)
    floor = (0, 0, 0)
    for name, versions in sorted(per_file.items()):
        top = max(versions) if versions else (0, 0, 0)
        print("%-50s %s" % (name, fmt(top) if versions else "-"))
        floor = max(floor, top)
    print("glibc floor: %s" % fmt(floor))
    if args.max:
        limit = tuple(int(p) for p in args.max.split(".")) + (0,) * (3 - len(args.max.split(".")))
        if floor > limit:
            print("error: glibc floor %s is above the allowed %s" % (fmt(floor), args.max))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
