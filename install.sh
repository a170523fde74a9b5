#!/bin/sh
# Install Sphincter from this directory: the binary, /etc/default/sphincter, the systemd units.
#
#   sudo ./install.sh               install or upgrade, then (re)start the service
#   sudo ./install.sh --no-start    install the files only; systemd is not touched
#   DESTDIR=/tmp/root ./install.sh  stage into a root (implies --no-start, no user created)
#
# An existing /etc/default/sphincter is never overwritten: when the shipped defaults differ
# they are written beside it as /etc/default/sphincter.new. Running it twice is harmless.
# Before anything is touched, the new binary checks the settings (sphincter --check-config):
# a bad value stops the install and the running service is left alone.
# Several nodes (sphincter@.service): each /etc/sphincter/instances/NAME.env is checked with the
# shared settings, and sphincter@NAME is (re)started instead of sphincter.service.
set -eu

BINDIR=/usr/local/bin
UNITDIR=/etc/systemd/system
CONFFILE=/etc/default/sphincter
SERVICE=sphincter.service
TEMPLATE=sphincter@.service
INSTANCEDIR=/etc/sphincter/instances
USERNAME=sphincter

here=$(cd "$(dirname "$0")" && pwd)
destdir=${DESTDIR:-}
start=1

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "$0"
}

for arg in "$@"; do
    case $arg in
        --no-start) start=0 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done
[ -z "$destdir" ] || start=0

for f in sphincter sphincter.env sphincter.service sphincter@.service; do
    [ -f "$here/$f" ] || die "missing $here/$f (run me from the unpacked release)"
done

# 1. The binary must run on this machine before anything is touched. Its bootloader
#    (PyInstaller's) links the host's zlib, which minimal images may lack: the dynamic
#    loader's own message says so, and is turned into the command that installs it.
if ! version=$("$here/sphincter" --version 2>&1); then
    case $version in
        *"libz.so.1: cannot open shared object file"*)
            die "this machine lacks libz.so.1 (zlib), which the sphincter binary needs: install it (Debian/Ubuntu: apt-get install zlib1g; RHEL/Fedora: dnf install zlib) and run install.sh again" ;;
    esac
    die "the sphincter binary does not run on this machine: $version"
fi
say "installing $version"

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0), or set DESTDIR= to stage the files"
fi

# check_config ENVFILE [INSTANCEFILE NODENAME]: the new binary validates the settings the
# service would get (like nginx -t; it binds nothing). Each file is read as the unit's
# EnvironmentFile= reads KEY=VALUE lines (blank and #/; comment lines skipped, white space
# around key and value and one pair of surrounding quotes removed; a later file wins) into an
# otherwise empty environment (for an instance: SPHINCTER_NODE_NAME=NODENAME first, as the
# template's Environment=); as the service user when it exists, so a key file it cannot read
# fails here too.
check_config() {
    envfile=$1
    instfile=${2:-}
    nodename=${3:-}
    set --
    [ -z "$instfile" ] || set -- "SPHINCTER_NODE_NAME=$nodename"
    for which in shared instance; do
        f=$envfile
        if [ "$which" = instance ]; then f=$instfile; fi
        [ -n "$f" ] || continue
        while IFS= read -r line || [ -n "$line" ]; do
            line=${line#"${line%%[![:space:]]*}"}
            case $line in ''|'#'*|';'*) continue ;; esac
            key=${line%%=*}
            value=${line#*=}
            key=${key%"${key##*[![:space:]]}"}
            value=${value#"${value%%[![:space:]]*}"}
            value=${value%"${value##*[![:space:]]}"}
            case $key in ''|[0-9]*|*[!A-Za-z0-9_]*) continue ;; esac
            case $value in
                \"*\") value=${value#\"}; value=${value%\"} ;;
                \'*\') value=${value#\'}; value=${value%\'} ;;
            esac
            set -- "$@" "$key=$value"
        done <"$f"
    done
    as=""   # as root when the user does not exist yet or cannot reach this directory
    if [ -z "$destdir" ] && id "$USERNAME" >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1 &&
        runuser -u "$USERNAME" -- test -x "$here/sphincter" 2>/dev/null; then
        as="runuser -u $USERNAME --"
    fi
    # shellcheck disable=SC2086  # $as: the runuser prefix, or nothing
    (cd / && $as env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@" "$here/sphincter" --check-config 2>&1)
}

# 2. The settings must pass the new binary's check before anything is touched.
conf=$destdir$CONFFILE
checked=$conf
[ -e "$conf" ] || checked=$here/sphincter.env
if ! result=$(check_config "$checked"); then
    printf 'install.sh: error: the settings in %s do not pass the check:\n%s\n' "$checked" "$result" >&2
    die "nothing was installed or restarted; fix $checked and run install.sh again"
fi
say "$checked: $result"

# The instances of sphincter@.service: one NAME.env each (NAME: no white space, as systemd's).
instances=""
for f in "$destdir$INSTANCEDIR"/*.env; do
    [ -f "$f" ] || continue
    name=${f##*/}
    name=${name%.env}
    if ! result=$(check_config "$checked" "$f" "$(uname -n)-$name"); then
        printf 'install.sh: error: the settings of sphincter@%s (%s with %s) do not pass the check:\n%s\n' \
            "$name" "$checked" "$f" "$result" >&2
        die "nothing was installed or restarted; fix $f and run install.sh again"
    fi
    say "sphincter@$name: $result"
    instances="$instances $name"
done

# install_file SRC DEST MODE: write DEST atomically (temp file + rename in its directory).
install_file() {
    mkdir -p "$(dirname "$2")"
    tmp="$2.tmp.$$"
    cp "$1" "$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
}

# 3. Binary and unit.
install_file "$here/sphincter" "$destdir$BINDIR/sphincter" 0755
install_file "$here/sphincter.service" "$destdir$UNITDIR/$SERVICE" 0644
install_file "$here/sphincter@.service" "$destdir$UNITDIR/$TEMPLATE" 0644

# 4. Configuration: kept if present. Root-only (0600): it may hold SPHINCTER_ADMIN_TOKEN;
#    systemd reads it as root for EnvironmentFile=.
if [ ! -e "$conf" ]; then
    install_file "$here/sphincter.env" "$conf" 0600
    say "wrote $CONFFILE"
elif cmp -s "$here/sphincter.env" "$conf"; then
    rm -f "$conf.new"
else
    install_file "$here/sphincter.env" "$conf.new" 0600
    say "kept your $CONFFILE; the shipped defaults are in $CONFFILE.new"
fi

if [ -n "$destdir" ]; then
    say "staged into $destdir (no user created, systemd not touched)"
    exit 0
fi

# 5. The service user.
if ! id "$USERNAME" >/dev/null 2>&1; then
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/bin/false
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell "$nologin" "$USERNAME"
    say "created system user $USERNAME"
fi

if [ "$start" = 0 ]; then
    say "installed (--no-start: run 'systemctl daemon-reload && systemctl enable --now sphincter')"
    exit 0
fi

# 6. (Re)start and report the truth.
command -v systemctl >/dev/null 2>&1 || die "systemctl not found (use --no-start)"
systemctl daemon-reload
if [ -n "$instances" ]; then
    # Several nodes: every instance with a file; sphincter.service only if it runs already.
    failed=""
    for name in $instances; do
        unit="sphincter@$name.service"
        systemctl enable --quiet "$unit"
        if systemctl restart "$unit" && systemctl is-active --quiet "$unit"; then
            say "$unit is running ($(systemctl show -p MainPID --value "$unit" 2>/dev/null | sed 's/^/pid /'))"
        else
            failed="$failed $unit"
        fi
    done
    if systemctl is-active --quiet "$SERVICE"; then
        systemctl restart "$SERVICE" || failed="$failed $SERVICE"
    fi
    [ -n "$failed" ] || exit 0
    for unit in $failed; do
        printf 'install.sh: error: %s did not start; last journal lines:\n' "$unit" >&2
        journalctl -u "$unit" -n 20 --no-pager >&2 || true
    done
    exit 1
fi
systemctl enable --quiet "$SERVICE"
if systemctl restart "$SERVICE" && systemctl is-active --quiet "$SERVICE"; then
    say "sphincter is running ($(systemctl show -p MainPID --value "$SERVICE" 2>/dev/null | sed 's/^/pid /'))"
    exit 0
fi
printf 'install.sh: error: sphincter did not start; last journal lines:\n' >&2
journalctl -u "$SERVICE" -n 20 --no-pager >&2 || true
exit 1
