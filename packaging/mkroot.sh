#!/bin/sh
# Make (once) the Debian 11 "bullseye" roots the release uses, cached under build/:
#   build/roots/base   minimal bootable root: systemd, systemd-sysv, iproute2; no Python.
#                      The nspawn tests boot it (with --volatile=overlay, so it stays clean).
#   build/roots/build  copy of base + python3.9, venv, libpython3.9 (shared and the -pic.a
#                      archive the build relinks), libexpat.a, binutils: the PyInstaller
#                      build runs chrooted in it (glibc 2.31; the binary targets 2.17).
# Usage: packaging/mkroot.sh [base|build]   (default: both). Needs root, debootstrap.
# Env: MIRROR (default: the Debian mirror apt already uses, else deb.debian.org).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
roots=${ROOTS:-$here/build/roots}
suite=bullseye
what=${1:-all}
# The build root's packages; a cached root with another list gets the missing ones.
BUILD_PKGS="python3 python3-venv python3-pip libpython3.9 libpython3.9-dev libexpat1-dev binutils ca-certificates"

mirror=${MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                 /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v '^[[:space:]]*#' \
             | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n1 | tr -d ' ' || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

log() { printf 'mkroot: %s\n' "$*" >&2; }

make_base() {
    [ -f "$roots/base/.done" ] && return 0
    rm -rf "$roots/base.tmp"
    mkdir -p "$roots"
    log "debootstrap $suite from $mirror into $roots/base"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,iproute2,procps \
        "$suite" "$roots/base.tmp" "$mirror" >"$roots/debootstrap.log" 2>&1 \
        || { tail -n 30 "$roots/debootstrap.log" >&2; exit 1; }
    # An empty machine-id lets systemd make one at each boot; no getty on the console.
    : >"$roots/base.tmp/etc/machine-id"
    echo sphincter-test >"$roots/base.tmp/etc/hostname"
    rm -f "$roots/base.tmp/etc/systemd/system/getty.target.wants/"* 2>/dev/null || true
    rm -rf "$roots/base.tmp/var/cache/apt/archives/"*.deb
    mv "$roots/base.tmp" "$roots/base"
    touch "$roots/base/.done"
}

apt_in_build_root() {
    _root=$1; shift
    cp /etc/resolv.conf "$_root/etc/resolv.conf"
    chroot "$_root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive sh -c "
        apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends $* >/dev/null &&
        apt-get clean" >"$roots/apt-build.log" 2>&1 \
        || { tail -n 30 "$roots/apt-build.log" >&2; exit 1; }
}

make_build() {
    if [ -f "$roots/build/.done" ]; then
        [ "$(cat "$roots/build/.done")" = "$BUILD_PKGS" ] && return 0
        log "build root: installing $BUILD_PKGS"
        apt_in_build_root "$roots/build" "$BUILD_PKGS"
        echo "$BUILD_PKGS" >"$roots/build/.done"
        return 0
    fi
    make_base
    rm -rf "$roots/build.tmp"
    log "copying base -> build root, installing python3 toolchain"
    cp -a "$roots/base" "$roots/build.tmp"
    rm -f "$roots/build.tmp/.done"
    printf '#!/bin/sh\nexit 101\n' >"$roots/build.tmp/usr/sbin/policy-rc.d"
    chmod 755 "$roots/build.tmp/usr/sbin/policy-rc.d"
    apt_in_build_root "$roots/build.tmp" "$BUILD_PKGS"
    mv "$roots/build.tmp" "$roots/build"
    echo "$BUILD_PKGS" >"$roots/build/.done"
}

case $what in
    base) make_base ;;
    build) make_build ;;
    all) make_base; make_build ;;
    *) echo "usage: $0 [base|build|all]" >&2; exit 2 ;;
esac
