"""The PROXY protocol header reader (proto/proxyproto.py): table-driven, fed whole, split at
every offset and byte by byte; the specification's examples; refusals; the bound."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from sphincter_lib.proto.proxyproto import (BAD, MAX_HEADER, REQUIRED, TIMEOUT, UNTRUSTED,
                                            V2_SIGNATURE, HeaderReader)

FULL6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def v2(ver_cmd=0x21, fam=0x11, block=b"", length=None):
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack(">H", len(block) if length is None
                                                              else length) + block


def inet(src, dst, sport, dport):
    import ipaddress
    return (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + struct.pack(">HH", sport, dport))


def tlv(kind, value):
    return bytes([kind]) + struct.pack(">H", len(value)) + value


#: (header bytes, the source it names (None: the connection's own peer), version)
GOOD = [
    # the specification's examples (proxy-protocol.txt, 2.1): the one before an HTTP request,
    # and the longest lines a receiver must support, 56, 104, 15 and 107 bytes
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", ("192.168.0.1", 56324), 1),
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", ("255.255.255.255", 65535), 1),
    (("PROXY TCP6 %s %s 65535 65535\r\n" % (FULL6, FULL6)).encode(), (FULL6, 65535), 1),
    (b"PROXY UNKNOWN\r\n", None, 1),
    (("PROXY UNKNOWN %s %s 65535 65535\r\n" % (FULL6, FULL6)).encode(), None, 1),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 9000\r\n", ("2001:db8::1", 4711), 1),
    (b"PROXY TCP6 ::ffff:203.0.113.7 ::1 0 9000\r\n", ("203.0.113.7", 0), 1),   # mapped: its IPv4
    (b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n", ("0.0.0.0", 0), 1),
    # v2 as HAProxy sends it (172.19.0.1:42578 -> 172.19.0.3:80)
    (bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050"), ("172.19.0.1", 42578), 2),
    (v2(0x21, 0x21, inet("2001:db8::7", "2001:db8::1", 5000, 9000)), ("2001:db8::7", 5000), 2),
    # TLVs after the addresses are skipped
    (v2(0x21, 0x11, inet("198.51.100.9", "10.0.0.1", 1234, 9000) + tlv(0x02, b"example.com")
        + tlv(0x04, b"\0\0\0")), ("198.51.100.9", 1234), 2),
    # LOCAL (a health check): the peer itself, whatever the family and block say
    (v2(0x20, 0x00), None, 2),
    (v2(0x20, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2)), None, 2),
    # valid combinations the relay does not use: the connection's own peer
    (v2(0x21, 0x00, b"\0" * 5), None, 2),                      # UNSPEC
    (v2(0x21, 0x31, b"/run/a".ljust(108, b"\0") * 2), None, 2),  # AF_UNIX stream
    (v2(0x21, 0x12, inet("192.0.2.1", "192.0.2.2", 1, 2)), None, 2),  # UDP
]

#: (bytes, what the log says) — each refused with BAD once decided
MALFORMED = [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "lone"),                    # LF without CR
    (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "lone"),                 # a CR inside
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY TCP4"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "PROXY TCP4"),           # two spaces
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "PROXY TCP4"),              # a field missing
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "PROXY TCP4"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", None),                    # not a header at all
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "IPv4"),                 # leading zero
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 ::1 ::g 1 2\r\n", "PROXY TCP4"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "PROXY TCP4"),          # leading zero
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "PROXY TCP4"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", "ASCII"),
    (b"PROXY\r\n", "PROXY TCP4"),
    (b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY TCP4"),
    (b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n", "CRLF"),                # 108 bytes
    (b"PROXY " + b"x" * 200, "CRLF"),                                 # no end in sight
    (v2(0x11), "version"),                                            # version 1 in v2's byte
    (v2(0x31), "version"),
    (v2(0x22), "command"),
    (v2(0x2F), "command"),
    (v2(0x21, 0x41), "family"),                                       # AF 4
    (v2(0x21, 0x13), "family"),                                       # transport 3
    (v2(0x21, 0x11, b"\0" * 11), "too few"),                          # short for IPv4
    (v2(0x21, 0x21, inet("192.0.2.1", "192.0.2.2", 1, 2)), "too few"),  # IPv4 block, IPv6 family
    (v2(0x21, 0x11, length=MAX_HEADER - 15), "more than"),            # declared too long
    (v2(0x21, 0x11, length=0xFFFF), "more than"),
]

DATA = b"AUTH token\nhello\r\n\x00\xff"


def splits(data):
    """``data`` whole, byte by byte, and in two pieces at every offset."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


def run(chunks, expect=True, **kw):
    """Feed chunks until a Result; returns (result, the bytes not fed)."""
    r = HeaderReader(expect=expect, **kw)
    for i, chunk in enumerate(chunks):
        got = r.feed(chunk)
        if got is not None:
            return got, b"".join(chunks[i + 1:])
    return None, b""


@pytest.mark.parametrize("header,source,version", GOOD)
def test_good_headers_name_the_client_and_keep_what_follows(header, source, version):
    for chunks in splits(header + DATA):
        r, unfed = run(chunks)
        assert r is not None and r.error is None, (chunks, r)
        assert (r.source, r.version) == (source, version)
        assert r.rest + unfed == DATA          # the header never eats the source's first line


@pytest.mark.parametrize("header,source,version", GOOD)
def test_good_header_alone_is_decided_at_its_last_byte(header, source, version):
    r = HeaderReader()
    assert r.feed(header[:-1]) is None and r.required_pending
    got = r.feed(header[-1:])
    assert (got.source, got.rest, got.error) == (source, b"", None) and not r.required_pending
    assert r.feed(b"more") is None and r.timeout() is None      # decided: feed no more


def test_spec_length_limits():
    assert len(GOOD[1][0]) == 56 and len(GOOD[2][0]) == 104
    assert len(GOOD[3][0]) == 15 and len(GOOD[4][0]) == 107
    assert len(MALFORMED[18][0]) == 108


@pytest.mark.parametrize("data,detail", MALFORMED)
def test_malformed_headers_are_refused(data, detail):
    for chunks in splits(data + b"data\n"):
        r, _ = run(chunks)
        assert r is not None, chunks
        if detail is None:
            assert r.error == REQUIRED
        else:
            assert r.error == BAD and detail in r.detail, (chunks, r)
        assert r.source is None and r.rest == b""


@pytest.mark.parametrize("data", [b"hello\n", b"\n", b"AUTH x\n", b"RESUME A B\n", b"GET / HTTP/1.1\r\n",
                                  b"PRX", b"\r\n\r\nx", b"\r\n\r\n\x00\r\nQUIZ"])
def test_a_trusted_proxy_must_send_a_header(data):
    r, _ = run([data])
    assert r.error == REQUIRED and r.source is None


@pytest.mark.parametrize("partial", [b"P", b"PROXY TCP4 1.2.3.4 ", b"\r\n\r\n", V2_SIGNATURE,
                                     v2(0x21, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2))[:20]])
def test_truncated_header(partial):
    r = HeaderReader()
    assert r.feed(partial) is None
    assert r.timeout().error == TIMEOUT
    r = HeaderReader()
    assert r.feed(partial) is None
    end = r.feed(b"")                           # the peer closed mid-header
    assert end.error == BAD and "ended" in end.detail


def test_nothing_at_all():
    assert HeaderReader().timeout().error == TIMEOUT
    assert HeaderReader().feed(b"").error == REQUIRED


# -- a peer that is not a trusted proxy: no header expected, one is refused ------------

@pytest.mark.parametrize("header,source,version", GOOD + [(b"PROXY garbage\r\n", None, 1)])
def test_untrusted_peer_sending_a_header_is_refused(header, source, version):
    for chunks in splits(header):
        r, _ = run(chunks, expect=False)
        assert r.error == UNTRUSTED and r.rest == b"", chunks


@pytest.mark.parametrize("data", [DATA, b"\n", b"hello", b"PROX\n", b"\r\n\r\n\x00\r\nQUI!"])
def test_untrusted_peer_data_is_data(data):
    for chunks in splits(data):
        r, unfed = run(chunks, expect=False)
        assert r.error is None and r.source is None and r.rest + unfed == data
    assert not HeaderReader(expect=False).required_pending


def test_untrusted_peer_prefix_then_silence_or_end_is_data():
    r = HeaderReader(expect=False)
    assert r.feed(b"PRO") is None
    got = r.timeout()
    assert (got.error, got.rest) == (None, b"PRO")
    r = HeaderReader(expect=False)
    assert r.feed(b"\r\n") is None
    got = r.feed(b"")
    assert (got.error, got.rest) == (None, b"\r\n")
    got = HeaderReader(expect=False).timeout()
    assert (got.error, got.rest) == (None, b"")


# -- bounded ------------------------------------------------------------------------------

def test_buffer_never_exceeds_the_bound_when_fed_what_it_wants():
    """A v2 header of the largest accepted size, fed as a peer that sends it slowly and a
    flood behind it: the reader asks for no more than the bound."""
    header = v2(0x21, 0x11, inet("192.0.2.9", "192.0.2.1", 7, 9000) + tlv(0x04, b"\0" * (MAX_HEADER - 31)))
    assert len(header) == MAX_HEADER
    stream = header + b"x" * 10000
    r, pos = HeaderReader(), 0
    while True:
        n = min(r.wanted, 100)
        got = r.feed(stream[pos:pos + n])
        pos += n
        assert r.buffered <= MAX_HEADER
        if got is not None:
            break
    assert got.source == ("192.0.2.9", 7) and got.rest + stream[pos:] == b"x" * 10000


def test_oversized_v2_is_refused_from_its_first_16_bytes():
    r = HeaderReader()
    assert r.feed(v2(0x21, 0x11, length=MAX_HEADER - 15)[:16]).error == BAD
    r = HeaderReader(max_length=200)
    assert r.feed(v2(0x21, 0x11, length=185)).error == BAD
    assert HeaderReader(max_length=200).feed(v2(0x21, 0x11, b"\0" * 184)).error is None


# -- property: any good header, any data, any split -------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.sampled_from(GOOD), st.binary(max_size=64), st.lists(st.integers(1, 40), max_size=20))
def test_any_split_gives_the_same_answer(case, data, sizes):
    header, source, version = case
    stream, chunks, pos = header + data, [], 0
    for n in sizes:
        chunks.append(stream[pos:pos + n])
        pos += n
    chunks.append(stream[pos:])
    chunks = [c for c in chunks if c]
    r, unfed = run(chunks)
    assert (r.source, r.version, r.error) == (source, version, None)
    assert r.rest + unfed == data
