import pytest

from sphincter_lib.rooms import registry as rooms
from sphincter_lib.proto import frames as wsproto
from sphincter_lib.rooms.backlog import Backlog
from sphincter_lib.rooms.outbox import Outbox
from sphincter_lib.errors import RoomFullError, RoomLimitError, RoomNotFound, ShuttingDown
from sphincter_lib.rooms.registry import SLOW_CLOSE, SOURCE_CLOSED, RoomRegistry, Source
from sphincter_lib.rooms.stats import Stats
from conftest import drain


def registry(**kw):
    kw.setdefault("encode", lambda payload, text: payload)   # identity: sizes are easy to reason about
    return RoomRegistry(**kw)


def test_subscriber_gets_messages_after_joining_in_order():
    reg = registry()
    room = reg.open(Source("peer"))
    room.publish(b"before", True)
    sub = room.subscribe("s")
    for i in range(5):
        room.publish(b"%d" % i, True)
    assert drain(sub) == b"01234"
    assert drain(sub) == b""


def test_take_batches_up_to_the_limit_but_at_least_one_frame():
    reg = registry()
    room = reg.open(Source("p"))
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
    room = reg.open(Source("p"))
    subs = [room.subscribe(i) for i in range(50)]
    room.publish(b"hi", True)
    assert calls == [b"hi"]
    frames = [s.take(1000) for s in subs]
    assert all(f is frames[0] for f in frames)


def test_slow_subscriber_is_cut_and_backlog_stays_bounded():
    stats = Stats()
    reg = registry(buffer_bytes=1000, stats=stats)
    room = reg.open(Source("p"))
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
    room = reg.open(Source("p"))
    sub = room.subscribe("s")
    hits = []
    sub.interrupt = lambda: hits.append(1)
    room.publish(b"x" * 60, True)
    sub.take(1000)                               # in flight, never committed
    room.publish(b"x" * 60, True)
    assert hits == [1] and sub.close_code == SLOW_CLOSE


def test_close_lets_subscribers_drain_then_close():
    reg = registry()
    room = reg.open(Source("p"))
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
    a = reg.open(Source("a"))
    reg.open(Source("b"))
    with pytest.raises(RoomLimitError):
        reg.open(Source("c"))
    a.subscribe("s1")
    with pytest.raises(RoomFullError):
        reg.subscribe(a.code.lower(), "s2")
    a.close()
    reg.open(Source("c"))                                # a closed room frees its place


def test_leaving_frees_the_backlog_and_the_count():
    reg = registry()
    room = reg.open(Source("p"))
    sub = room.subscribe("s")
    room.publish(b"x" * 100, True)
    assert reg.subscriber_count == 1 and room.backlog_bytes == 100
    sub.leave()
    sub.leave()
    assert reg.subscriber_count == 0 and room.backlog_bytes == 0


def test_shutdown_refuses_new_work():
    reg = registry()
    room = reg.open(Source("p"))
    sub = room.subscribe("s")
    reg.close_all(1001, "server shutting down")
    assert sub.close_code == 1001 and room.state == "closed"
    with pytest.raises(ShuttingDown):
        reg.open(Source("q"))
    with pytest.raises(ShuttingDown):
        reg.subscribe(room.code, "t")


def test_large_frames_go_alone_and_mixed_batches_still_join():
    reg = registry(encode=wsproto.encode_message)
    room = reg.open(Source("p"))
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


# -- flow control, skip, stall (issue 9) ------------------------------------------------

def test_source_waits_only_while_the_fastest_subscriber_is_past_high_water():
    reg = registry(buffer_bytes=1000, high_water=100)
    room = reg.open(Source("p"))
    assert not room.source_must_wait()           # no subscribers: read freely
    room.publish(b"x" * 500, True)
    assert not room.source_must_wait()
    fast, slow = room.subscribe("fast"), room.subscribe("slow")
    room.publish(b"a" * 60, True)
    assert not room.source_must_wait()
    room.publish(b"b" * 60, True)                  # both 120 behind
    assert room.source_must_wait()
    fast.take(60)
    fast.commit()                                  # lead 60 behind: under high water, not yet low
    assert not room.source_must_wait()
    fast.take(60)
    fast.commit()
    assert room.lead_pos == room.head_pos and slow.lag_bytes == 120


def test_paused_source_resumes_at_low_water_and_is_counted():
    clock = [100.0]
    reg = registry(buffer_bytes=1000, high_water=100, monotonic=lambda: clock[0])
    room = reg.open(Source("p"))
    sub = room.subscribe("s")
    for _ in range(4):
        room.publish(b"x" * 40, True)              # 160 behind
    assert room.source_must_wait()
    room.pace.pause()                            # as wait_for_readers does before blocking
    assert not room.pace.wait(0)
    clock[0] += 2.5
    sub.take(40)
    sub.commit()                                   # 120 behind: above low water (50)
    assert room.source_paused
    sub.take(80)
    sub.commit()                                   # 40 behind: resume
    assert not room.source_paused and room.pace.wait(0)
    assert room.paused_seconds == pytest.approx(2.5) and reg.stats.source_paused_seconds == pytest.approx(2.5)


def test_lead_is_recomputed_when_the_fastest_leaves_and_a_new_subscriber_unpauses():
    reg = registry(buffer_bytes=1000, high_water=100)
    room = reg.open(Source("p"))
    fast, slow = room.subscribe("fast"), room.subscribe("slow")
    room.publish(b"x" * 150, True)
    slow.take(1000)                # a batch in flight does not move the cursor
    fast.take(1000)
    fast.commit()
    assert not room.source_must_wait()
    fast.leave()
    assert room.lead_pos == slow.pos and room.source_must_wait()
    room.subscribe("new")          # caught up by definition: the room may read again
    assert not room.source_must_wait()


def test_flow_control_off_never_waits():
    reg = registry(buffer_bytes=1000, high_water=100, flow_control=False)
    room = reg.open(Source("p"))
    room.subscribe("s")
    room.publish(b"x" * 900, True)
    assert not room.source_must_wait()


def test_skip_policy_jumps_to_the_newest_whole_message():
    reg = registry(buffer_bytes=100, slow_policy="skip")
    room = reg.open(Source("p"))
    slow, fast = room.subscribe("slow"), room.subscribe("fast")
    for i in range(10):
        room.publish(b"%02d" % i + b"." * 28, True)     # 30-byte frames
        assert drain(fast)
    assert slow.active and slow.close_code is None
    got = drain(slow)
    assert got.startswith(b"0")                        # it jumped, then got whole frames
    assert len(got) % 30 == 0 and got[-30:].startswith(b"09")
    numbers = [int(got[k:k + 2]) for k in range(0, len(got), 30)]
    assert numbers == sorted(numbers) and len(numbers) < 10
    assert reg.stats.skipped_messages == room.skipped == 10 - len(numbers)


def test_skip_while_a_batch_is_in_flight_never_moves_the_cursor_back():
    reg = registry(buffer_bytes=100, slow_policy="skip")
    room = reg.open(Source("p"))
    sub = room.subscribe("s")
    room.publish(b"a" * 30, True)
    assert sub.take(30) == b"a" * 30                    # being written
    for _ in range(5):
        room.publish(b"b" * 30, True)
    # the 4th publish put it 120 > 100 bytes behind: it jumped to the newest frame then (seq 3)
    assert sub.seq == 3 and sub.lag_bytes == 90
    sub.commit()                                        # the old batch finished: no step back
    assert sub.seq == 3
    assert drain(sub) == b"b" * 90
    assert room.skipped == 2                            # a, the in-flight one, is not counted


def test_a_skipped_subscriber_does_not_take_the_lead_by_jumping():
    """Issue 18: the skip carried the slow subscriber to the newest frame, ahead of the fastest
    reader; were it the lead, the source would read on and the fast one would be skipped too."""
    reg = registry(buffer_bytes=100, high_water=50, slow_policy="skip")
    room = reg.open(Source("p"))
    fast, slow = room.subscribe("fast"), room.subscribe("slow")
    for _ in range(2):
        room.publish(b"a" * 30, True)
    fast.take(30)
    fast.commit()                                   # fast: 30 behind; slow: 60
    room.publish(b"b" * 30, True)
    room.publish(b"c" * 30, True)                   # slow 120 behind: skipped to the newest frame
    assert slow.seq == room.head_seq - 1 and slow.unread == 90
    assert room.lead is fast and room.lead_pos == fast.pos == 30
    assert room.source_must_wait()                  # fast is 90 behind: the source waits for it
    assert drain(slow) == b"c" * 30                 # the jumper catches up at once...
    assert room.lead is fast and room.source_must_wait()   # ...and still does not lead
    assert drain(fast) == b"a" * 30 + b"b" * 30 + b"c" * 30
    assert room.lead is fast and not room.source_must_wait()
    assert reg.stats.skipped_messages == 3


def test_a_skipped_subscriber_leads_again_once_it_has_read_more_than_the_lead():
    reg = registry(buffer_bytes=100, high_water=50, slow_policy="skip")
    room = reg.open(Source("p"))
    a, b = room.subscribe("a"), room.subscribe("b")
    for _ in range(4):
        room.publish(b"x" * 30, True)               # b is skipped: a read nothing, b 120 behind...
    assert a.unread and b.unread                    # ...both were (flow control is not asked here)
    assert room.lead in (a, b)
    drain(a)
    assert room.lead is a
    for _ in range(3):                              # b reads everything, a nothing: b leads
        room.publish(b"y" * 10, True)
        drain(b)
    assert room.lead is b and room.lead_pos == b.pos
    b.leave()                                       # the lead left: the one that read furthest
    assert room.lead is a and room.lead_pos == a.pos


def test_with_flow_control_off_a_skipped_lead_is_found_again():
    reg = registry(buffer_bytes=100, slow_policy="skip", flow_control=False)
    room = reg.open(Source("p"))
    sub = room.subscribe("s")
    for _ in range(5):
        room.publish(b"x" * 30, True)
    assert sub.unread and room.lead is sub and room.lead_pos == sub.pos


def test_sweep_cuts_a_subscriber_that_makes_no_progress_with_data_waiting():
    reg = registry(buffer_bytes=1000, stall_timeout=10)
    room = reg.open(Source("p"))
    idle, stuck = room.subscribe("idle"), room.subscribe("stuck")
    reg.sweep(now=0)
    room.publish(b"x" * 10, True)
    drain(idle)
    reg.sweep(now=5)                    # the first sweep that sees data waiting starts the clock
    reg.sweep(now=14.9)
    assert stuck.active
    reg.sweep(now=15)
    assert not stuck.active and stuck.close_code == SLOW_CLOSE
    assert idle.active and reg.stats.stall_cutoffs == 1


def test_sweep_spares_a_slow_subscriber_that_moves():
    reg = registry(buffer_bytes=1000, stall_timeout=10)
    room = reg.open(Source("p"))
    sub = room.subscribe("s")
    reg.sweep(now=0)
    for t in range(1, 40):
        room.publish(b"x" * 10, True)
        room.publish(b"y" * 10, True)
        sub.take(10)
        sub.commit()                    # one message per second: always behind, always moving
        reg.sweep(now=t)
    assert sub.active
    reg.sweep(now=39 + 9.9)
    assert sub.active
    reg.sweep(now=39 + 10)
    assert not sub.active


def test_stall_timeout_zero_never_sweeps():
    reg = registry(stall_timeout=0)
    assert reg.sweep_interval is None
    room = reg.open(Source("p"))
    sub = room.subscribe("s")
    room.publish(b"x", True)
    reg.sweep(now=0)
    reg.sweep(now=1e9)
    assert sub.active


# -- the declared interface: events, sources, limits passed in (issue 10) ----------------

class Recorder(rooms.RoomEvents):
    def __init__(self):
        self.seen = []

    def subscriber_joined(self, room, sub):
        self.seen.append(("joined", sub.peer))

    def subscriber_left(self, room, sub):
        self.seen.append(("left", sub.peer))

    def source_attached(self, room, source):
        self.seen.append(("attached", source.peer))

    def source_detached(self, room, source):
        self.seen.append(("detached", source.peer))

    def room_closed(self, room):
        self.seen.append(("closed", room.close_code))


def test_a_room_tells_its_listener_what_happens():
    events = Recorder()
    reg = registry(listener=events)
    source = Source("src")
    room = reg.open(source)
    assert room.source is source and room.peer == "src"
    a, b = room.subscribe("a"), room.subscribe("b")
    a.leave()
    room.source_left(Source("someone else"))      # not its source: nothing happens
    assert room.state == "live"
    room.source_left(source)
    assert room.source is None and room.state == "closed" and b.closing
    b.leave()
    assert events.seen == [("attached", "src"), ("joined", "a"), ("joined", "b"), ("left", "a"),
                           ("detached", "src"), ("closed", SOURCE_CLOSED), ("left", "b")]
    assert reg.subscriber_count == 0 and len(reg) == 0


def test_rooms_get_their_limits_explicitly():
    reg = registry(buffer_bytes=1000, max_subscribers_per_room=3, high_water=300, slow_policy="skip")
    room = reg.open(Source("p"))
    limits = room.limits
    assert (limits.buffer_bytes, limits.max_subscribers, limits.high_water, limits.low_water,
            limits.slow_policy) == (1000, 3, 300, 150, "skip")
    assert room.read_budget(256 * 1024) == (1000 - 300) * 2 // 3
    assert registry(flow_control=False).open(Source("p")).read_budget(4096) == 4096
    with pytest.raises(ValueError):
        rooms.RoomLimits(slow_policy="drop")


def test_registry_implements_the_declared_model():
    reg = registry()
    for name in ("rooms", "open", "get", "subscribe", "sweep", "close_all", "__len__"):
        assert getattr(type(reg), name) is not getattr(rooms.RoomModel, name), name


def test_a_plain_source_cannot_be_written_to():
    assert Source("x").send(b"hello") is False


# -- write-back: the outbox toward the source (issue 12) ----------------------------------

def test_outbox_is_fifo_whole_messages_and_pauses_writers_past_its_limit():
    box = Outbox(limit=100)
    resumed = []
    assert box.put(b"a" * 40) and box.put(b"b" * 40)
    assert not box.put(b"c" * 40)                  # 120 >= 100: the writer must pause
    box.when_writable(lambda: resumed.append(1))
    assert box.take(limit=90) == b"a" * 40 + b"b" * 40   # whole messages only
    assert box.done() == 2 and resumed == [1]     # 40 <= 50: room again
    assert box.take(limit=10) == b"c" * 40        # one message bigger than the batch goes alone
    assert box.done() == 1 and box.take() is None and box.bytes == 0


def test_outbox_take_without_done_is_taken_again_by_the_next_drainer():
    box = Outbox(limit=100)
    box.put(b"x")
    assert box.take() == b"x"
    box.wake()                                    # the source was replaced mid-write
    assert box.done() == 0                        # the old drainer's done() is ignored
    assert box.take() == b"x"


def test_room_write_goes_to_the_outbox_and_close_drops_it_and_resumes_writers():
    reg = registry(write_back=True, write_queue_bytes=10)
    room = reg.open(Source("p"))
    assert room.write_key and len(room.write_key) >= 22
    resumed = []
    assert not room.write(b"0123456789\n")
    room.outbox.when_writable(lambda: resumed.append(1))
    room.close()
    assert resumed == [1] and room.outbox.bytes == 0
    assert room.write(b"late") is True            # dropped: nobody will read it
    assert reg.stats.writes_in == 1


def test_no_write_key_without_write_back():
    assert registry().open(Source("p")).write_key is None


def test_replay_window_does_not_make_every_publish_reclaim(monkeypatch):
    reg = registry(buffer_bytes=1000, replay=100)       # a window as large as the budget
    room = reg.open(Source("p"))
    subs = [room.subscribe(i) for i in range(3)]
    calls = []
    real = Backlog.reclaim
    monkeypatch.setattr(Backlog, "reclaim", lambda self: calls.append(1) or real(self))
    for i in range(200):
        room.publish(b"x" * 50, True)
        for s in subs:
            drain(s)
    # one reclaim per budget's worth of bytes (about 200 * 50 / 1000), not one per publish
    assert len(calls) <= 15
    late = room.subscribe("late")
    assert drain(late) == b"x" * 1000           # the replay window (capped by the budget) is there
