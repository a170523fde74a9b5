#!/bin/sh
# Remove Sphincter: stop and disable the service and its sphincter@ instances, remove the
# units and the binary.
#
#   sudo ./uninstall.sh            keeps /etc/default/sphincter, /etc/sphincter/instances and the user
#   sudo ./uninstall.sh --purge    removes them too
#   DESTDIR=/tmp/root ./uninstall.sh [--purge]   same, in a staged root; systemd untouched
#
# Running it twice is harmless.
set -eu

BINDIR=/usr/local/bin
UNITDIR=/etc/systemd/system
CONFFILE=/etc/default/sphincter
SERVICE=sphincter.service
TEMPLATE=sphincter@.service
INSTANCEDIR=/etc/sphincter/instances
USERNAME=sphincter

destdir=${DESTDIR:-}
purge=0

say() { printf 'uninstall.sh: %s\n' "$*"; }
die() { printf 'uninstall.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "$0"
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

# instances: the loaded ones (running, failed ...), the enabled ones, the configured ones
instances() {
    systemctl list-units --all --plain --no-legend 'sphincter@*.service' 2>/dev/null |
        sed -n 's/^[^a-z]*\(sphincter@[^ ]*\.service\).*/\1/p'
    for f in "$UNITDIR"/*.wants/sphincter@*.service "$INSTANCEDIR"/*.env; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        name=${f##*/}
        case $name in *.env) name="sphincter@${name%.env}.service" ;; esac
        echo "$name"
    done
}

if [ "$systemd" = 1 ]; then
    for unit in $SERVICE $(instances | sort -u); do
        systemctl disable --now --quiet "$unit" 2>/dev/null || true
    done
fi
rm -f "$destdir$UNITDIR/$SERVICE" "$destdir$UNITDIR/$TEMPLATE" "$destdir$BINDIR/sphincter" \
    "$destdir$CONFFILE.new"
if [ "$systemd" = 1 ]; then
    systemctl daemon-reload
    systemctl reset-failed "$SERVICE" 'sphincter@*.service' 2>/dev/null || true
fi
say "removed the services and $BINDIR/sphincter"

if [ "$purge" = 1 ]; then
    rm -f "$destdir$CONFFILE" "$destdir$INSTANCEDIR"/*.env
    rmdir "$destdir$INSTANCEDIR" "$destdir${INSTANCEDIR%/*}" 2>/dev/null || true   # if empty
    if [ -z "$destdir" ] && id "$USERNAME" >/dev/null 2>&1; then
        userdel "$USERNAME"
    fi
    say "purged $CONFFILE, $INSTANCEDIR/*.env and the $USERNAME user"
elif [ -e "$destdir$CONFFILE" ] || [ -d "$destdir$INSTANCEDIR" ]; then
    say "kept $CONFFILE and $INSTANCEDIR (--purge removes them)"
fi
