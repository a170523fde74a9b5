#!/bin/sh
# Install the Debian packages the test tiers need (lists in scripts/apt-deps.d/*.txt).
# As root on Debian: installs what is missing. Otherwise: says what is missing;
# the tests that need it then skip with a reason (and fail under CI=true).
set -eu
dir=$(dirname "$0")/apt-deps.d
pkgs=$(cat "$dir"/*.txt 2>/dev/null | sed 's/#.*//' | tr -s ' \n' '\n' | sed '/^$/d' | sort -u)
[ -n "$pkgs" ] || exit 0
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "system-deps: not root or no apt-get; missing:$missing (tests needing them will skip)"
fi
