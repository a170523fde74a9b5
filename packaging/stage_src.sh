#!/bin/sh
# Copy what the release binary is built from into DEST: sphincter.py, every module of
# sphincter_lib (every subpackage, at any depth; no caches) and its static files.
# A module left out here is a binary that fails only when that code runs, so
# tests/unit/test_packaging.py checks this copy against the tree, and tests/release/test_release.py checks
# that the binary holds every module.
#
# Usage: packaging/stage_src.sh SRC DEST      (DEST must not exist yet)
set -eu
src=$1
dest=$2
[ ! -e "$dest" ] || { echo "stage_src: $dest exists" >&2; exit 1; }
if [ ! -f "$src/sphincter.py" ] || [ ! -d "$src/sphincter_lib" ]; then
    echo "stage_src: no sources in $src" >&2
    exit 1
fi
mkdir -p "$dest/sphincter_lib"
cp "$src/sphincter.py" "$dest/"
(cd "$src" && find sphincter_lib -name __pycache__ -prune -o -type f -name '*.py' -print) |
while IFS= read -r f; do
    mkdir -p "$dest/$(dirname "$f")"
    cp "$src/$f" "$dest/$f"
done
# Package data (the viewer's static files, read with importlib.resources).
if [ -d "$src/sphincter_lib/static" ]; then
    cp -R "$src/sphincter_lib/static" "$dest/sphincter_lib/static"
fi
