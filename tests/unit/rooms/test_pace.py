"""Flow control (rooms/pace.py) on its own: the lead, and the source's pauses."""
import pytest

from sphincter_lib.rooms.pace import Pace
from sphincter_lib.rooms.stats import Stats


class Head:
    """A backlog's head, as the pace reads it."""
    head_pos = 0


class Cursor:
    def __init__(self, pos, unread=0):
        self.pos, self.unread = pos, unread


def pace(high_water=100, clock=None, stats=None):
    clock = clock if clock is not None else [0.0]
    return Pace(Head(), high_water, high_water // 2, stats or Stats(), lambda: clock[0])


def test_pauses_are_counted_once_and_timed():
    clock, stats = [10.0], Stats()
    f = pace(clock=clock, stats=stats)
    f.pause()
    clock[0] = 12.0
    f.pause()                                  # already paused: not a second pause
    assert f.paused and f.pauses == stats.source_pauses == 1
    assert f.paused_for() == pytest.approx(2.0) and f.paused_for(now=13.0) == pytest.approx(3.0)
    assert not f.wait(0)
    f.resume()
    f.resume()
    assert not f.paused and f.wait(0)
    assert f.paused_seconds == f.paused_for() == stats.source_paused_seconds == pytest.approx(2.0)


def test_a_newcomer_leads_only_if_it_has_read_further():
    f = pace()
    f.backlog.head_pos = 300
    first = Cursor(100)
    f.joined(first)
    assert f.lead is first and f.lead_pos == 100
    f.joined(Cursor(90))                       # (a replay window's start)
    assert f.lead is first
    f.joined(Cursor(300))                      # at the head
    assert f.lead.pos == f.lead_pos == 300 and f.lead_unread == 0


def test_a_newcomer_at_the_head_lets_a_paused_source_read():
    f = pace(high_water=100)
    f.backlog.head_pos = 500
    f.joined(Cursor(100))
    f.pause()
    f.joined(Cursor(480))                      # 20 behind: under low water (50)
    assert not f.paused and f.lead_pos == 480


def test_recompute_follows_the_furthest_reader_and_resumes_at_low_water():
    f = pace(high_water=100)
    f.backlog.head_pos = 400
    a, b = Cursor(300), Cursor(390, unread=200)   # b read only 190
    f.pause()
    f.recompute({a, b})
    assert f.lead is a and f.lead_pos == 300 and f.lead_unread == 0 and f.paused
    a.pos = 360
    f.recompute({a, b})
    assert not f.paused                           # 40 behind
    f.recompute(set())
    assert f.lead is None and f.lead_pos == 400 and f.lead_unread == 0
