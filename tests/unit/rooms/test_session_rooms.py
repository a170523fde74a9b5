"""Session rooms' bookkeeping (issue 20): codes, keys, limits."""

from sphincter_lib.rooms.interface import Source
from sphincter_lib.rooms.sessions import PER_ROOM, RELAY_WIDE, SessionRooms


def test_open_find_close():
    rooms = SessionRooms()
    room = rooms.open(Source("1.2.3.4:5"))
    assert len(room.code) == 6 and len(room.write_key) >= 22 and room.peer == "1.2.3.4:5"
    assert rooms.find(room.code.lower()) is room and rooms.find("nope!") is None
    rooms.close(room)
    assert room.closed and rooms.find(room.code) is None and len(rooms) == 0


def test_codes_avoid_broadcast_rooms():
    taken = set()
    rooms = SessionRooms(taken=lambda code: code in taken)
    first = rooms.open(Source())
    taken.add(first.code)
    codes = {rooms.open(Source()).code for _ in range(50)}
    assert first.code not in codes


def test_limits_per_room_and_relay_wide():
    rooms = SessionRooms(max_per_room=2, max_total=3)
    a, b = rooms.open(Source()), rooms.open(Source())
    rooms.add(a, "s1", object())
    rooms.add(a, "s2", object())
    assert rooms.refusal(a) == (PER_ROOM, "too many sessions")
    rooms.add(b, "s3", object())
    assert rooms.refusal(b) == (RELAY_WIDE, "too many sessions")
    rooms.remove(a, "s1")
    rooms.remove(a, "s1")                          # twice: counted once
    assert rooms.total == 2 and rooms.refusal(a) is None and a.opened == 2


def test_sessions_of_clients_on_other_nodes_count_per_room_not_relay_wide():
    rooms = SessionRooms(max_per_room=2, max_total=1)
    room = rooms.open(Source())
    rooms.add(room, "remote-1", "tag", remote=True)
    assert rooms.total == 0 and rooms.refusal(room, remote=True) is None
    rooms.add(room, "local-1", object())
    assert rooms.total == 1 and rooms.refusal(room, remote=True) == (PER_ROOM, "too many sessions")
    rooms.remove(room, "remote-1")
    assert rooms.total == 1 and not room.remote and rooms.refusal(room, remote=True) is None
    assert rooms.refusal(room) == (RELAY_WIDE, "too many sessions")
    rooms.remove(room, "local-1")
    assert rooms.total == 0 and room.sessions == {}


def test_a_room_of_another_node_checks_the_key_by_its_digest():
    from sphincter_lib.proto.sessionsignal import key_digest
    from sphincter_lib.rooms.sessions import RemoteSessionRoom
    local = SessionRooms().open(Source())
    assert local.key_ok(local.write_key) and not local.key_ok("") and local.owner is None
    remote = RemoteSessionRoom("ABC123", "0a1b2c3d", key_digest(local.write_key), "n1", 0.0)
    assert remote.key_ok(local.write_key) and not remote.key_ok(local.write_key + "x")
    assert not remote.key_ok("") and remote.owner == "0a1b2c3d"


def test_named_rooms_take_the_given_key_function():
    from sphincter_lib.proto.roomsfile import RoomSpec
    specs = [RoomSpec("desk", b"desk-token-0123456789", sessions=True),
             RoomSpec("vnc", b"vnc-token-0123456789", sessions=True, write="w" * 22)]
    rooms = SessionRooms()
    rooms.add_named(specs, key=lambda spec: "derived-" + spec.key)
    assert rooms.find("desk").write_key == "derived-DESK" and rooms.find("vnc").write_key == "w" * 22
    assert rooms.named_count == 2
