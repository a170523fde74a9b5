"""``--slow-policy skip`` as a property (issue 18): the subscriber that keeps up loses nothing.

Each case (a seed) draws a room: 2 to 4 subscribers, one of them the fastest reader by a wide
margin, the others reading slowly through a 4 KiB receive buffer; a source writes thousands of
lines of random length at once. The contract (docs/PROTOCOL.md, "Slow subscribers"):
- the fastest reader's sequence has no gap: flow control follows it, so it never falls a buffer
  behind (a subscriber that *skipped* must not take the lead: it got ahead by jumping, not by
  reading);
- every slower reader receives whole messages in increasing order (gaps allowed);
- all of them end with the last message, then 4410.

The same on two nodes sharing a real Redis: the source on one node, the fastest reader on the
other, slow readers on both.

CI runs the seeded cases (well under a minute). For many random ones (the issue asks 200 in a row)::

    SPHINCTER_SKIP_RUNS=200 make test PYTEST_ARGS="tests/relay/test_skip_property.py -x"

A failing case prints its seed; ``SPHINCTER_SKIP_SEED=<seed>`` runs that one again.
"""
import os
import random
import time

import gevent
import gevent.event
import pytest

from conftest import wait_for
from flow_util import SOURCE_CLOSED, FrameReader, RelayProcess, open_source, read_messages, ws_connect
from rediskit import Cluster
from testkit import unit

pytestmark = pytest.mark.timeout(600)

OPTIONS = ("--slow-policy", "skip", "--subscriber-buffer-bytes", "64KiB", "--max-message-bytes", "4KiB",
           "--subscriber-send-buffer", "16KiB",
           "--stall-timeout", "0", "--log-level", "info")
#: the seeded cases CI runs, each an in-process relay and a two-node one
CI_SEEDS = (1, 2, 3, 4)


def seeds():
    if os.environ.get("SPHINCTER_SKIP_SEED"):
        return [int(os.environ["SPHINCTER_SKIP_SEED"])]
    runs = int(os.environ.get("SPHINCTER_SKIP_RUNS", "0"))
    if runs:
        pick = random.SystemRandom()
        return [pick.randrange(1, 1 << 31) for _ in range(runs)]
    return list(CI_SEEDS)


class Reader:
    """One subscriber, read ``size`` bytes at a time with ``pause`` seconds before each read."""

    def __init__(self, name, size, pause, rcvbuf=None):
        self.name, self.size, self.pause, self.rcvbuf = name, size, pause, rcvbuf
        self.sock = None
        self.seqs = []
        self.code = None
        #: set once the fastest reader has everything: from then on a slow one drains at full speed
        self.hurry = None

    def recv(self, n):
        if self.pause and not self.hurry.is_set():
            gevent.sleep(self.pause)
        return self.sock.recv(min(n, self.size))

    def run(self, line, deadline):
        def on_message(opcode, payload):
            seq = int(payload[:8])
            assert opcode == 1 and payload == line(seq), "%s: not a whole message: %r" % (
                self.name, payload[:40])
            assert not self.seqs or seq > self.seqs[-1], "%s: %d after %d" % (
                self.name, seq, self.seqs[-1])
            self.seqs.append(seq)

        self.code = read_messages(FrameReader(self, bufsize=self.size), on_message, deadline)

    def gaps(self):
        return [(a, b) for a, b in zip(self.seqs, self.seqs[1:]) if b != a + 1]

    def __repr__(self):
        gaps = self.gaps()
        return "%s(%d B/read, %.1f ms pause): %d messages, %d gaps%s, last %s, close %s" % (
            self.name, self.size, self.pause * 1000, len(self.seqs), len(gaps),
            " %s" % gaps[:3] if gaps else "", self.seqs[-1] if self.seqs else None, self.code)


def draw(seed):
    """A case: (messages, line length, readers); readers[0] is the fastest, at least twice as
    fast as any other (4 MB/s and more against 2 MB/s and less).

    10 to 16 MB in all: on loopback the kernel takes a few MB for each subscriber's socket at
    once (its send buffer grows with a 64 KiB MSS), so less would never reach the relay's own
    64 KiB budget for the readers that keep up."""
    rng = random.Random(seed)
    fast = Reader("fast", rng.choice((4096, 16384, 65536)), rng.choice((0.0, 0.0005, 0.001)))
    slow = [Reader("slow%d" % i, rng.choice((1024, 4096)), rng.uniform(0.002, 0.01), rcvbuf=4096)
            for i in range(rng.randint(1, 3))]
    length = rng.randint(20, 300)
    return rng.randint(10 << 20, 16 << 20) // length, length, [fast] + slow


def run_case(seed, source_node, nodes_for):
    """Open a room on ``source_node``, subscribe the drawn readers (reader k on ``nodes_for(k)``),
    write every line at once, and check the property."""
    n, length, readers = draw(seed)
    filler = b"y" * (length - 9)

    def line(i):
        return b"%08d %s" % (i, filler)

    src, code = open_source(source_node.tcp)
    try:
        for k, reader in enumerate(readers):
            reader.sock = ws_connect(nodes_for(k).ws, code, rcvbuf=reader.rcvbuf, timeout=unit(60))
        total = len(readers)
        wait_for(lambda: sum(node.healthz()["subscribers"] for node in {nodes_for(k) for k in
                                                                         range(total)}) >= total,
                 interval=0.02, what="%d subscribers joined" % total)
        deadline = time.monotonic() + unit(120)
        hurry = gevent.event.Event()
        for reader in readers:
            reader.hurry = hurry
        jobs = [gevent.spawn(reader.run, line, deadline) for reader in readers]
        jobs[0].link(lambda job: hurry.set())
        src.settimeout(unit(60))
        src.sendall(b"".join(line(i) + b"\n" for i in range(n)))
        src.close()
        gevent.joinall(jobs, timeout=unit(150))
        report = "seed %d: %d lines of %d bytes; %s" % (seed, n, length, "; ".join(map(repr, readers)))
        print(report)
        for job in jobs:
            assert job.ready(), "a reader is still reading: " + report
            job.get()
        fast = readers[0]
        assert not fast.gaps() and len(fast.seqs) == n, "the fastest reader lost messages: " + report
        for reader in readers:
            assert reader.seqs and reader.seqs[-1] == n - 1, "did not end with the last: " + report
            assert reader.code == SOURCE_CLOSED, report
    finally:
        src.close()
        for reader in readers:
            if reader.sock is not None:
                reader.sock.close()


@pytest.fixture(scope="module")
def relay():
    r = RelayProcess(*OPTIONS)
    yield r
    log = r.log()
    r.stop()
    print("---- relay log (tail) ----\n%s" % log[-2000:])


@pytest.fixture(scope="module")
def two_nodes():
    c = Cluster()
    try:
        yield c.nodes(2, *OPTIONS)
    finally:
        c.close()


@pytest.mark.parametrize("seed", seeds())
def test_fastest_reader_loses_nothing(relay, seed):
    run_case(seed, relay, lambda k: relay)


@pytest.mark.parametrize("seed", seeds())
def test_fastest_reader_on_another_node_loses_nothing(two_nodes, seed):
    """Source on n1; the fastest reader on n2; the slow ones alternate n1, n2, n1."""
    n1, n2 = two_nodes
    run_case(seed, n1, lambda k: n2 if k % 2 == 0 else n1)
