"""Rooms that outlive their source (issue 11), from outside: named rooms, takeover, resume with a
grace period, replay for late joiners, presence. Real server, real sockets, real WebSocket client."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import gevent
import pytest
import websocket

from conftest import recv_close, subscribe, unit, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = websocket.ABNF.OPCODE_TEXT


class Src:
    """A raw TCP source: sends its first lines, then reads banner lines."""

    def __init__(self, address, first=b""):
        self.sock = socket.create_connection(address, timeout=unit(5))
        if first:
            self.sock.sendall(first)
        self.buf = b""

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                out, self.buf = self.buf, b""
                return out
            self.buf += chunk
        out, _, self.buf = self.buf.partition(b"\n")
        return out + b"\n"

    def send(self, data):
        self.sock.sendall(data)

    def eof(self):
        """True once the relay closed the connection (after any remaining lines)."""
        while True:
            chunk = self.sock.recv(4096)
            if not chunk:
                return True
            self.buf += chunk

    def close(self):
        self.sock.close()


def rooms_file(tmp_path, text):
    path = tmp_path / "rooms.txt"
    path.write_text(text)
    return str(path)


def get_json(relay, path):
    host, port = relay.ws_address
    try:
        with urllib.request.urlopen("http://%s:%d%s" % (host, port, path), timeout=unit(10)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def recv_text(ws):
    op, data = ws.recv_data()
    assert op == TEXT, (op, data)
    return data


@pytest.fixture
def named(make_relay, tmp_path):
    path = rooms_file(tmp_path, "# overlay rooms\nScene  scene-token-123  replay=1\nscores score-token-456\n")
    relay = make_relay(rooms_file=path)
    relay.sources.greeter.preamble_wait = unit(0.3)
    return relay


def test_named_room_exists_before_any_source_and_survives_its_source(named):
    assert get_json(named, "/status?room=scene") == (200, {"room": "Scene", "state": "waiting",
                                                          "source": "offline", "named": True})
    ws = subscribe(named, "SCENE")                        # no 4404: it exists
    src = Src(named.tcp_address, b"AUTH scene-token-123\n")
    assert src.line() == b"ROOM Scene\n"                   # the name as written in the file
    wait_for(lambda: get_json(named, "/status?room=scene")[1]["source"] == "online", what="online")
    src.send(b"first\n")
    assert recv_text(ws) == b"first"
    src.close()
    wait_for(lambda: named.registry.get("scene").state == "waiting", what="waiting")
    src2 = Src(named.tcp_address, b"AUTH scene-token-123\nsecond\n")
    assert src2.line() == b"ROOM Scene\n"
    assert recv_text(ws) == b"second"                     # same connection: never closed
    assert named.stats.resumes == 1
    src2.close()


def test_newer_source_takes_over_a_named_room(named):
    ws = subscribe(named, "scores")
    old = Src(named.tcp_address, b"AUTH score-token-456\n")
    assert old.line() == b"ROOM scores\n"
    old.send(b"from old\n")
    assert recv_text(ws) == b"from old"
    new = Src(named.tcp_address, b"AUTH score-token-456\n")
    assert new.line() == b"ROOM scores\n"
    assert old.line() == b"ERROR replaced by a newer source\n"
    assert old.eof()
    new.send(b"from new\n")
    assert recv_text(ws) == b"from new"
    assert named.stats.takeovers == 1
    new.close()


def test_a_wrong_token_is_refused_when_named_rooms_exist(named):
    src = Src(named.tcp_address, b"AUTH not-a-token-at-all\n")
    assert src.line() == b"ERROR unauthorized\n"
    # without an AUTH line a source still gets an ephemeral room (after the short wait)
    plain = Src(named.tcp_address)
    assert re.match(rb"^ROOM [2-9A-Z]{6}\n$", plain.line())


def test_replay_gives_late_joiners_the_last_value_across_source_changes(named):
    src = Src(named.tcp_address, b"AUTH scene-token-123\n")
    assert src.line() == b"ROOM Scene\n"
    src.send(b"scene A\nscene B\n")
    wait_for(lambda: named.registry.get("scene").messages == 2, what="published")
    src.close()
    wait_for(lambda: named.registry.get("scene").state == "waiting", what="waiting")
    ws = subscribe(named, "scene")
    assert recv_text(ws) == b"scene B"                    # replay=1: the last value, at once
    assert named.stats.replayed_messages == 1


def test_bad_rooms_file_is_a_config_error_naming_file_and_line(tmp_path):
    path = rooms_file(tmp_path, "good good-token-1\nbad/name token-123456\n")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "sphincter.py"), "--rooms-file", path,
                           "--tcp-port", "0", "--ws-port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=unit(30))
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "%s:2: invalid room name 'bad/name'" % path in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_sighup_reloads_the_rooms_file(tmp_path):
    path = rooms_file(tmp_path, "keep keep-token-123\ngone gone-token-123\n")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sphincter.py"), "--rooms-file", path,
                             "--tcp-host", "127.0.0.1", "--tcp-port", "0", "--ws-host", "127.0.0.1",
                             "--ws-port", "0"], stderr=subprocess.PIPE)
    try:
        lines = []
        while True:
            line = proc.stderr.readline().decode()
            assert line, "".join(lines)
            lines.append(line)
            m = re.search(r"listening tcp=([\d.]+):(\d+) ws=([\d.]+):(\d+)", line)
            if m:
                break

        class Relay:
            ws_address = (m.group(3), int(m.group(4)))
        relay = Relay()
        ws = subscribe(relay, "gone")
        with open(path, "w") as f:
            f.write("keep keep-token-123\nfresh fresh-token-12 replay=3\n")
        proc.send_signal(signal.SIGHUP)
        assert recv_close(ws) == (4410, "room removed")
        wait_for(lambda: get_json(relay, "/status?room=fresh")[0] == 200, what="fresh room")
        assert get_json(relay, "/status?room=keep")[0] == 200
        with open(path, "w") as f:
            f.write("broken\n")
        proc.send_signal(signal.SIGHUP)
        line = proc.stderr.readline().decode()
        while "not reloaded" not in line:
            assert line
            line = proc.stderr.readline().decode()
        assert "rooms.txt:1" in line and "keeping the 2 rooms" in line
        assert get_json(relay, "/status?room=fresh")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=unit(10))


@pytest.fixture
def graceful(make_relay):
    relay = make_relay(room_grace=unit(3))
    relay.sources.greeter.preamble_wait = unit(0.3)
    return relay


def banner(src):
    room = src.line()
    resume = src.line()
    m = re.match(rb"^ROOM ([2-9A-Z]{6})\n$", room)
    assert m, room
    code = m.group(1)
    m2 = re.match(rb"^RESUME (\S+) ([A-Za-z0-9_-]{22,})\n$", resume)
    assert m2 and m2.group(1) == code, resume
    return code.decode(), m2.group(2).decode()


def test_resume_with_the_right_key_keeps_code_and_subscribers(graceful):
    src = Src(graceful.tcp_address)
    code, key = banner(src)
    ws = subscribe(graceful, code)
    src.send(b"before\n")
    assert recv_text(ws) == b"before"
    src.close()
    wait_for(lambda: graceful.registry.get(code).state == "waiting", what="waiting")
    assert get_json(graceful, "/status?room=" + code)[1]["source"] == "offline"
    late = subscribe(graceful, code)                      # new subscribers may join meanwhile
    again = Src(graceful.tcp_address, b"RESUME %s %s\nafter\n" % (code.encode(), key.encode()))
    code2, key2 = banner(again)
    assert code2 == code and key2 != key                  # a fresh key each time
    assert recv_text(ws) == b"after" and recv_text(late) == b"after"
    assert graceful.stats.resumes == 1
    again.close()


@pytest.mark.parametrize("line", [b"RESUME %s wrong-key-wrong-key-xx\n", b"RESUME ZZZZZZ %s\n"])
def test_resume_with_a_wrong_key_or_code_is_refused(graceful, line):
    src = Src(graceful.tcp_address)
    code, key = banner(src)
    arg = key.encode() if b"ZZZZZZ" in line else code.encode()
    bad = Src(graceful.tcp_address, line % arg)
    assert bad.line() == b"ERROR cannot resume\n"
    assert bad.eof()
    src.close()


def test_no_resume_within_the_grace_period_closes_4410(make_relay):
    relay = make_relay(room_grace=unit(0.5))
    relay.sources.greeter.preamble_wait = unit(0.2)
    src = Src(relay.tcp_address)
    code, key = banner(src)
    ws = subscribe(relay, code)
    t0 = time.monotonic()
    src.close()
    assert recv_close(ws) == (4410, "source closed")
    assert time.monotonic() - t0 >= unit(0.5) * 0.9
    late = Src(relay.tcp_address, b"RESUME %s %s\n" % (code.encode(), key.encode()))
    assert late.line() == b"ERROR cannot resume\n"


def test_resume_after_auth_when_tokens_are_required(make_relay):
    relay = make_relay(room_grace=unit(3), source_tokens=(b"tok-abcdefgh",))
    src = Src(relay.tcp_address, b"AUTH tok-abcdefgh\n")
    code, key = banner(src)
    src.close()
    wait_for(lambda: relay.registry.get(code).state == "waiting", what="waiting")
    again = Src(relay.tcp_address, b"AUTH tok-abcdefgh\nRESUME %s %s\n" % (code.encode(), key.encode()))
    assert banner(again)[0] == code
    nope = Src(relay.tcp_address, b"RESUME %s %s\n" % (code.encode(), key.encode()))
    assert nope.line() == b"ERROR unauthorized\n"


def test_waiting_ephemeral_rooms_count_against_max_rooms(make_relay):
    relay = make_relay(room_grace=unit(5), max_rooms=1)
    relay.sources.greeter.preamble_wait = unit(0.2)
    src = Src(relay.tcp_address)
    code, _ = banner(src)
    src.close()
    wait_for(lambda: relay.registry.get(code).state == "waiting", what="waiting")
    other = Src(relay.tcp_address)
    assert other.line() == b"ERROR too many rooms\n"


def test_replay_is_in_order_without_duplicates_across_the_live_boundary(make_relay):
    relay = make_relay(replay=50)
    src = Src(relay.tcp_address)
    code = src.line().split()[1].decode()
    stop = []

    def publish():
        i = 0
        while not stop:
            src.send(b"%d\n" % i)
            i += 1
            if i % 20 == 0:
                gevent.sleep(0.001)
    writer = gevent.spawn(publish)
    wait_for(lambda: relay.registry.get(code).messages > 200, what="publishing")
    ws = subscribe(relay, code)
    got = [int(recv_text(ws)) for _ in range(400)]
    stop.append(1)
    writer.join(timeout=unit(5))
    assert got == list(range(got[0], got[0] + 400))       # consecutive: no gap, no duplicate
    assert got[0] > 100                                   # it started in the recent past


def test_presence_long_poll_answers_when_the_source_arrives(named):
    started = time.monotonic()
    poll = gevent.spawn(get_json, named, "/status?room=scores&source=offline&wait=10")
    gevent.sleep(unit(0.2))
    assert not poll.ready()
    src = Src(named.tcp_address, b"AUTH score-token-456\n")
    assert src.line() == b"ROOM scores\n"
    status, body = poll.get(timeout=unit(5))
    assert status == 200 and body["source"] == "online" and body["state"] == "live"
    assert time.monotonic() - started < unit(5)


def test_presence_of_an_unknown_room_is_404_and_rate_limited(make_relay):
    relay = make_relay(unknown_room_burst=2, unknown_room_rate=0.01, trusted_proxies=())  # a direct client
    assert get_json(relay, "/status?room=ZZZZZZ") == (404, {"room": "ZZZZZZ", "state": "unknown"})
    get_json(relay, "/status?room=ZZZZZY")
    status, body = get_json(relay, "/status?room=ZZZZZX")
    assert status == 429


def test_presence_long_polls_are_bounded(named):
    route = named.app.routes["/status"]
    route.max_waiting = 1
    first = gevent.spawn(get_json, named, "/status?room=scores&source=offline&wait=10")
    wait_for(lambda: route.waiting == 1, what="one long-poll waiting")
    started = time.monotonic()
    status, body = get_json(named, "/status?room=scores&source=offline&wait=10")
    assert status == 200 and body["waited"] is False and time.monotonic() - started < unit(2)
    src = Src(named.tcp_address, b"AUTH score-token-456\n")
    assert src.line() == b"ROOM scores\n"
    assert first.get(timeout=unit(5))[1]["source"] == "online"
    assert route.waiting == 0
