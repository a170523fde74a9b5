"""Issue 21: an idle subscriber holds no greenlet, and still gets its messages, pings and timeout."""

import gc

import greenlet

from conftest import Source, mask_frame, parse_server_frames, raw_upgrade, unit, wait_for

N = 40


def live_greenlets():
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


class Frames:
    """Whole server frames from a raw socket, one at a time (its timeout bounds each wait)."""

    def __init__(self, sock):
        self.sock, self.data = sock, b""

    def next(self):
        while True:
            size = _whole(self.data)
            if size:
                frame, self.data = self.data[:size], self.data[size:]
                return parse_server_frames(frame)[0]
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.data += chunk


def _whole(data):
    """The length of the first frame in ``data`` if it is all there, else 0."""
    if len(data) < 2:
        return 0
    size, pos = data[1] & 0x7F, 2
    if size == 126:
        if len(data) < 4:
            return 0
        size, pos = int.from_bytes(data[2:4], "big"), 4
    return pos + size if len(data) >= pos + size else 0


def test_idle_subscribers_hold_no_greenlet_and_get_messages(make_relay):
    relay = make_relay(log_level="info")
    src = Source(relay)
    before = live_greenlets()
    socks = [raw_upgrade(relay, "room=" + src.code) for _ in range(N)]
    wait_for(lambda: relay.registry.subscriber_count == N, what="%d subscribers" % N)
    # the handlers' greenlets end once their connections are detached
    wait_for(lambda: live_greenlets() < before + N // 4, timeout=unit(5),
             what="no greenlet per subscriber (%d before, %d now)" % (before, live_greenlets()))
    src.send(b"one\n")
    for sock in socks:
        assert Frames(sock).next() == (1, b"one")
    wait_for(lambda: live_greenlets() < before + N // 4, timeout=unit(5),
             what="no writer greenlet left after the delivery")
    for sock in socks:
        sock.close()
    wait_for(lambda: relay.registry.subscriber_count == 0 and relay.app.connections == 0,
             what="subscribers gone")


def test_idle_subscriber_is_pinged_and_a_dead_one_dropped(make_relay):
    relay = make_relay(ping_interval=unit(0.2), ping_timeout=unit(0.4))
    src = Source(relay)
    before = live_greenlets()
    lively = raw_upgrade(relay, "room=" + src.code)
    dead = raw_upgrade(relay, "room=" + src.code)           # never answers
    wait_for(lambda: relay.registry.subscriber_count == 2, what="2 subscribers")
    lively, dead = Frames(lively), Frames(dead)
    for _ in range(3):                                       # pings keep coming while it answers
        opcode, payload = lively.next()
        assert opcode == 0x9
        lively.sock.sendall(mask_frame(0xA, payload))
        assert live_greenlets() < before + 2
    assert dead.next()[0] == 0x9                             # it was pinged, and did not answer
    opcode, payload = dead.next()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1011     # ping timeout
    wait_for(lambda: relay.registry.subscriber_count == 1, what="the dead one dropped")
    src.send(b"still\n")
    frame = lively.next()
    while frame[0] == 0x9:                                   # pings may come first
        lively.sock.sendall(mask_frame(0xA, frame[1]))
        frame = lively.next()
    assert frame == (1, b"still")
    lively.sock.close()
    dead.sock.close()
