import pytest

from sphincter_lib.proto import roomsfile
from sphincter_lib.errors import ConfigError, RoomNotFound
from sphincter_lib.proto.roomcode import room_key


def test_parses_rooms_options_comments_and_blank_lines():
    rooms = roomsfile.parse("""
# overlay rooms
scene   s3cr3t-token-1   replay=1   # the current scene
Scores  another-token-2  replay=10 max-subscribers=500 slow-policy=skip

""", "rooms.txt")
    assert [(r.name, r.key, r.token, r.replay, r.max_subscribers, r.slow_policy, r.line) for r in rooms] == [
        ("scene", "SCENE", b"s3cr3t-token-1", 1, None, None, 3),
        ("Scores", "SCORES", b"another-token-2", 10, 500, "skip", 4)]


@pytest.mark.parametrize("text, message", [
    ("ab token-123456", "rooms.txt:1: invalid room name 'ab'"),
    ("a" * 33 + " token-123456", "invalid room name"),
    ("bad/name token-123456", "invalid room name"),
    ("lonely", "rooms.txt:1: expected 'NAME TOKEN [key=value ...]'"),
    ("room short", "token of room room too short"),
    ("room token-123456 replay=x", "rooms.txt:1: replay=x: must be a whole number"),
    ("room token-123456 replay=-1", "replay=-1"),
    ("room token-123456 colour=red", "unknown option 'colour=red'"),
    ("room token-123456 slow-policy=drop", "must be cut or skip"),
    ("room token-123456\nROOM other-token-1", "rooms.txt:2: room ROOM already defined on line 1"),
    ("one token-123456\ntwo token-123456", "rooms.txt:2: room two has the same token as room one"),
])
def test_bad_lines_name_file_and_line(text, message):
    with pytest.raises(ConfigError) as err:
        roomsfile.parse(text, "rooms.txt")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_load_names_an_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        roomsfile.load(str(tmp_path / "missing.txt"))
    assert "cannot read rooms file" in str(err.value) and "missing.txt" in str(err.value)


def test_names_and_codes_share_one_case_insensitive_key_space():
    assert room_key("scene") == room_key("SCENE") == "SCENE"
    assert room_key(" x7k9p2 ") == "X7K9P2"
    for bad in ("", "ab", "a" * 33, "no spaces", "semi;colon"):
        with pytest.raises(RoomNotFound):
            room_key(bad)


def test_write_key_option():
    (spec,) = roomsfile.parse("obs obs-token-1234 write=Wk_0123456789abcdef\n")
    assert spec.write == "Wk_0123456789abcdef"
    with pytest.raises(ConfigError) as err:
        roomsfile.parse("obs obs-token-1234 write=short\n", "r.txt")
    assert "r.txt:1: write=short: must be 16-128 characters" in str(err.value)


def test_sessions_option():
    from sphincter_lib.proto.roomsfile import parse
    rooms = parse("vnc token-1234 sessions=on\nssh token-5678 sessions=off\nplain token-9abc\n")
    assert [r.sessions for r in rooms] == [True, False, None]
    import pytest
    from sphincter_lib.errors import ConfigError
    with pytest.raises(ConfigError, match="sessions=yes: must be on or off"):
        parse("vnc token-1234 sessions=yes\n")
