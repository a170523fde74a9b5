#!/bin/sh
# Build OUTDIR/sphincter_<version>_amd64.deb from the staged release (the directory the tarball
# is made of: the same binary, env file, units and nginx examples), with dpkg-deb from a staged
# tree (no debhelper). packaging/build.sh calls it after the tarball.
#
# Usage: packaging/deb.sh STAGEDIR OUTDIR
# Env:   DEB_VERSION        default: the binary's own (`sphincter --version`)
#        SOURCE_DATE_EPOCH  default: the last commit's time (every mtime; reproducible bytes)
# Needs dpkg-deb, readelf (binutils), gzip, python3 (packaging/manpage.py).
#
# Depends: is what the executable really links (readelf -d), mapped to Debian packages: glibc's
# libraries -> libc6 (>= the floor in GLIBC_FLOOR), libz.so.1 -> zlib1g; any other library
# stops the build (the libraries it bundles need only glibc's: tests/release/test_deb.py).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
stage=${1:?usage: deb.sh STAGEDIR OUTDIR}
outdir=${2:?usage: deb.sh STAGEDIR OUTDIR}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 315532800)
fi
export SOURCE_DATE_EPOCH
MAINTAINER=${DEB_MAINTAINER:-"Sphincter maintainers <maintainers@users.noreply.b-seed-31a8c15f.example>"}
log() { printf 'deb: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

bin=$stage/sphincter
[ -x "$bin" ] || die "no sphincter binary in $stage"
version=${DEB_VERSION:-$("$bin" --version | sed -n 's/^sphincter //p')}
case $version in
    [0-9]*) ;;
    *) die "bad version '$version' (from $bin --version, or DEB_VERSION)" ;;
esac
floor=$(cat "$stage/GLIBC_FLOOR")

# Depends from what the executable links.
depends=""
for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    case $lib in
        libc.so.6|libdl.so.2|libpthread.so.0|libm.so.6|librt.so.1|libutil.so.1|ld-linux-x86-64.so.2)
            pkg="libc6 (>= $floor)" ;;
        libz.so.1) pkg=zlib1g ;;
        *) die "the binary links $lib: map it to its Debian package in packaging/deb.sh" ;;
    esac
    case ", $depends, " in *", $pkg, "*) ;; *) depends=${depends:+$depends, }$pkg ;; esac
done

# A private staging directory (a concurrent run stages its own); its name is not in the .deb.
mkdir -p "$here/build"
work=$(mktemp -d "$here/build/deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
tree=$work/sphincter_$version
mkdir -p "$tree/DEBIAN" "$tree/usr/bin" "$tree/lib/systemd/system" "$tree/etc/default" \
    "$tree/usr/share/man/man1" "$tree/usr/share/doc/sphincter/examples" \
    "$tree/usr/share/lintian/overrides"
# put SRC DEST MODE
put() { cp "$1" "$tree/$2" && chmod "$3" "$tree/$2"; }
put "$bin" usr/bin/sphincter 0755
for unit in sphincter.service sphincter@.service; do
    sed 's|^ExecStart=/usr/local/bin/sphincter|ExecStart=/usr/bin/sphincter|' "$stage/$unit" \
        >"$tree/lib/systemd/system/$unit"
    grep -q '^ExecStart=/usr/bin/sphincter$' "$tree/lib/systemd/system/$unit" \
        || die "$unit: no ExecStart=/usr/local/bin/sphincter line to rewrite"
    chmod 0644 "$tree/lib/systemd/system/$unit"
done
put "$stage/sphincter.env" etc/default/sphincter 0600     # may hold SPHINCTER_ADMIN_TOKEN
for f in nginx-sphincter.conf nginx-cluster.conf nginx-cluster-stream.conf; do
    put "$stage/$f" "usr/share/doc/sphincter/examples/$f" 0644
done
python3 "$here/packaging/manpage.py" "$tree/usr/share/man/man1/sphincter.1"
gzip -9n "$tree/usr/share/man/man1/sphincter.1"
put "$here/packaging/deb/copyright" usr/share/doc/sphincter/copyright 0644
put "$here/packaging/deb/lintian-overrides" usr/share/lintian/overrides/sphincter 0644
# changelog.gz (a native package's): this version, pointing at the project's own changelog
{
    printf 'sphincter (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * Release %s of Sphincter, built from the release binary.\n\n' "$version"
    printf ' -- %s  %s\n' "$MAINTAINER" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$tree/usr/share/doc/sphincter/changelog.gz"
chmod 0644 "$tree/usr/share/doc/sphincter/changelog.gz"

# Control files.
for script in postinst prerm postrm; do
    put "$here/packaging/deb/$script" "DEBIAN/$script" 0755
done
echo /etc/default/sphincter >"$tree/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@MAINTAINER@|$MAINTAINER|" -e "s|@SIZE@|$size|" \
    -e "s|@DEPENDS@|$depends|" "$here/packaging/deb/control.in" >"$tree/DEBIAN/control"
(cd "$tree" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
    xargs md5sum) >"$tree/DEBIAN/md5sums"
chmod 0644 "$tree/DEBIAN/control" "$tree/DEBIAN/conffiles" "$tree/DEBIAN/md5sums"
find "$tree" -type d -exec chmod 0755 {} +
find "$tree" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$outdir"
deb=$outdir/sphincter_${version}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$tree" "$deb.tmp" >/dev/null
mv "$deb.tmp" "$deb"
log "$(cd "$outdir" && sha256sum "sphincter_${version}_amd64.deb") (Depends: $depends)"
