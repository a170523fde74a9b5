# Sourced by the packaging scripts: run a command chrooted in a bullseye root with a clean
# environment, /proc mounted for the duration, and the host's CA bundle for pip (the host
# may sit behind a TLS-inspecting proxy whose CA only the host bundle has).
# shellcheck shell=sh
run_in_root() {
    _root=$1; shift
    cp /etc/resolv.conf "$_root/etc/resolv.conf"
    _cert=/etc/ssl/certs/ca-certificates.crt
    [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ] && _cert=$PIP_CERT
    cp "$_cert" "$_root/etc/ssl/certs/host-ca-bundle.crt"
    mountpoint -q "$_root/proc" || mount -t proc proc "$_root/proc"
    _rc=0
    chroot "$_root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_DEFAULT_TIMEOUT=120 PIP_NO_CACHE_DIR=1 \
        SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-}" PYTHONHASHSEED="${PYTHONHASHSEED:-0}" \
        "$@" || _rc=$?
    umount "$_root/proc" 2>/dev/null || umount -l "$_root/proc" 2>/dev/null || true
    return $_rc
}
