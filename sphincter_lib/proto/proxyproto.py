"""The PROXY protocol header (HAProxy's, versions 1 and 2) at the start of a source connection (sans-IO).

A TCP proxy in front of the relay (nginx's ``stream`` with ``proxy_protocol on;``, HAProxy with
``send-proxy``/``send-proxy-v2``) opens each upstream connection with one header naming the
client it relays; the relay then counts, logs and lists the source by that client's address.

- Version 1, text: ``PROXY TCP4|TCP6 <src> <dst> <srcport> <dstport>\\r\\n`` or ``PROXY UNKNOWN
  ...\\r\\n``, at most 107 bytes with the CRLF. Addresses and ports as the specification writes
  them: dotted-quad IPv4 and ports without leading zeros, an IPv6 address for ``TCP6``.
- Version 2, binary: the 12-byte :data:`V2_SIGNATURE`, a version (2) and command byte (``LOCAL``
  or ``PROXY``), a family and transport byte, a 16-bit length of what follows (the addresses,
  then TLVs, which are skipped). ``AF_INET``/``AF_INET6`` over ``STREAM`` carry the client;
  the other valid combinations (``UNSPEC``, ``AF_UNIX``, ``DGRAM``) fall back to the
  connection's own peer, as the specification allows. A header longer than
  ``max_length`` bytes in all (default :data:`MAX_HEADER`, 536) is refused.
- ``LOCAL`` (v2) and ``UNKNOWN`` (v1): a connection the proxy made on its own (health checks):
  the connection's own peer is the source (``Result.source`` is None).

A :class:`HeaderReader` is fed the first bytes of a connection and says, once it knows, what
they were. ``expect=True`` (the peer is a trusted proxy): a header must come, anything else is
an error. ``expect=False`` (the peer is not a trusted proxy: a source connecting directly): no
header may come; bytes that start one are refused (:data:`UNTRUSTED`), any others are the
source's own data, returned whole in ``Result.rest``. Bytes after a header are the source's
preamble and data (``Result.rest``): a header never eats what follows it.

``feed(data)`` returns None while more bytes are needed (the buffer never holds more than the
header's bound: feed at most :attr:`HeaderReader.wanted` bytes at a time to keep it so),
else a :class:`Result` (then feed no more). ``feed(b"")`` is the end of the stream;
:meth:`HeaderReader.timeout` ends the wait. Refusal reasons are the ``ERROR`` line's words
(:data:`REQUIRED`, :data:`BAD`, :data:`UNTRUSTED`, :data:`TIMEOUT`); ``Result.detail`` says
more, for the log.
"""

import ipaddress
import re
import struct

#: the first 12 bytes of a version 2 header
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: the first bytes of a version 1 header
V1_PREFIX = b"PROXY"
#: longest version 1 header, CRLF included (the specification's worst case)
MAX_V1 = 107
#: longest whole header accepted (version 2: 16 bytes + addresses + TLVs); HAProxy's advice
#: is that a receiver reads 536 bytes (the smallest TCP MSS) at once
MAX_HEADER = 536

REQUIRED = "proxy header required"
BAD = "bad proxy header"
UNTRUSTED = "untrusted proxy header"
TIMEOUT = "proxy header timeout"

LOCAL, PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1

_PORT = r"(0|[1-9][0-9]{0,4})"
_V1_TCP = re.compile(r"^PROXY (TCP4|TCP6) ([0-9A-Fa-f:.]+) ([0-9A-Fa-f:.]+) %s %s$" % (_PORT, _PORT))
_OCTET = r"(0|[1-9][0-9]{0,2})"
_DOTTED = re.compile(r"^%s\.%s\.%s\.%s$" % ((_OCTET,) * 4))


class Result:
    """What a connection started with: ``source`` ((host, port) of the client the proxy relays,
    or None: the connection's own peer is the source), ``rest`` (the bytes after the header),
    ``version`` (1, 2, or None without a header), ``error`` (the refusal reason, or None) and
    ``detail`` (for the log)."""

    __slots__ = ("source", "rest", "version", "error", "detail")

    def __init__(self, source=None, rest=b"", version=None, error=None, detail=""):
        self.source, self.rest, self.version = source, rest, version
        self.error, self.detail = error, detail

    def __repr__(self):
        return "Result(source=%r, rest=%r, version=%r, error=%r, detail=%r)" % (
            self.source, self.rest, self.version, self.error, self.detail)


class HeaderReader:
    """Feed bytes until a :class:`Result` comes out."""

    def __init__(self, expect=True, max_length=MAX_HEADER):
        self.expect = expect
        self.max_length = max(max_length, MAX_V1)
        self._buf = b""
        self._done = False

    @property
    def required_pending(self):
        """True while a header that must come has not been decided."""
        return self.expect and not self._done

    @property
    def buffered(self):
        """Bytes held while undecided."""
        return len(self._buf)

    @property
    def wanted(self):
        """The most bytes worth feeding next: the buffer then stays within ``max_length``."""
        return max(1, self.max_length - len(self._buf))

    def feed(self, data):
        """Bytes from the connection (``b""``: the end of the stream). A Result once decided."""
        if self._done:
            return None
        if not data:
            return self._end("the connection ended before a complete header")
        self._buf += data
        kind = _kind(self._buf)
        if kind is None:
            return None
        if not self.expect:
            if kind == "data":
                return self._finish(Result(rest=self._buf))
            return self._fail(UNTRUSTED, "a PROXY header from a peer not in --trusted-proxies")
        if kind == "data":
            return self._fail(REQUIRED, "the first bytes are not a PROXY header")
        result = _parse_v1(self._buf) if kind == "v1" else _parse_v2(self._buf, self.max_length)
        if result is None:
            return None
        if result.error:
            return self._fail(result.error, result.detail)
        return self._finish(result)

    def timeout(self):
        """The wait is over: decide with what arrived (None if already decided)."""
        if self._done:
            return None
        return self._end("no complete header in time", TIMEOUT)

    # -- internals -------------------------------------------------------------------
    def _end(self, detail, reason=None):
        if not self.expect:
            return self._finish(Result(rest=self._buf))
        if reason is None:
            reason = BAD if self._buf else REQUIRED
        return self._fail(reason, detail)

    def _finish(self, result):
        self._done = True
        self._buf = b""
        return result

    def _fail(self, reason, detail):
        return self._finish(Result(error=reason, detail=detail))


def _kind(buf):
    """'v1' or 'v2' once ``buf`` starts with that header's signature, 'data' once it cannot,
    None while it still may."""
    for kind, prefix in (("v1", V1_PREFIX), ("v2", V2_SIGNATURE)):
        n = min(len(buf), len(prefix))
        if buf[:n] == prefix[:n]:
            return kind if len(buf) >= len(prefix) else None
    return "data"


def _bad(detail):
    return Result(error=BAD, detail=detail)


def _parse_v1(buf):
    end = buf.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(buf) >= MAX_V1:
            return _bad("v1: no CRLF in the first %d bytes" % MAX_V1)
        if b"\n" in buf or b"\r" in buf[:-1]:
            return _bad("v1: a lone CR or LF")
        return None
    line, rest = buf[:end], buf[end + 2:]
    if b"\r" in line or b"\n" in line:
        return _bad("v1: a lone CR or LF")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return _bad("v1: not ASCII")
    if text == "PROXY UNKNOWN" or text.startswith("PROXY UNKNOWN "):
        return Result(rest=rest, version=1)
    m = _V1_TCP.match(text)
    if not m:
        return _bad("v1: not 'PROXY TCP4|TCP6|UNKNOWN ...': %r" % text[:MAX_V1])
    family, src, dst, sport, dport = m.groups()
    hosts = []
    for addr in (src, dst):
        ip = _v1_address(family, addr)
        if ip is None:
            return _bad("v1: %r is not an %s address" % (addr, "IPv4" if family == "TCP4" else "IPv6"))
        hosts.append(ip)
    if int(sport) > 65535 or int(dport) > 65535:
        return _bad("v1: a port above 65535")
    return Result(source=(hosts[0], int(sport)), rest=rest, version=1)


def _v1_address(family, text):
    """The canonical text of ``text`` as the family's address, or None."""
    if family == "TCP4":
        if not _DOTTED.match(text):
            return None
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            return None
    if ":" not in text:
        return None
    try:
        return _host(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _host(ip):
    """An IPv4-mapped IPv6 address is its IPv4 address (as :mod:`.addresses` counts it)."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _parse_v2(buf, max_length):
    if len(buf) < 16:
        return None
    version, command = buf[12] >> 4, buf[12] & 0x0F
    family, transport = buf[13] >> 4, buf[13] & 0x0F
    if version != 2:
        return _bad("v2: version %d" % version)
    if command not in (LOCAL, PROXY):
        return _bad("v2: command %#x" % command)
    if family > _AF_UNIX or transport > 2:
        return _bad("v2: family/transport %#04x" % buf[13])
    (length,) = struct.unpack(">H", buf[14:16])
    if 16 + length > max_length:
        return _bad("v2: %d bytes, more than %d" % (16 + length, max_length))
    if len(buf) < 16 + length:
        return None
    block, rest = buf[16:16 + length], buf[16 + length:]
    if command == LOCAL or transport != _STREAM or family not in (_AF_INET, _AF_INET6):
        return Result(rest=rest, version=2)         # the connection's own peer
    size = 4 if family == _AF_INET else 16
    if length < 2 * size + 4:
        return _bad("v2: %d address bytes, too few for %s" % (length, "IPv4" if size == 4 else "IPv6"))
    ip = ipaddress.ip_address(bytes(block[:size]))
    (port,) = struct.unpack(">H", block[2 * size:2 * size + 2])
    return Result(source=(_host(ip), port), rest=rest, version=2)
