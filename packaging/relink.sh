#!/bin/sh
# Runs chrooted in the bullseye build root (packaging/build.sh): lower the glibc floor of the
# two Debian libraries the binary bundles that need more than glibc 2.17.
#
# 1. libpython3.9.so.1.0, relinked by zig's linker against glibc 2.17's symbol versions
#    from Debian's own position-independent archive (libpython3.9-pic.a: the very objects
#    Debian links its libpython from), with:
#      - glibc_compat.c: fcntl64, getrandom, copy_file_range, memfd_create, preadv64v2,
#        pwritev64v2, __explicit_bzero_chk (glibc 2.25-2.28) as direct system calls;
#        exp/log/log2/pow bind to their GLIBC_2.2.5 versions by themselves;
#      - libexpat linked in (libexpat.so.1 needs getrandom@GLIBC_2.25), its symbols local;
#    -z defs makes any other missing function a link error, so nothing slips through
#    unversioned. The exported symbols are Debian's, one for one. -Bsymbolic stands for
#    Debian's -Bsymbolic-functions (which zig's linker lacks): calls inside the library skip
#    the PLT (without it a CPU-bound loop ran ~3% slower than with Debian's library; with it
#    as fast or faster). Safe here: nothing links libpython at build time, the bootloader
#    dlopen()s it, so no copy relocation can duplicate its data.
# 2. libcrypto.so.1.1: its one GLIBC_2.25 reference (getentropy) is weak (OpenSSL checks it
#    for NULL, then uses the getrandom system call); elfvers.py flags that version weak.
# Debian's files are kept beside (dpkg-divert), so each run starts from them again.
#
# Usage (inside the root): sh relink.sh ZIG_PYTHON   (the venv python that has ziglang)
set -eu
zigpy=$1
here=$(cd "$(dirname "$0")" && pwd)
lib=/usr/lib/x86_64-linux-gnu
target=x86_64-linux-gnu.2.17
work=/tmp/relink
log() { printf 'relink: %s\n' "$*" >&2; }

divert() {
    [ -e "$1.debian" ] || dpkg-divert --quiet --local --rename --divert "$1.debian" --add "$1"
}

rm -rf "$work"
mkdir -p "$work/expat"
divert $lib/libpython3.9.so.1.0
divert $lib/libcrypto.so.1.1

# libexpat.a is PIE code; its only absolute-model access is `stderr` (entropy debug output),
# renamed to a copy that glibc_compat.c keeps.
(cd "$work/expat" && ar x $lib/libexpat.a &&
    objcopy --redefine-sym stderr=sphincter_expat_stderr xmlparse.o &&
    ar rcD ../libexpat-pic.a xmlparse.o xmlrole.o xmltok.o)
# Expat's symbols stay inside libpython (pyexpat uses them; nothing else may see them).
cat >"$work/local.map" <<'EOF'
{
  global: *;
  local: XML_*; Xml*; _INTERNAL_trim_to_complete_utf8_characters;
};
EOF
log "libpython3.9.so.1.0 for glibc 2.17 (zig $("$zigpy" -m ziglang version))"
"$zigpy" -m ziglang cc -target $target -shared -O2 -s -o "$work/libpython3.9.so.1.0" \
    -Wl,-soname,libpython3.9.so.1.0 -Wl,-z,defs -Wl,-Bsymbolic -Wl,--version-script,"$work/local.map" \
    "$here/glibc_compat.c" \
    -Wl,--whole-archive /usr/lib/python3.9/config-3.9-x86_64-linux-gnu/libpython3.9-pic.a \
    -Wl,--no-whole-archive "$work/libexpat-pic.a" $lib/libz.so.1 -lm -lpthread -ldl -lutil
# The same public symbols as Debian's library, or stop.
exports() { objdump -T "$1" | awk '$0 !~ /\*UND\*/ && NF >= 6 {print $NF}' | sort; }
exports $lib/libpython3.9.so.1.0.debian >"$work/debian.syms"
exports "$work/libpython3.9.so.1.0" >"$work/new.syms"
if ! cmp -s "$work/debian.syms" "$work/new.syms"; then
    log "the relinked libpython exports differ from Debian's:"
    diff "$work/debian.syms" "$work/new.syms" | head -n 20 >&2
    exit 1
fi
install -m 0644 "$work/libpython3.9.so.1.0" $lib/libpython3.9.so.1.0

cp $lib/libcrypto.so.1.1.debian "$work/libcrypto.so.1.1"
python3 "$here/elfvers.py" weaken "$work/libcrypto.so.1.1" >&2
install -m 0644 "$work/libcrypto.so.1.1" $lib/libcrypto.so.1.1
rm -rf "$work"
