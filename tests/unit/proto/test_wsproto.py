import pytest
from hypothesis import given, settings, strategies as st

from sphincter_lib.proto import frames as wsproto
from sphincter_lib.errors import ProtocolError
from conftest import mask_frame


@pytest.mark.parametrize("n,header_len", [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_encode_lengths(n, header_len):
    frame = wsproto.encode_frame(wsproto.TEXT, b"x" * n)
    assert len(frame) == header_len + n
    assert frame[0] == 0x81
    frame = wsproto.encode_message(b"x" * n, text=False)
    frame = b"".join(frame) if isinstance(frame, tuple) else frame
    assert len(frame) == header_len + n and frame[0] == 0x82


def test_encode_close_carries_code_and_truncates_reason():
    frame = wsproto.encode_close(4410, "source closed")
    assert frame[:2] == b"\x88\x0f" and frame[2:4] == (4410).to_bytes(2, "big")
    long = wsproto.encode_close(1000, "é" * 200)
    assert len(long) <= 2 + 125
    long[4:].decode("utf-8")                       # still valid UTF-8
    assert wsproto.encode_close(None) == b"\x88\x00"


def test_accept_key_rfc_example():
    assert wsproto.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("key,ok", [("dGhlIHNhbXBsZSBub25jZQ==", True), ("", False), ("@@@", False),
                                    ("dGhlIHNhbXBsZQ==", False)])
def test_valid_key(key, ok):
    assert wsproto.valid_key(key) is ok


def test_unmask_matches_bytewise_xor():
    data = bytes(range(256)) * 3 + b"xyz"
    mask = b"\x9a\x01\xff\x37"
    assert wsproto.unmask(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert wsproto.unmask(b"", mask) == b""
    for n in (1023, 1024, 1025, 1026, 1027, 70001):     # both ways round STRIDED_UNMASK
        data = (bytes(range(256)) * 274)[:n]
        for key in (mask, b"\0\0\0\0", b"\0\x01\0\xff"):
            assert wsproto.unmask(data, key) == bytes(b ^ key[i % 4] for i, b in enumerate(data)), (n, key)


def feed_all(parser, chunks):
    events = []
    for c in chunks:
        events.extend(parser.feed(c))
    return events


def test_parser_at_every_split_point():
    stream = (mask_frame(wsproto.TEXT, "héllo".encode()) + mask_frame(wsproto.PING, b"p")
              + mask_frame(wsproto.BINARY, b"\x00" * 300, fin=False)
              + mask_frame(wsproto.PONG, b"")
              + mask_frame(wsproto.CONTINUATION, b"\x01" * 70000)
              + mask_frame(wsproto.CLOSE, (1000).to_bytes(2, "big") + b"bye"))
    expected = [(wsproto.TEXT, "héllo".encode()), (wsproto.PING, b"p"), (wsproto.PONG, b""),
                (wsproto.BINARY, b"\x00" * 300 + b"\x01" * 70000),
                (wsproto.CLOSE, (1000).to_bytes(2, "big") + b"bye")]
    step = 997
    for i in list(range(0, 40)) + list(range(40, len(stream), step)):
        assert feed_all(wsproto.FrameParser(max_message_bytes=1 << 20), [stream[:i], stream[i:]]) == expected


def error_of(data, **kw):
    with pytest.raises(ProtocolError) as info:
        wsproto.FrameParser(**kw).feed(data)
    return info.value.code


def test_huge_length_is_refused_from_the_header_alone():
    header = bytes([0x82, 0x80 | 127]) + (1 << 62).to_bytes(8, "big") + b"mask"
    assert error_of(header, max_message_bytes=1 << 20) == 1009


def test_top_bit_length_is_a_protocol_error():
    assert error_of(bytes([0x82, 0x80 | 127]) + (1 << 63).to_bytes(8, "big")) == 1002


def test_fragments_are_capped_in_total():
    parser = wsproto.FrameParser(max_message_bytes=100)
    parser.feed(mask_frame(wsproto.TEXT, b"a" * 60, fin=False))
    with pytest.raises(ProtocolError) as info:
        parser.feed(mask_frame(wsproto.CONTINUATION, b"a" * 60))
    assert info.value.code == 1009


@pytest.mark.parametrize("frame,code", [
    (mask_frame(wsproto.TEXT, b"\xff\xfe"), 1007),
    (mask_frame(wsproto.TEXT, b"ok", rsv=0x40), 1002),
    (mask_frame(0x3, b""), 1002),
    (mask_frame(wsproto.PING, b"x" * 126), 1002),
    (mask_frame(wsproto.PING, b"x", fin=False), 1002),
    (mask_frame(wsproto.CONTINUATION, b"x"), 1002),
    (mask_frame(wsproto.CLOSE, b"\x03"), 1002),
    (mask_frame(wsproto.CLOSE, (999).to_bytes(2, "big")), 1002),
    (mask_frame(wsproto.CLOSE, (1005).to_bytes(2, "big")), 1002),
    (mask_frame(wsproto.CLOSE, (1000).to_bytes(2, "big") + b"\xff"), 1007),
    (bytes([0x81, 0x02]) + b"hi", 1002),                        # unmasked client frame
    (mask_frame(wsproto.TEXT, b"a", fin=False) + mask_frame(wsproto.TEXT, b"b"), 1002),
])
def test_violations_get_the_right_code(frame, code):
    assert error_of(frame) == code


def test_utf8_checked_across_fragments():
    euro = "€".encode()
    parser = wsproto.FrameParser()
    events = feed_all(parser, [mask_frame(wsproto.TEXT, euro[:1], fin=False),
                               mask_frame(wsproto.CONTINUATION, euro[1:])])
    assert events == [(wsproto.TEXT, euro)]
    # an invalid sequence fails fast, before the message ends
    parser = wsproto.FrameParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(mask_frame(wsproto.TEXT, b"ok\xff", fin=False))
    assert info.value.code == 1007


def test_parse_close():
    assert wsproto.parse_close(b"") == (None, "")
    assert wsproto.parse_close((4000).to_bytes(2, "big") + b"why") == (4000, "why")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([wsproto.TEXT, wsproto.BINARY]), st.binary(max_size=300)),
                max_size=8),
       st.integers(min_value=1, max_value=64))
def test_messages_round_trip_whatever_the_chunking(messages, chunk):
    stream = b""
    expected = []
    for opcode, payload in messages:
        if opcode == wsproto.TEXT:
            payload = payload.decode("utf-8", "replace").encode("utf-8")
        stream += mask_frame(opcode, payload, mask=bytes([len(payload) % 251, 7, 9, 200]))
        expected.append((opcode, payload))
    chunks = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    assert feed_all(wsproto.FrameParser(), chunks) == expected


def test_large_messages_are_encoded_without_copying_the_payload():
    payload = bytes(wsproto.LARGE_PAYLOAD)
    frame = wsproto.encode_message(payload, text=False)
    assert frame.__class__ is tuple and frame[1] is payload
    assert frame[0] == b"\x82\x7f" + len(payload).to_bytes(8, "big")
    assert len(frame[0]) + len(frame[1]) == 10 + len(payload)
    small = wsproto.encode_message(b"x" * (wsproto.LARGE_PAYLOAD - 1), text=True)
    assert small.__class__ is bytes and len(small) == 4 + wsproto.LARGE_PAYLOAD - 1
