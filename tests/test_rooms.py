import pytest

from sphincter_lib import wsproto
from sphincter_lib.errors import RoomFullError, RoomLimitError, RoomNotFound, ShuttingDown
from sphincter_lib.rooms import SLOW_CLOSE, RoomRegistry
from sphincter_lib.stats import Stats


def registry(**kw):
    kw.setdefault("encode", lambda payload, text: payload)   # identity: sizes are easy to reason about
    return RoomRegistry(**kw)


def drain(sub, limit=1 << 20):
    out = b""
    while True:
        data = sub.take(limit)
        if data is None:
            return out
        out += data
        sub.commit()


def test_subscriber_gets_messages_after_joining_in_order():
    reg = registry()
    room = reg.open("peer")
    room.publish(b"before", True)
    sub = room.subscribe("s")
    for i in range(5):
        room.publish(b"%d" % i, True)
    assert drain(sub) == b"01234"
    assert drain(sub) == b""


def test_take_batches_up_to_the_limit_but_at_least_one_frame():
    reg = registry()
    room = reg.open("p")
    sub = room.subscribe("s")
    for _ in range(10):
        room.publish(b"x" * 10, True)
    room.publish(b"y" * 100, True)
    got = []
    while True:
        data = sub.take(35)
        if data is None:
            break
        got.append(data)
        sub.commit()
    # batches of whole frames up to 35 bytes; a frame larger than the limit still goes alone
    assert got == [b"x" * 30, b"x" * 30, b"x" * 30, b"x" * 10, b"y" * 100]


def test_encoded_once_and_shared():
    calls = []
    reg = registry(encode=lambda p, t: calls.append(p) or wsproto.encode_message(p, t))
    room = reg.open("p")
    subs = [room.subscribe(i) for i in range(50)]
    room.publish(b"hi", True)
    assert calls == [b"hi"]
    frames = [s.take(1000) for s in subs]
    assert all(f is frames[0] for f in frames)


def test_slow_subscriber_is_cut_and_backlog_stays_bounded():
    stats = Stats()
    reg = registry(buffer_bytes=1000, stats=stats)
    room = reg.open("p")
    slow = room.subscribe("slow")
    fast = room.subscribe("fast")
    got = b""
    for i in range(500):
        room.publish(b"%03d" % (i % 1000) + b"." * 7, True)
        assert room.backlog_bytes <= 1000 + 10
        got += drain(fast)
    assert slow.closing and slow.close_now and slow.close_code == SLOW_CLOSE
    assert slow not in room.subscribers and fast in room.subscribers
    assert stats.slow_cutoffs == 1 and room.slow_cutoffs == 1
    assert len(got) == 500 * 10                  # the fast one lost nothing


def test_cut_interrupts_a_blocked_writer():
    reg = registry(buffer_bytes=100)
    room = reg.open("p")
    sub = room.subscribe("s")
    hits = []
    sub.interrupt = lambda: hits.append(1)
    room.publish(b"x" * 60, True)
    sub.take(1000)                               # in flight, never committed
    room.publish(b"x" * 60, True)
    assert hits == [1] and sub.close_code == SLOW_CLOSE


def test_close_lets_subscribers_drain_then_close():
    reg = registry()
    room = reg.open("p")
    sub = room.subscribe("s")
    room.publish(b"last", True)
    room.close()
    assert sub.closing and not sub.close_now and sub.close_code == 4410
    room.publish(b"ignored", True)
    assert drain(sub) == b"last"
    with pytest.raises(RoomNotFound):
        reg.get(room.code)
    with pytest.raises(RoomNotFound):
        room.subscribe("late")


def test_limits():
    reg = registry(max_rooms=2, max_subscribers_per_room=1)
    a = reg.open("a")
    reg.open("b")
    with pytest.raises(RoomLimitError):
        reg.open("c")
    a.subscribe("s1")
    with pytest.raises(RoomFullError):
        reg.subscribe(a.code.lower(), "s2")
    a.close()
    reg.open("c")                                # a closed room frees its place


def test_leaving_frees_the_backlog_and_the_count():
    reg = registry()
    room = reg.open("p")
    sub = room.subscribe("s")
    room.publish(b"x" * 100, True)
    assert reg.subscriber_count == 1 and room.backlog_bytes == 100
    sub.leave()
    sub.leave()
    assert reg.subscriber_count == 0 and room.backlog_bytes == 0


def test_shutdown_refuses_new_work():
    reg = registry()
    room = reg.open("p")
    sub = room.subscribe("s")
    reg.close_all(1001, "server shutting down")
    assert sub.close_code == 1001 and room.state == "closed"
    with pytest.raises(ShuttingDown):
        reg.open("q")
    with pytest.raises(ShuttingDown):
        reg.subscribe(room.code, "t")


def test_large_frames_go_alone_and_mixed_batches_still_join():
    reg = registry(encode=wsproto.encode_message)
    room = reg.open("p")
    sub = room.subscribe("s")
    big = b"b" * wsproto.LARGE_PAYLOAD
    room.publish(b"s1", True)
    room.publish(big, False)
    room.publish(b"s2", True)
    first = sub.take(1 << 20)                  # a batch that contains the pair is joined
    assert first == wsproto.encode_message(b"s1", True) + b"".join(wsproto.encode_message(big, False)) \
        + wsproto.encode_message(b"s2", True)
    sub.commit()
    room.publish(big, False)
    assert sub.take(wsproto.LARGE_PAYLOAD).__class__ is tuple      # alone, uncopied
