#!/bin/sh
# Build dist/sphincter-linux-x64.tar.gz: a PyInstaller --onefile binary of sphincter.py,
# built inside a Debian 11 (bullseye) root, plus install.sh, uninstall.sh, the env file,
# the unit, the nginx block and a README; and from the same files dist/sphincter_<version>_amd64.deb
# (packaging/deb.sh). The binary runs on glibc >= GLIBC_FLOOR (2.17):
# zig (from PyPI, hash-pinned in packaging/requirements-zig.txt) relinks Debian's libpython
# and builds greenlet against glibc 2.17's symbol versions (packaging/relink.sh), and the
# build fails if the binary or anything it bundles needs more than GLIBC_MAX.
#
# Usage: packaging/build.sh [OUTDIR]        (default OUTDIR: dist)
# Env:   SRC=dir            tree to build (default: this checkout)
#        GLIBC_MAX=2.x      fail if the binary or a bundled library needs a newer glibc
#        SOURCE_DATE_EPOCH  default: the last commit's time (reproducible bytes)
# Needs root (debootstrap, chroot). The roots are cached under build/roots.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
src=$(cd "${SRC:-$here}" && pwd)
outdir=${1:-$here/dist}
GLIBC_MAX=${GLIBC_MAX:-2.17}
name=sphincter-linux-x64
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$src" log -1 --format=%ct 2>/dev/null || echo 315532800)
fi
PYTHONHASHSEED=0
export SOURCE_DATE_EPOCH PYTHONHASHSEED
log() { printf 'build: %s\n' "$*" >&2; }

[ -f "$src/sphincter.py" ] || { log "no sphincter.py in $src"; exit 1; }
# One build at a time per checkout (the roots and the venv are shared).
mkdir -p "$here/build"
exec 9>"$here/build/.lock"
flock 9
sh "$here/packaging/mkroot.sh" build
root=$here/build/roots/build
# shellcheck disable=SC1091  # sourced helper, checked on its own
. "$here/packaging/chroot-env.sh"

# 1. zig, then the build venv, each per lock-file content, reused across builds. greenlet is
#    the one C++ extension: built from its (hash-pinned) sdist by zig c++, which links LLVM's
#    libc++ in statically, so no libstdc++.so.6 (GLIBC_2.18) is bundled.
zigreq=$here/packaging/requirements-zig.txt
zigvenv=/opt/zig-$(sha256sum "$zigreq" | cut -c1-12)
if [ ! -x "$root$zigvenv/bin/zig-c++" ]; then
    log "installing the hash-pinned zig toolchain into $zigvenv"
    cp "$zigreq" "$root/tmp/requirements-zig.txt"
    rm -rf "$root$zigvenv"
    run_in_root "$root" sh -c "python3 -m venv $zigvenv &&
        $zigvenv/bin/pip install -q --require-hashes --no-deps --only-binary :all: \
            -r /tmp/requirements-zig.txt"
    for tool in cc c++; do
        # zig brings its own libc headers; /usr/include comes after them (Debian's
        # pyconfig.h includes <x86_64-linux-gnu/python3.9/pyconfig.h>).
        printf '#!/bin/sh\nexec %s/bin/python -m ziglang %s -target x86_64-linux-gnu.2.17 -idirafter /usr/include "$@"\n' \
            "$zigvenv" "$tool" >"$root$zigvenv/bin/zig-$tool.tmp"
        chmod 0755 "$root$zigvenv/bin/zig-$tool.tmp"
        mv "$root$zigvenv/bin/zig-$tool.tmp" "$root$zigvenv/bin/zig-$tool"
    done
fi
req=$here/packaging/requirements-build.txt
venv=/opt/venv-$(cat "$req" "$zigreq" | sha256sum | cut -c1-12)
if [ ! -x "$root$venv/bin/pyinstaller" ]; then
    log "installing the hash-pinned build requirements into $venv (greenlet built by zig c++)"
    cp "$req" "$root/tmp/requirements-build.txt"
    # setuptools first (hash-checked too): it builds greenlet, without build isolation.
    awk '/^setuptools==/ {p=1} p {print} p && !/\\$/ {p=0}' "$req" >"$root/tmp/requirements-setuptools.txt"
    rm -rf "$root$venv"
    run_in_root "$root" env CC="$zigvenv/bin/zig-cc" CXX="$zigvenv/bin/zig-c++" \
        LDSHARED="$zigvenv/bin/zig-cc -shared" LDCXXSHARED="$zigvenv/bin/zig-c++ -shared" LDFLAGS=-s \
        sh -c "python3 -m venv $venv &&
        $venv/bin/pip install -q --require-hashes --no-deps --only-binary :all: \
            -r /tmp/requirements-setuptools.txt &&
        $venv/bin/pip install -q --require-hashes --no-deps --only-binary :all: \
            --no-binary greenlet --no-build-isolation -r /tmp/requirements-build.txt" \
        >"$here/build/venv.log" 2>&1 || { cat "$here/build/venv.log" >&2; exit 1; }
fi

# 1b. libpython and libcrypto with the lower floor (every build: a link, under a second).
mkdir -p "$root/tmp/pyi"
cp "$here/packaging/relink.sh" "$here/packaging/glibc_compat.c" "$here/packaging/elfvers.py" \
    "$root/tmp/pyi/"
run_in_root "$root" sh /tmp/pyi/relink.sh "$zigvenv/bin/python" >"$here/build/relink.log" 2>&1 \
    || { cat "$here/build/relink.log" >&2; exit 1; }

# 2. A clean copy of the sources, every mtime pinned.
rm -rf "$root/src" "$root/tmp/pyi"
mkdir -p "$root/tmp/pyi"
sh "$here/packaging/stage_src.sh" "$src" "$root/src"
# Package data (the viewer's static files, read with importlib.resources) goes in as data.
adddata=""
if [ -d "$root/src/sphincter_lib/static" ]; then
    adddata="--add-data /src/sphincter_lib/static:sphincter_lib/static"
fi
cp "$here/packaging/glibc_floor.py" "$here/packaging/elfvers.py" "$root/tmp/pyi/"
find "$root/src" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# 3. PyInstaller --onefile, then the glibc floor of the binary and everything it bundles.
#    _uuid is left out: it would bundle libuuid.so.1 (getrandom, GLIBC_2.25), and the uuid
#    module (which nothing here uses) works without it.
log "pyinstaller --onefile (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH PYTHONHASHSEED=$PYTHONHASHSEED)"
run_in_root "$root" sh -c "cd /tmp/pyi &&
    $venv/bin/pyinstaller --onefile --name sphincter --noconfirm --clean --log-level WARN \
        --exclude-module _uuid \
        --distpath /tmp/pyi/dist --workpath /tmp/pyi/work --specpath /tmp/pyi $adddata /src/sphincter.py &&
    $venv/bin/python /tmp/pyi/glibc_floor.py --max $GLIBC_MAX /tmp/pyi/dist/sphincter" \
    >"$here/build/pyinstaller.log" 2>&1 || { cat "$here/build/pyinstaller.log" >&2; exit 1; }
floor=$(sed -n 's/^glibc floor: //p' "$here/build/pyinstaller.log")
log "glibc floor: $floor (max allowed $GLIBC_MAX)"

# 4. The archive: fixed order, owner, mtimes; gzip without name/time.
stage=$here/build/stage
rm -rf "$stage"
mkdir -p "$stage/$name" "$outdir"
cp "$root/tmp/pyi/dist/sphincter" "$stage/$name/sphincter"
cp "$here/install.sh" "$here/uninstall.sh" "$stage/$name/"
cp "$here/conf/sphincter.env" "$here/conf/sphincter.service" "$here/conf/sphincter@.service" \
   "$here/conf/nginx-sphincter.conf" "$here/conf/nginx-cluster.conf" \
   "$here/conf/nginx-cluster-stream.conf" \
   "$here/packaging/README.dist" "$stage/$name/"
mv "$stage/$name/README.dist" "$stage/$name/README"
chmod 0755 "$stage/$name/sphincter" "$stage/$name/install.sh" "$stage/$name/uninstall.sh"
chmod 0644 "$stage/$name/sphincter.env" "$stage/$name/sphincter.service" \
    "$stage/$name/sphincter@.service" "$stage/$name/nginx-sphincter.conf" \
    "$stage/$name/nginx-cluster.conf" "$stage/$name/nginx-cluster-stream.conf" "$stage/$name/README"
echo "$floor" >"$stage/$name/GLIBC_FLOOR"
chmod 0644 "$stage/$name/GLIBC_FLOOR"
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    --format=gnu -cf - "$name" | gzip -9n >"$outdir/$name.tar.gz.tmp"
mv "$outdir/$name.tar.gz.tmp" "$outdir/$name.tar.gz"
log "$(cd "$outdir" && sha256sum "$name.tar.gz")"
log "binary sha256 $(sha256sum "$stage/$name/sphincter" | cut -d' ' -f1), $(stat -c %s "$stage/$name/sphincter") bytes"

# 5. The .deb, from the same binary and files (packaging/deb.sh).
sh "$here/packaging/deb.sh" "$stage/$name" "$outdir"
