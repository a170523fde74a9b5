"""Session rooms' control lines (issue 20), fed whole and at every split point."""

import pytest

from sphincter_lib.proto import sessionwire as sw

SID = "Zq3_-abcdefghijklmnopq"


def test_sid_shape():
    assert sw.valid_sid(SID) and sw.valid_sid("a" * 64)
    assert not sw.valid_sid("a" * 21) and not sw.valid_sid("a" * 65)
    assert not sw.valid_sid("a" * 21 + "!") and not sw.valid_sid("") and not sw.valid_sid(None)


def test_lines_round_trip():
    assert sw.open_line(SID) == b"OPEN " + SID.encode() + b"\n"
    assert sw.session_line(SID) == b"SESSION " + SID.encode() + b"\n"
    line = sw.refused_line(SID, "service unreachable: [Errno 111] Connection refused\nx")
    assert line.count(b"\n") == 1
    assert sw.parse_agent_line(line[:-1]) == ("refused", SID, "service unreachable: [Errno 111] "
                                                             "Connection refused x")
    assert sw.parse_relay_line(sw.open_line(SID)[:-1]) == ("open", SID)


def test_reasons_are_one_short_printable_line():
    assert sw.clean_reason("é\tbad\r\n" + "x" * 500) == ("bad " + "x" * 500)[:sw.MAX_REASON]
    assert sw.clean_reason("") == "refused"


@pytest.mark.parametrize("line, event", [
    (b"", ("keepalive",)), (b"  ", ("keepalive",)),
    (b"REFUSED " + SID.encode(), ("refused", SID, "refused")),
    (b"REFUSED short why", ("unknown", "REFUSED short why")),
    (b"HELLO", ("unknown", "HELLO")),
])
def test_agent_lines(line, event):
    assert sw.parse_agent_line(line) == event


@pytest.mark.parametrize("line, event", [
    (b"ROOM K7M2QX", ("room", "K7M2QX")), (b"WRITE key", ("write", "key")),
    (b"OPEN " + SID.encode(), ("open", SID)), (b"OPEN bad", ("unknown", "OPEN bad")),
    (b"ERROR sessions are off", ("error", "sessions are off")), (b"", ("keepalive",)),
])
def test_relay_lines(line, event):
    assert sw.parse_relay_line(line) == event


def test_line_reader_at_every_split():
    data = b"ROOM A\r\nWRITE k\nSESSIONS\n\nOPEN " + SID.encode() + b"\npartial"
    for cut in range(len(data) + 1):
        r = sw.LineReader()
        lines = r.feed(data[:cut]) + r.feed(data[cut:]) + r.feed(b"")
        assert lines == [b"ROOM A", b"WRITE k", b"SESSIONS", b"", b"OPEN " + SID.encode()]
        assert r.rest == b"partial"


def test_line_reader_bounds_a_line():
    r = sw.LineReader(max_line=10)
    with pytest.raises(sw.LineTooLong):
        r.feed(b"x" * 11)
    with pytest.raises(sw.LineTooLong):
        sw.LineReader(max_line=10).feed(b"y" * 11 + b"\n")
