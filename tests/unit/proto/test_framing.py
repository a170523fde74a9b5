import pytest
from hypothesis import given, settings, strategies as st

from sphincter_lib.errors import ConfigError
from sphincter_lib.proto.framing import LineFramer, RawFramer, is_text, make_framer


def run(framer, chunks):
    out = []
    for c in chunks:
        out.extend(framer.feed(c))
    out.extend(framer.eof())
    return out


def every_split(data):
    """All ways to cut ``data`` in two, plus byte by byte."""
    yield [data]
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    yield [data[i:i + 1] for i in range(len(data))]


LINE_CASES = [
    (b"hello\nworld\n", [b"hello", b"world"]),
    (b"a\r\nb\r\n", [b"a", b"b"]),
    (b"a\r\r\n", [b"a\r"]),                      # only one trailing CR is stripped
    (b"\n\n\r\nx\n", [b"x"]),                    # empty lines are keep-alives
    (b"tail without newline", [b"tail without newline"]),
    (b"\xff\xfe\n", [b"\xff\xfe"]),
    (b"caf\xc3\xa9\n", [b"caf\xc3\xa9"]),
]


@pytest.mark.parametrize("data,expected", LINE_CASES)
def test_lines_at_every_split_point(data, expected):
    for chunks in every_split(data):
        assert run(LineFramer(64), chunks) == expected, chunks


def test_long_line_is_split_not_dropped():
    line = bytes(range(65, 91)) * 4          # 104 bytes
    for chunks in every_split(line + b"\n"):
        out = run(LineFramer(10), chunks)
        assert b"".join(out) == line
        assert all(0 < len(m) <= 10 for m in out)


def test_long_text_line_splits_on_character_boundaries():
    text = ("é€😀" * 50).encode()
    out = run(LineFramer(10), [text + b"\n"])
    assert b"".join(out) == text
    assert all(len(m) <= 10 for m in out)
    assert all(is_text(m) for m in out)


def test_pending_bytes_stay_bounded():
    framer = LineFramer(100)
    for _ in range(1000):
        framer.feed(b"x" * 37)
        assert len(framer._pending) <= 100


def test_feed_empty_is_not_eof():
    framer = LineFramer(10)
    assert framer.feed(b"abc") == []
    assert framer.feed(b"") == []
    assert framer.eof() == [b"abc"]
    assert framer.eof() == []


def test_raw_chunks_are_bounded_and_exact():
    framer = RawFramer(4)
    assert framer.feed(b"abcdefghij") == [b"abcd", b"efgh", b"ij"]
    assert framer.feed(b"") == []
    assert framer.eof() == []


def test_make_framer_rejects_unknown():
    with pytest.raises(ConfigError):
        make_framer("json")
    with pytest.raises(ConfigError):
        LineFramer(0)


def test_is_text():
    assert is_text(b"plain")
    assert is_text("ünïcödé".encode())
    assert not is_text(b"\xc3")
    assert not is_text(b"\xff")


def _cuts(data, points):
    points = sorted(set(p % (len(data) + 1) for p in points)) if data else []
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=20),
       st.integers(min_value=1, max_value=40))
def test_raw_concatenation_equals_input(data, points, limit):
    out = run(RawFramer(limit), _cuts(data, points))
    assert b"".join(out) == data
    assert all(0 < len(m) <= limit for m in out)


line_bytes = st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\xc3\xa9", b"\xe2\x82\xac", b"\xff", b"z"]),
                      max_size=200).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(line_bytes, st.lists(st.integers(min_value=0), max_size=20), st.integers(min_value=1, max_value=12))
def test_lines_do_not_depend_on_read_boundaries(data, points, limit):
    whole = run(LineFramer(limit), [data])
    assert run(LineFramer(limit), _cuts(data, points)) == whole
    assert all(0 < len(m) <= limit for m in whole)
    # nothing is lost: the messages are the lines minus one CR each, empty lines dropped
    expected = []
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if line.endswith(b"\r"):
            line = line[:-1]
        expected.append(line)
    assert b"".join(whole) == b"".join(expected)
