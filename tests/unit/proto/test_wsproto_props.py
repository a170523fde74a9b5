"""Property-based tests (hypothesis) of the WebSocket frame parser and encoders.

Client frames are built by tests/hostile_client.py's independent encoder.
Invariants: any split of the input gives the same events and the same error;
messages round-trip through any fragmentation with pings interleaved; sizes
over the cap fail with 1009 from the header alone; close codes and reasons
are validated exactly as RFC 6455 says.
"""
import os
import struct
import sys

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # tests/: the helpers
import hostile_client as hc  # noqa: E402
from sphincter_lib.proto import frames as wsproto  # noqa: E402
from sphincter_lib.errors import ProtocolError  # noqa: E402

SETTINGS = settings(max_examples=int(os.environ.get("SPHINCTER_HYPOTHESIS_EXAMPLES", "300")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(max_size=300)
blobs = st.binary(max_size=300)
message = st.one_of(st.tuples(st.just(wsproto.TEXT), texts.map(lambda t: t.encode("utf-8"))),
                    st.tuples(st.just(wsproto.BINARY), blobs))


def run(parser, chunks):
    """Feed chunks; return (events, error code or None) as a whole."""
    events = []
    for chunk in chunks:
        got, err = parser.feed_partial(chunk)
        events.extend(got)
        if err is not None:
            return events, err.code
    return events, None


def split(data, cuts):
    cuts = sorted(set(c % (len(data) + 1) for c in cuts))
    out, prev = [], 0
    for c in cuts + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return out


@st.composite
def fragmented(draw, msg):
    """Client frames for one message: fragments, with pings between them."""
    opcode, payload = msg
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    pieces, prev = [], 0
    for c in cuts + [len(payload)]:
        pieces.append(payload[prev:c])
        prev = c
    frames, pings = [], []
    for i, piece in enumerate(pieces):
        op = opcode if i == 0 else wsproto.CONTINUATION
        frames.append(hc.encode_frame(op, piece, fin=(i == len(pieces) - 1)))
        if i < len(pieces) - 1 and draw(st.booleans()):
            ping = draw(st.binary(max_size=125))
            frames.append(hc.encode_frame(wsproto.PING, ping))
            pings.append(ping)
    return frames, pings


@SETTINGS
@given(st.lists(message, max_size=6), st.data())
def test_messages_round_trip_any_fragmentation_any_split(msgs, data):
    stream, expected = [], []
    for msg in msgs:
        frames, pings = data.draw(fragmented(msg))
        stream.extend(frames)
        expected.extend((wsproto.PING, p) for p in pings)
        expected.append(msg)
    wire = b"".join(stream)
    cuts = data.draw(st.lists(st.integers(0, max(0, len(wire))), max_size=12))
    events, err = run(wsproto.FrameParser(max_message_bytes=1 << 16), split(wire, cuts))
    assert err is None
    assert events == expected


@SETTINGS
@given(st.lists(message, max_size=4), st.data())
def test_keep_data_false_same_events_without_payloads(msgs, data):
    wire = b"".join(b"".join(data.draw(fragmented(m))[0]) for m in msgs)
    full, _ = run(wsproto.FrameParser(), [wire])
    bare, _ = run(wsproto.FrameParser(keep_data=False), split(wire, data.draw(
        st.lists(st.integers(0, len(wire)), max_size=8))))
    assert [(op, b"" if op in (wsproto.TEXT, wsproto.BINARY) else p) for op, p in full] == bare


@SETTINGS
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=10))
def test_any_split_same_outcome_arbitrary_bytes(data, cuts):
    """Garbage or not: byte-by-byte, split or whole, the same events and error."""
    whole = run(wsproto.FrameParser(require_mask=False), [data])
    assert run(wsproto.FrameParser(require_mask=False), split(data, cuts)) == whole
    assert run(wsproto.FrameParser(require_mask=False), [data[i:i + 1] for i in range(len(data))]) == whole
    if whole[1] is not None:
        assert whole[1] in (1002, 1007, 1009)


@st.composite
def frame_soup(draw):
    """Masked frames with arbitrary opcodes/flags/payloads, some invalid."""
    frames = []
    for _ in range(draw(st.integers(1, 6))):
        opcode = draw(st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11]))
        payload = draw(st.one_of(blobs, texts.map(str.encode), st.binary(min_size=2, max_size=2)))
        frames.append(hc.encode_frame(opcode, payload, fin=draw(st.booleans()),
                                      rsv=draw(st.sampled_from([0, 0, 0, 1, 4]))))
    return b"".join(frames)


@SETTINGS
@given(frame_soup(), st.lists(st.integers(0, 2000), max_size=10))
def test_frame_soup_split_invariant(wire, cuts):
    whole = run(wsproto.FrameParser(max_message_bytes=200), [wire])
    assert run(wsproto.FrameParser(max_message_bytes=200), split(wire, cuts)) == whole
    for op, payload in whole[0]:
        if op == wsproto.TEXT:
            payload.decode("utf-8")          # only valid text gets through
        if op in (wsproto.TEXT, wsproto.BINARY):
            assert len(payload) <= 200


@SETTINGS
@given(st.integers(1, 1 << 40), st.sampled_from([wsproto.TEXT, wsproto.BINARY]),
       st.integers(0, 4096))
def test_oversize_fails_from_header_alone(extra, opcode, cap):
    """A header announcing more than the cap gives 1009 before any payload."""
    header = hc.encode_frame(opcode, b"", length=cap + extra, masking_key=b"abcd")  # no payload
    events, err = run(wsproto.FrameParser(max_message_bytes=cap), [header])
    assert err == 1009 and events == []


@SETTINGS
@given(st.integers(1, 2000), st.integers(1, 2000))
def test_oversize_across_fragments(first, second):
    cap = 2500
    wire = hc.encode_frame(wsproto.BINARY, b"a" * first, fin=False) + \
        hc.encode_frame(wsproto.CONTINUATION, b"", length=second, masking_key=b"wxyz")
    events, err = run(wsproto.FrameParser(max_message_bytes=cap), [wire])
    assert err == (1009 if first + second > cap else None)


@given(st.integers(0, 65535))
def test_close_codes(code):
    valid = code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999
    try:
        got = wsproto.parse_close(struct.pack("!H", code) + b"bye")
    except ProtocolError as exc:
        assert not valid and exc.code == 1002
    else:
        assert valid and got == (code, "bye")


@SETTINGS
@given(st.binary(max_size=123))
def test_close_reason_utf8(reason):
    try:
        reason.decode("utf-8")
        ok = True
    except UnicodeDecodeError:
        ok = False
    try:
        wsproto.parse_close(b"\x03\xe8" + reason)
        assert ok
    except ProtocolError as exc:
        assert not ok and exc.code == 1007


def decode_server_frame(data):
    """Minimal independent decoder of one unmasked server frame."""
    b0, b1 = data[0], data[1]
    assert not b1 & 0x80
    n, pos = b1 & 0x7F, 2
    if n == 126:
        n, pos = struct.unpack("!H", data[2:4])[0], 4
    elif n == 127:
        n, pos = struct.unpack("!Q", data[2:10])[0], 10
    assert len(data) == pos + n
    return b0 >> 7, b0 & 0x0F, data[pos:]


@SETTINGS
@given(st.one_of(blobs, st.tuples(st.sampled_from([125, 126, 65535, 65536, 70000]), st.binary(max_size=8))
                 .map(lambda t: t[1] * (t[0] // max(1, len(t[1]))) + bytes(t[0] % max(1, len(t[1]))))),
       st.booleans())
def test_encode_message_round_trip(payload, text):
    frame = wsproto.encode_message(payload, text)
    if isinstance(frame, tuple):          # big frames are a (header, payload) pair: no copy
        frame = b"".join(frame)
    fin, opcode, got = decode_server_frame(frame)
    assert (fin, opcode, got) == (1, wsproto.TEXT if text else wsproto.BINARY, payload)


@SETTINGS
@given(st.integers(1000, 4999), st.text(max_size=200))
def test_encode_close_round_trip(code, reason):
    assume(wsproto.valid_close_code(code))
    fin, opcode, payload = decode_server_frame(wsproto.encode_close(code, reason))
    assert opcode == wsproto.CLOSE and len(payload) <= 125
    got_code, got_reason = wsproto.parse_close(payload)
    assert got_code == code and reason.startswith(got_reason)


@SETTINGS
@given(st.binary(max_size=4096), st.binary(min_size=4, max_size=4), st.integers(0, 3))
def test_unmask_matches_bytewise_and_chunks(data, key, offset):
    ref = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert wsproto.unmask(data, key) == ref
    # unmasking in two pieces with the rotated key gives the same bytes (streaming path)
    cut = min(len(data), offset * 7)
    r = cut & 3
    assert wsproto.unmask(data[:cut], key) + wsproto.unmask(data[cut:], key[r:] + key[:r]) == ref
