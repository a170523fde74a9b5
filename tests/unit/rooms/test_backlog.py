"""The backlog (rooms/backlog.py) and its cursors, without a Room: a bare holder of the parts.

Frames are plain bytes, so sizes are easy to reason about; ``call_soon`` only records what the
backlog schedules (the flush), which the tests then run by hand.
"""
import pytest

from sphincter_lib.rooms.backlog import Backlog
from sphincter_lib.rooms.cursor import Subscriber
from sphincter_lib.rooms.pace import Pace
from sphincter_lib.rooms.interface import SLOW_CLOSE
from sphincter_lib.rooms.stats import Stats
from conftest import drain


class Holder:
    """What the backlog and the cursor use of a room, and no more."""

    def __init__(self, buffer_bytes=100, replay=0, skip=False, high_water=50):
        self.code = "T"
        self.skip = skip
        self.stats = Stats()
        self.slow_cutoffs = self.skipped = 0
        self.subscribers = set()
        self.scheduled = []
        self.backlog = Backlog(self, buffer_bytes, replay, self.scheduled.append)
        self.pace = Pace(self.backlog, high_water, high_water // 2, self.stats, lambda: 0.0)
        self.passed = 0

    def join(self, peer):
        sub = Subscriber(self, peer)
        self.subscribers.add(sub)
        self.pace.joined(sub)
        return sub

    def drop_subscriber(self, sub):
        sub.active = False
        self.subscribers.discard(sub)

    def lead_passed(self):
        self.passed += 1


def test_frames_end_at_absolute_offsets_and_a_cursor_starts_at_the_head():
    room = Holder()
    backlog = room.backlog
    backlog.append(b"abc")              # nobody in: not kept (no replay window)
    sub = room.join("s")
    assert (sub.seq, sub.pos) == (1, 3) and backlog.bytes == 0
    backlog.append(b"de")
    backlog.append(b"fgh")
    assert backlog.ends == [5, 8] and (backlog.head_seq, backlog.head_pos) == (3, 8)
    assert backlog.frame_start(2) == 5 and backlog.frame_start(1) == 3 and backlog.bytes == 5
    assert drain(sub) == b"defgh" and sub.caught_up()


def test_pass_and_forget_move_the_base_to_the_head():
    backlog = Holder().backlog
    backlog.append(b"12345")                            # nobody in, no replay: not kept
    backlog.pass_bytes(7)                               # (only called when nothing is kept)
    assert (backlog.head_seq, backlog.head_pos) == (2, 12) and backlog.frames == []
    assert (backlog.base_seq, backlog.base_pos) == (2, 12)
    backlog.replay = 5
    backlog.append(b"x")
    assert backlog.frames == [b"x"]
    backlog.forget()
    assert backlog.bytes == 0 and backlog.base_seq == backlog.head_seq == 3


def test_an_empty_replay_room_keeps_its_window_only():
    backlog = Holder(buffer_bytes=100, replay=3).backlog
    for i in range(10):
        backlog.append(b"%d" % i * 10)
    assert len(backlog.frames) < 6                     # trimmed now and then, not every time
    assert backlog.replay_start() == backlog.head_seq - 3


def test_the_replay_window_is_whole_frames_within_the_budget():
    room = Holder(buffer_bytes=100, replay=10)
    backlog = room.backlog
    for _ in range(5):
        backlog.append(b"x" * 30)
    start = backlog.replay_start()
    assert backlog.head_pos - backlog.frame_start(start) == 90    # 3 frames; a 4th is over 100
    sub = Subscriber(room, "late")
    assert backlog.replay_to(sub) == 3 and sub.pos == backlog.frame_start(start) == sub.swept_pos


def test_reclaim_cuts_a_cursor_over_budget_and_keeps_what_the_slowest_left_needs():
    room = Holder(buffer_bytes=100)
    slow, fast = room.join("slow"), room.join("fast")
    for _ in range(3):
        room.backlog.append(b"x" * 30)
        drain(fast)
    assert slow.active and room.backlog.bytes == 90     # the first reclaim is due past 100
    room.backlog.append(b"y" * 30)                      # slow is 120 behind: cut
    assert not slow.active and slow.close_code == SLOW_CLOSE and slow.close_now
    assert room.slow_cutoffs == room.stats.slow_cutoffs == 1
    assert room.backlog.base_seq == fast.seq == 3       # only fast's frame is kept
    assert drain(fast) == b"y" * 30


def test_reclaim_skips_in_a_skip_room_and_the_jump_counts_as_unread():
    room = Holder(buffer_bytes=100, skip=True)
    slow, fast = room.join("slow"), room.join("fast")
    for _ in range(4):
        room.backlog.append(b"x" * 30)
        drain(fast)
    assert slow.active and slow.seq == room.backlog.head_seq - 1      # jumped to the newest frame
    assert slow.unread == slow.pos and room.skipped == room.stats.skipped_messages == 3
    assert room.pace.lead is fast


def test_flush_serves_parked_cursors_directly_or_unparks_them():
    room = Holder()
    served, blocked = room.join("served"), room.join("blocked")
    served.attach(direct=lambda: drain(served) is not None)
    blocked.attach(direct=lambda: False)
    for sub in (served, blocked):
        sub.wait(0)                                     # parks (and times out at once)
    assert room.backlog.parked == [served, blocked]
    room.backlog.append(b"new")
    room.backlog.append(b"er")
    assert room.scheduled == [room.backlog.flush]       # one flush per burst
    room.scheduled.pop()()
    assert room.backlog.parked == [served] and served.caught_up()
    assert not blocked.caught_up()
    blocked.wait(0)                                     # unparked: it parks again
    assert room.backlog.parked == [served, blocked]


def test_sweep_cuts_a_cursor_that_made_no_progress():
    room = Holder(buffer_bytes=1000)
    stuck, idle = room.join("stuck"), room.join("idle")
    room.backlog.append(b"x" * 10)
    drain(idle)
    room.backlog.sweep(0.0, 5)
    room.backlog.sweep(4.0, 5)
    assert stuck.active
    room.backlog.sweep(5.0, 5)
    assert not stuck.active and stuck.close_code == SLOW_CLOSE and idle.active
    assert room.stats.stall_cutoffs == room.slow_cutoffs == 1


@pytest.mark.parametrize("skip", [False, True])
def test_a_room_never_holds_more_than_its_budget_plus_one_frame(skip):
    room = Holder(buffer_bytes=100, skip=skip)
    subs = [room.join(i) for i in range(3)]
    for i in range(50):
        room.backlog.append(b"z" * (7 + i % 13))
        drain(subs[i % 3], limit=15)
        assert room.backlog.bytes <= 100 + 19
