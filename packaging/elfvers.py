"""Symbol versions of an ELF64 little-endian shared object or executable (x86-64), stdlib only.

  python elfvers.py show FILE...      each needed library version, its flags and its symbols
  python elfvers.py weaken FILE...    mark a needed version weak (VER_FLG_WEAK) when every
                                      symbol bound to it is a weak undefined reference

The floor that matters at load time is what the dynamic linker checks: every version in
.gnu.version_r that is not flagged weak must exist, or the program does not start
("version `GLIBC_2.25' not found"); a weak one that is missing only leaves its weak
symbols at NULL. Debian 11's libcrypto.so.1.1 asks for getentropy@GLIBC_2.25 as a weak
symbol (OpenSSL checks it for NULL and falls back to the getrandom system call) but its
linker did not flag the version weak; `weaken` sets exactly that flag and nothing else.
"""
import struct
import sys

SHT_DYNSYM = 11
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF
VER_FLG_WEAK = 0x2
STB_WEAK = 2
SHN_UNDEF = 0


class ElfError(Exception):
    pass


def _sections(data):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    out = []
    for i in range(shnum):
        name, stype, flags, addr, off, size, link, info, align, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, shoff + i * shentsize)
        out.append({"type": stype, "offset": off, "size": size, "link": link, "info": info,
                    "entsize": entsize})
    return out


def _cstr(data, off):
    return data[off:data.index(b"\0", off)].decode("ascii", "replace")


def read(data):
    """(needs, symbols) of an ELF image.

    needs: [{"file", "version", "flags", "index", "flags_offset"}] from .gnu.version_r;
    symbols: [{"name", "index", "undefined", "weak"}] of .dynsym with their version index."""
    secs = _sections(data)
    needs, symbols = [], []
    by_type = {}
    for s in secs:
        by_type.setdefault(s["type"], s)
    vn = by_type.get(SHT_GNU_VERNEED)
    if vn:
        strtab = secs[vn["link"]]["offset"]
        off, count = vn["offset"], vn["info"]
        for _ in range(count):
            _ver, cnt, file_, aux, nxt = struct.unpack_from("<HHIII", data, off)
            aoff = off + aux
            for _ in range(cnt):
                _hash, flags, other, name, anext = struct.unpack_from("<IHHII", data, aoff)
                needs.append({"file": _cstr(data, strtab + file_),
                              "version": _cstr(data, strtab + name),
                              "flags": flags, "index": other, "flags_offset": aoff + 4})
                aoff += anext
            if not nxt:
                break
            off += nxt
    ds, vs = by_type.get(SHT_DYNSYM), by_type.get(SHT_GNU_VERSYM)
    if ds and vs:
        strtab = secs[ds["link"]]["offset"]
        n = ds["size"] // (ds["entsize"] or 24)
        for i in range(n):
            name, info, _other, shndx, _value, _size = struct.unpack_from(
                "<IBBHQQ", data, ds["offset"] + i * 24)
            ver, = struct.unpack_from("<H", data, vs["offset"] + i * 2)
            symbols.append({"name": _cstr(data, strtab + name), "index": ver & 0x7FFF,
                            "undefined": shndx == SHN_UNDEF, "weak": (info >> 4) == STB_WEAK})
    return needs, symbols


def glibc_floor(data):
    """The highest GLIBC_x.y[.z] version the loader insists on, as a tuple, or None.

    Versions flagged weak are skipped, unless a strong symbol is bound to one of them."""
    needs, symbols = read(data)
    strong = {s["index"] for s in symbols if s["undefined"] and not s["weak"]}
    floor = None
    for need in needs:
        name = need["version"]
        if not name.startswith("GLIBC_") or not name[6:6 + 1].isdigit():
            continue
        if need["flags"] & VER_FLG_WEAK and need["index"] not in strong:
            continue
        version = (tuple(int(p) for p in name[6:].split(".")) + (0, 0))[:3]
        floor = version if floor is None else max(floor, version)
    return floor


def weaken(path):
    """Flag weak every needed version whose symbols are all weak undefined references.
    Returns the list of "file:version" that were changed (the file is rewritten in place)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    needs, symbols = read(bytes(data))
    changed = []
    for need in needs:
        users = [s for s in symbols if s["index"] == need["index"]]
        if need["flags"] & VER_FLG_WEAK or not users:
            continue
        if all(s["undefined"] and s["weak"] for s in users):
            struct.pack_into("<H", data, need["flags_offset"], need["flags"] | VER_FLG_WEAK)
            changed.append("%s:%s (%s)" % (need["file"], need["version"],
                                           ", ".join(s["name"] for s in users)))
    if changed:
        with open(path, "wb") as f:
            f.write(bytes(data))
    return changed


def main(argv):
    if len(argv) < 2 or argv[0] not in ("show", "weaken"):
        print("usage: elfvers.py show|weaken FILE...", file=sys.stderr)
        return 2
    for path in argv[1:]:
        if argv[0] == "weaken":
            for what in weaken(path):
                print("%s: weak version %s" % (path, what))
            continue
        with open(path, "rb") as f:
            needs, symbols = read(f.read())
        for need in needs:
            users = sorted(s["name"] for s in symbols if s["index"] == need["index"])
            print("%s %s%s: %s" % (need["file"], need["version"],
                                   " (weak)" if need["flags"] & VER_FLG_WEAK else "",
                                   " ".join(users)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
