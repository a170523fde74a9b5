#!/bin/sh
# Remove Sphincter: stop and disable the service, remove the unit and the binary.
#
#   sudo ./uninstall.sh            keeps /etc/default/sphincter and the sphincter user
#   sudo ./uninstall.sh --purge    removes them too
#   DESTDIR=/tmp/root ./uninstall.sh [--purge]   same, in a staged root; systemd untouched
#
# Running it twice is harmless.
set -eu

BINDIR=/usr/local/bin
UNITDIR=/etc/systemd/system
CONFFILE=/etc/default/sphincter
SERVICE=sphincter.service
USERNAME=sphincter

destdir=${DESTDIR:-}
purge=0

say() { printf 'uninstall.sh: %s\n' "$*"; }
die() { printf 'uninstall.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,8s/^# \{0,1\}//p' "$0"
}

for arg in "$@"; do
    case $arg in
        --purge) purge=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0), or set DESTDIR="
fi

systemd=0
if [ -z "$destdir" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemd=1
fi

if [ "$systemd" = 1 ]; then
    systemctl disable --now --quiet "$SERVICE" 2>/dev/null || true
fi
rm -f "$destdir$UNITDIR/$SERVICE" "$destdir$BINDIR/sphincter" "$destdir$CONFFILE.new"
if [ "$systemd" = 1 ]; then
    systemctl daemon-reload
    systemctl reset-failed "$SERVICE" 2>/dev/null || true
fi
say "removed the service and $BINDIR/sphincter"

if [ "$purge" = 1 ]; then
    rm -f "$destdir$CONFFILE"
    if [ -z "$destdir" ] && id "$USERNAME" >/dev/null 2>&1; then
        userdel "$USERNAME"
    fi
    say "purged $CONFFILE and the $USERNAME user"
elif [ -e "$destdir$CONFFILE" ]; then
    say "kept $CONFFILE (--purge removes it)"
fi
