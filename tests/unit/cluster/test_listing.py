"""cluster.listing: a room held by another node, as /api/rooms shows it, from its Redis hash
(no redis-server: the hash as redis-py returns it, bytes to bytes)."""
from sphincter_lib.cluster.listing import RemoteRoom
from sphincter_lib.cluster.node import digest, text
from sphincter_lib.rooms.interface import ROOM_FIGURES, WAITING


def test_a_live_room_of_another_node():
    fields = {b"code": b"ab12cd", b"state": b"live", b"named": b"0", b"owner": b"n2/ab12ef",
              b"peer": b"10.0.0.9:5000", b"opened_at": b"1700000000.5", b"messages": b"12",
              b"bytes": b"3400"}
    room = RemoteRoom("AB12CD", fields, 3)
    assert (room.code, room.state, room.named, room.source_node, room.peer) == (
        "ab12cd", "live", False, "n2", "10.0.0.9:5000")
    assert room.presence == "online" and room.source == "n2/ab12ef"
    assert (room.opened_at, room.messages, room.bytes) == (1700000000.5, 12, 3400)
    assert len(room.subscribers) == 3 and room.relay_subscribers == 3
    for name in ROOM_FIGURES:                         # everything the API and metrics read
        getattr(room, name)
    assert room.paused_for() == 0.0 and room.lag_max() == 0


def test_a_bare_hash_is_a_waiting_room_without_source():
    room = RemoteRoom("LOBBY", {b"named": b"1"}, 0)
    assert (room.code, room.state, room.named, room.source, room.presence, room.source_node) == (
        "LOBBY", WAITING, True, None, "offline", "")


def test_text_and_digest():
    assert text(b"caf\xc3\xa9") == "caf\u00e9" and text(None) == "" and text(7) == "7"
    assert digest("k") == "8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a"
