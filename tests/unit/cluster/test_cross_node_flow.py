"""cluster.flow: flow control across nodes, without Redis and without gevent — a fake room
with the public figures the flow reads, a feed with its epoch, and the reports it sends."""
import pytest

from sphincter_lib.cluster.flow import AT_HEAD, CrossNodeFlow, parse_report, report_message
from sphincter_lib.rooms.interface import LIVE, WAITING


class FakeFeed:
    feed_epoch = 3


class FakeRoom:
    """The public figures of a room that the flow reads and the ``lead_watch`` it sets."""

    def __init__(self, head_pos=0, lead_pos=0, lead_unread=0, subscribers=(), owned=True):
        self.head_pos, self.lead_pos, self.lead_unread = head_pos, lead_pos, lead_unread
        self.subscribers = set(subscribers)
        self.source = object() if owned else None
        self.flow_control = True
        self.state = LIVE
        self.epoch = 3
        self.high_water = 1000
        self.lead_watch = None
        self.source_paused = False
        self.clock = 100.0
        self.local_wait = False          # what Room.source_must_wait would say

    def now(self):
        return self.clock

    def source_must_wait(self):
        return self.flow.must_wait() if self.flow.active else self.local_wait


def make(**figures):
    room = FakeRoom(**figures)
    sent = []
    room.flow = CrossNodeFlow(room, FakeFeed(), lambda r, text: sent.append(text), 1000 // 4)
    return room, room.flow, sent


# -- the wire form ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, parsed", [
    ("fc K 3 1200 n2/ab", ("K", 3, 1200, 0, "n2/ab")),
    ("fc K 3 1200:300 n2/ab", ("K", 3, 1200, 300, "n2/ab")),
    ("fc K 3 ^ n2/ab", ("K", 3, AT_HEAD, 0, "n2/ab")),
    ("fc K 3 - n2/ab", ("K", 3, None, 0, "n2/ab")),
    ("fc K x 10 n2", None),
    ("fc K 3 ten n2", None),
    ("fc K 3 10:x n2", None),
    ("fc K 3 10", None),
    ("xx K 3 10 n2", None),
    ("", None),
])
def test_parse_report(text, parsed):
    assert parse_report(text) == parsed


def test_report_message_round_trips():
    assert parse_report(report_message("ROOM", "7 42:5", "node/1")) == ("ROOM", 7, 42, 5, "node/1")


# -- the owner's side ---------------------------------------------------------------------
def test_without_reports_the_room_decides():
    room, flow, _ = make(head_pos=5000, lead_pos=0, subscribers=[1])
    assert not flow.active and flow.must_wait() is None


def test_waits_while_every_reporting_node_is_high_water_behind():
    room, flow, _ = make(head_pos=5000)
    flow.remote_nodes = frozenset(["n2", "n3"])
    flow.remote_flow("n2", 3, 3000, 200.0)
    assert flow.must_wait() is False              # n3 says nothing: it keeps up
    flow.remote_flow("n3", 3, 4500, 200.0)
    assert flow.must_wait() is False              # n3 is close to the head
    flow.remote_flow("n3", 3, 3900, 200.0)
    assert flow.must_wait() is True               # both 1000 or more behind


def test_the_owners_own_subscriber_counts():
    room, flow, _ = make(head_pos=5000, lead_pos=4800, subscribers=[1])
    flow.remote_flow("n2", 3, 1000, 200.0)
    assert flow.must_wait() is False


def test_unread_bytes_do_not_count_as_read():
    room, flow, _ = make(head_pos=5000, lead_pos=4800, lead_unread=4000, subscribers=[1])
    flow.remote_flow("n2", 3, 3000, 200.0)        # 3000 read beats 4800 - 4000
    assert flow.must_wait() is True


def test_reports_expire_then_the_room_decides():
    room, flow, _ = make(head_pos=5000)
    flow.remote_flow("n2", 3, 0, 150.0)
    assert flow.must_wait() is True
    room.clock = 151.0
    assert flow.must_wait() is None and not flow.active


def test_other_epochs_and_rooms_not_owned_are_ignored():
    room, flow, _ = make(head_pos=5000)
    assert flow.remote_flow("n2", 2, 0, 200.0) is False
    assert not flow.active
    room.source = None
    flow.remote_flow("n2", 3, 0, 200.0)
    assert not flow.active


def test_at_head_and_gone():
    room, flow, _ = make(head_pos=5000)
    flow.remote_flow("n2", 3, AT_HEAD, 200.0)
    assert flow.remote_leads["n2"] == (5000, 200.0, 0)
    flow.remote_flow("n2", 3, None, 200.0)
    assert not flow.active


def test_a_report_that_lets_the_paused_source_go_says_so():
    room, flow, _ = make(head_pos=5000)
    flow.remote_flow("n2", 3, 0, 200.0)
    room.source_paused = True
    assert flow.remote_flow("n2", 3, 4900, 200.0) is True


def test_not_live_or_no_flow_control_never_waits():
    room, flow, _ = make(head_pos=5000)
    flow.remote_flow("n2", 3, 0, 200.0)
    room.state = WAITING
    assert flow.must_wait() is False
    room.state, room.flow_control = LIVE, False
    assert flow.must_wait() is False


# -- the mirror's side --------------------------------------------------------------------
def test_first_batch_reports_then_each_step():
    room, flow, sent = make(owned=False, subscribers=[1])
    room.head_pos = room.lead_pos = 100
    flow.batch_taken(3, 600)                      # the owner is 500 bytes ahead of our offsets
    assert sent == ["3 600"] and flow.pub_delta == 500
    assert room.lead_watch == 600 + 250 - 500
    flow.batch_taken(3, 700)
    assert sent == ["3 600"]                      # nothing new: watch instead
    room.lead_pos = 350
    flow.lead_passed()
    assert sent[-1] == "3 %d" % (350 + flow.pub_delta)


def test_batches_from_the_log_report_nothing():
    room, flow, sent = make(owned=False, subscribers=[1])
    flow.batch_taken(3, 600, from_log=True)
    assert sent == [] and flow.pub_delta == 600


def test_unread_goes_with_the_report():
    room, flow, sent = make(owned=False, subscribers=[1], lead_unread=40)
    flow.batch_taken(3, 10)
    assert sent == ["3 10:40"]


def test_renewed_while_lagging_forgotten_when_empty():
    room, flow, sent = make(owned=False, subscribers=[1], head_pos=1000, lead_pos=0)
    flow.renew()
    assert sent == []                             # nothing reported yet: nothing to renew
    flow.report_lead()
    assert flow.lagging
    flow.renew()
    assert sent == ["3 0", "3 0"]
    room.lead_pos = 900
    flow.renew()
    assert len(sent) == 2                         # keeps up: the report may expire
    flow.forget_lead()
    assert sent[-1] == "3 -" and flow.reported_lead is None and room.lead_watch is None
    flow.forget_lead()
    assert sent[-1] == "3 -" and len(sent) == 3


def test_reset_when_the_source_comes_here():
    room, flow, sent = make(head_pos=5000)
    flow.remote_flow("n2", 3, 0, 200.0)
    flow.reported_lead, room.lead_watch = 10, 20
    flow.reset()
    assert not flow.active and flow.reported_lead is None and room.lead_watch is None
