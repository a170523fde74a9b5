#!/bin/sh
# Build dist/sphincter-VERSION-1.x86_64.rpm from the release tarball (the same binary):
# /usr/bin/sphincter, the units in /usr/lib/systemd/system (paths rewritten for the package),
# /etc/sysconfig/sphincter (%config(noreplace)), the nginx examples and README under
# /usr/share/doc/sphincter, the man page; scriptlets in packaging/rpm/sphincter.spec.
#
# Usage: packaging/rpm/build.sh [TARBALL [OUTDIR]]
#        (default: dist/sphincter-linux-x64.tar.gz, dist)
# Env:   SOURCE_DATE_EPOCH  default: the last commit's time (reproducible bytes)
#        PYTHON             runs packaging/manpage.py (default: .venv/bin/python, else python3)
# Needs rpmbuild (Debian: apt-get install rpm); runs rpmlint when it is installed.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
tarball=${1:-$here/dist/sphincter-linux-x64.tar.gz}
outdir=${2:-$here/dist}
name=sphincter-linux-x64
log() { printf 'build-rpm: %s\n' "$*" >&2; }

command -v rpmbuild >/dev/null 2>&1 || { log "rpmbuild not found: apt-get install rpm"; exit 1; }
[ -f "$tarball" ] || { log "no $tarball (make dist builds it)"; exit 1; }
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 315532800)
fi
export SOURCE_DATE_EPOCH
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x "$here/.venv/bin/python" ] && PYTHON=$here/.venv/bin/python
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/src" "$work/top" "$outdir"
tar -xzf "$tarball" -C "$work/src"
src=$work/src/$name
version=$("$src/sphincter" --version)
version=${version#sphincter }
case $version in
    ''|*[!A-Za-z0-9.+~_]*) log "unexpected version '$version' from sphincter --version"; exit 1 ;;
esac

# The package's paths: /usr/bin and Red Hat's /etc/sysconfig instead of install.sh's.
for f in sphincter.service sphincter@.service sphincter.env; do
    sed -e 's|/usr/local/bin/sphincter|/usr/bin/sphincter|g' \
        -e 's|/etc/default/sphincter|/etc/sysconfig/sphincter|g' \
        -e 's|Installed by install.sh|Installed by the sphincter package|' \
        -e 's|/etc/systemd/system/sphincter|/usr/lib/systemd/system/sphincter|g' \
        "$src/$f" >"$src/$f.tmp"
    mv "$src/$f.tmp" "$src/$f"
done

# The man page, generated from the option table (the .deb's is the same).
"$PYTHON" "$here/packaging/manpage.py" "$work/sphincter.1"
gzip -9n <"$work/sphincter.1" >"$src/sphincter.1.gz"
# The changelog entry: this version, dated SOURCE_DATE_EPOCH.
cp "$here/packaging/rpm/sphincter.spec" "$work/sphincter.spec"
printf '\n%%changelog\n* %s Sphincter maintainers - %s-1\n- Release %s (see CHANGELOG.md).\n' \
    "$(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %d %Y')" "$version" "$version" \
    >>"$work/sphincter.spec"
find "$src" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

log "rpmbuild sphincter $version (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
# gzip payload and sha256 digests: readable by the rpm of RHEL/CentOS 7 (the glibc 2.17 floor).
rpmbuild -bb --quiet --target x86_64-linux \
    --define "_topdir $work/top" \
    --define "sph_version $version" \
    --define "sph_src $src" \
    --define "_binary_payload w9.gzdio" \
    --define "_binary_filedigest_algorithm 8" \
    --define "_buildhost reproducible" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    --define "_source_payload w9.gzdio" \
    "$work/sphincter.spec" >"$work/rpmbuild.log" 2>&1 \
    || { cat "$work/rpmbuild.log" >&2; exit 1; }
rpm=sphincter-$version-1.x86_64.rpm
cp "$work/top/RPMS/x86_64/$rpm" "$outdir/$rpm.tmp"
mv "$outdir/$rpm.tmp" "$outdir/$rpm"
if command -v rpmlint >/dev/null 2>&1; then
    rpmlint -r "$here/packaging/rpm/sphincter.rpmlintrc" "$outdir/$rpm" >&2 || { log "rpmlint found errors"; exit 1; }
else
    log "rpmlint not installed: skipped"
fi
log "$(cd "$outdir" && sha256sum "$rpm")"
