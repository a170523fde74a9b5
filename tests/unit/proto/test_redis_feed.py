"""proto.redis_feed: the epoch / sequence / gap / duplicate / taint / fencing rules of a room's
batches from Redis, table-driven, without a redis-server (and without gevent)."""
import pytest

from sphincter_lib.proto.redis_feed import (DELIVER, DROP_DUPLICATE, DROP_OLDER_EPOCH, DROP_OWN,
                                            TAINT_GAP, Decision, RedisFeed, parse_last)


def feed_at(epoch=0, feed_epoch=0, next_seq=None, tainted=False):
    feed = RedisFeed()
    feed.epoch, feed.feed_epoch, feed.next_seq, feed.tainted = epoch, feed_epoch, next_seq, tainted
    return feed


# (state before: epoch, feed_epoch, next_seq, tainted), batch (epoch, seq, owned, from_log),
# expected decision (action, gap), state after (epoch, feed_epoch, next_seq, tainted)
BATCHES = [
    ("first batch taken as it comes", (3, 0, None, False), (3, 7, False, False),
     (DELIVER, None), (3, 3, 8, False)),
    ("the expected batch", (3, 3, 5, False), (3, 5, False, False),
     (DELIVER, None), (3, 3, 6, False)),
    ("a duplicate", (3, 3, 5, False), (3, 4, False, False),
     (DROP_DUPLICATE, None), (3, 3, 5, False)),
    ("a gap of two batches", (3, 3, 5, False), (3, 7, False, False),
     (DELIVER, "2 batch(es)"), (3, 3, 8, False)),
    ("a new epoch from its first batch", (3, 3, 5, False), (4, 1, False, False),
     (DELIVER, None), (4, 4, 2, False)),
    ("a new epoch, its first batches missed", (3, 3, 5, False), (4, 3, False, False),
     (DELIVER, "the first 2 batch(es) of epoch 4"), (4, 4, 4, False)),
    ("fenced: a replaced source's batch", (4, 4, 2, False), (3, 9, False, False),
     (DROP_OLDER_EPOCH, None), (4, 4, 2, False)),
    ("older than the feed, not than the room", (3, 4, 2, False), (3, 9, False, False),
     (DROP_OLDER_EPOCH, None), (3, 4, 2, False)),
    ("own batch back from Redis", (3, 3, 5, False), (3, 5, True, False),
     (DROP_OWN, None), (3, 3, 5, False)),
    ("tainted, nothing expected: a gap, then taken", (3, 0, None, True), (3, 5, False, False),
     (DELIVER, TAINT_GAP), (3, 3, 6, False)),
    ("tainted, the expected batch: nothing lost", (3, 3, 5, True), (3, 5, False, False),
     (DELIVER, None), (3, 3, 6, False)),
    ("tainted, a duplicate: still tainted", (3, 3, 5, True), (3, 4, False, False),
     (DROP_DUPLICATE, None), (3, 3, 5, True)),
    ("from the log, older epoch: no fencing", (4, 0, None, False), (3, 2, False, True),
     (DELIVER, None), (4, 3, 3, False)),
    ("from the log while owned: taken", (4, 4, 1, False), (4, 2, True, True),
     (DELIVER, "1 batch(es)"), (4, 4, 3, False)),
]


@pytest.mark.parametrize("before,batch,decision,after", [row[1:] for row in BATCHES],
                         ids=[row[0] for row in BATCHES])
def test_batch_decisions(before, batch, decision, after):
    feed = feed_at(*before)
    epoch, seq, owned, from_log = batch
    got = feed.batch(epoch, seq, owned=owned, from_log=from_log)
    assert got == Decision(*decision)
    assert got.deliver == (decision[0] == DELIVER)
    assert (feed.epoch, feed.feed_epoch, feed.next_seq, feed.tainted) == after


# (state before), last (from an event), expected gap, state after
LASTS = [
    ("up to date", (3, 3, 6, False), (3, 5), None, (3, 3, 6, False)),
    ("behind: a gap, then expects what follows", (3, 3, 6, False), (3, 8),
     "batches up to 3:8 (have 3:5)", (3, 3, 9, False)),
    ("behind by an epoch", (3, 3, 6, False), (4, 2),
     "batches up to 4:2 (have 3:5)", (3, 4, 3, False)),
    ("no batch in that epoch says nothing", (3, 3, 6, False), (4, 0), None, (3, 3, 6, False)),
    ("unknown last", (3, 3, 6, False), None, None, (3, 3, 6, False)),
    ("tainted, unknown last: taken as lost", (3, 3, 6, True), None, TAINT_GAP, (3, 3, 6, False)),
    ("tainted, nothing expected, a last: lost", (3, 0, None, True), (3, 4), TAINT_GAP,
     (3, 0, None, False)),
    ("tainted, up to date: nothing lost", (3, 3, 6, True), (3, 5), None, (3, 3, 6, False)),
    ("not tainted, nothing expected", (3, 0, None, False), (3, 4), None, (3, 0, None, False)),
]


@pytest.mark.parametrize("before,last,gap,after", [row[1:] for row in LASTS],
                         ids=[row[0] for row in LASTS])
def test_check_last(before, last, gap, after):
    feed = feed_at(*before)
    assert feed.check_last(last) == gap
    assert (feed.epoch, feed.feed_epoch, feed.next_seq, feed.tainted) == after


def test_publishing_counts_batches_and_a_new_owner_starts_over():
    feed = RedisFeed()
    feed.own(2, feeding=False)
    assert feed.next_batch() == (2, 1)
    assert feed.next_batch() == (2, 2)
    assert feed.last_published == "2:2"
    assert (feed.feed_epoch, feed.next_seq) == (2, 3)       # what it has, should it lose the room
    feed.own(2, feeding=True)                                 # a resume in the same epoch
    assert feed.last_published == "2:0"
    feed.own(5, feeding=True)
    assert (feed.epoch, feed.next_batch()) == (5, (5, 1))


def test_a_new_epoch_resets_the_order_only_while_listening():
    feed = feed_at(3, 3, 6)
    feed.raise_epoch(2, feeding=True)
    assert (feed.epoch, feed.feed_epoch, feed.next_seq) == (3, 3, 6)
    feed.raise_epoch(4, feeding=False)
    assert (feed.epoch, feed.feed_epoch, feed.next_seq) == (4, 3, 6)
    feed.set_epoch(5, feeding=True)
    assert (feed.epoch, feed.feed_epoch, feed.next_seq) == (5, 5, 1)


def test_start_stop_and_taint():
    feed = feed_at(3, 3, 6)
    feed.taint()
    assert feed.tainted
    feed.start()
    assert feed.next_seq is None and feed.tainted
    feed.stop()
    assert feed.next_seq is None and not feed.tainted


@pytest.mark.parametrize("text,last", [("3:7", (3, 7)), ("", None), ("x", None), ("1:2:3", None),
                                       ("a:1", None)])
def test_parse_last(text, last):
    assert parse_last(text) == last
