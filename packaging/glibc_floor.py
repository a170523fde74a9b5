"""Print the glibc floor of a PyInstaller one-file binary: the highest GLIBC_x.y version
that the dynamic linker will insist on for the executable itself or for any shared object
bundled in its archive (elfvers.glibc_floor: every needed version not flagged weak).

Usage: python glibc_floor.py [--max X.Y] BINARY
Runs with the PyInstaller of the build (to read the archive); elfvers.py beside it.
Exit 1 if the floor is above --max.
"""
import argparse
import os
import sys
import tempfile

from PyInstaller.archive.readers import CArchiveReader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import elfvers  # noqa: E402


def needed_versions(path):
    """{the glibc floor of `path`} (an x.y.z tuple), or an empty set if it needs none."""
    with open(path, "rb") as f:
        floor = elfvers.glibc_floor(f.read())
    return {floor} if floor else set()


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
