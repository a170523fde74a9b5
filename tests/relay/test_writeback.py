"""Write-back (issue 12) from outside: writers' messages reach the source, bounded, in order,
never interleaved; wrong keys are refused; messages wait for a source that is away."""

import hashlib
import os
import re
import socket
import threading
import urllib.request

import gevent
import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families

from conftest import raw_upgrade, recv_close, subscribe, unit, wait_for, ws_url
from test_lifecycle import Src, rooms_file

TEXT = websocket.ABNF.OPCODE_TEXT


def banner(src, resume=False):
    room = src.line()
    m = re.match(rb"^ROOM (\S+)\n$", room)
    assert m, room
    if resume:
        assert src.line().startswith(b"RESUME ")
    w = src.line()
    m2 = re.match(rb"^WRITE ([A-Za-z0-9_-]{22,})\n$", w)
    assert m2, w
    return m.group(1).decode(), m2.group(1).decode()


def writer(relay, code, key, **kw):
    return websocket.create_connection(ws_url(relay, "room=%s&key=%s" % (code, key)),
                                       timeout=unit(10), **kw)


def read_exactly(src, n):
    data = src.buf
    while len(data) < n:
        chunk = src.sock.recv(65536)
        assert chunk, "source connection closed after %d of %d bytes" % (len(data), n)
        data += chunk
    src.buf = data[n:]
    return data[:n]


def test_writer_lines_reach_the_source_and_readers_still_read(make_relay):
    relay = make_relay(write_back=True)
    src = Src(relay.tcp_address)
    code, key = banner(src)
    w = writer(relay, code, key)
    reader = subscribe(relay, code)
    wait_for(lambda: len(relay.registry.get(code).subscribers) == 2, what="joined")
    w.send("hello source")
    w.send_binary(b"\x00\x01bin")
    reader.send("ignored: no key")                      # read and discarded, as before
    assert src.line() == b"hello source\n"
    assert read_exactly(src, 6) == b"\x00\x01bin\n"
    src.send(b"to everyone\n")
    assert w.recv() == "to everyone" and reader.recv() == "to everyone"
    assert relay.stats.writes_in == 2


def write_back_metrics(relay):
    """The write-back counters as a scrape of the relay's /metrics shows them."""
    with urllib.request.urlopen("http://%s:%d/metrics" % relay.ws_address, timeout=unit(10)) as resp:
        text = resp.read().decode()
    return {s.name[len("sphincter_write_back_"):]: s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("sphincter_write_back_")}


def test_write_back_counters_on_metrics(make_relay):
    relay = make_relay(write_back=True)
    src = Src(relay.tcp_address)
    code, key = banner(src)
    assert write_back_metrics(relay) == {
        "messages_received_total": 0, "received_bytes_total": 0, "messages_sent_total": 0,
        "writer_pauses_total": 0}
    w = writer(relay, code, key)
    w.send("hello source")
    w.send_binary(b"\x00\x01bin")
    w.send("\u00e9t\u00e9")
    assert src.line() == b"hello source\n"
    assert read_exactly(src, 6) == b"\x00\x01bin\n"
    assert src.line() == "\u00e9t\u00e9\n".encode()
    wait_for(lambda: write_back_metrics(relay)["messages_sent_total"] == 3, timeout=unit(10),
             what="3 messages sent to the source on /metrics")
    assert write_back_metrics(relay) == {
        "messages_received_total": 3, "received_bytes_total": 13 + 6 + 6,   # newlines included
        "messages_sent_total": 3, "writer_pauses_total": 0}


@pytest.mark.parametrize("query, reason", [("key=wrong-key-wrong-key-wrong", "wrong write key")])
def test_wrong_key_is_4403(make_relay, query, reason):
    relay = make_relay(write_back=True)
    src = Src(relay.tcp_address)
    code, _ = banner(src)
    ws = websocket.create_connection(ws_url(relay, "room=%s&%s" % (code, query)), timeout=unit(5))
    assert recv_close(ws) == (4403, reason)


def test_key_without_write_back_is_4403(make_relay):
    relay = make_relay()
    src = Src(relay.tcp_address)
    code = src.line().split()[1].decode()
    ws = websocket.create_connection(ws_url(relay, "room=%s&key=anything-at-all-123" % code),
                                     timeout=unit(5))
    assert recv_close(ws) == (4403, "write-back is off")


def test_raw_write_back_is_byte_exact_and_writers_never_interleave(make_relay):
    relay = make_relay(write_back=True, framing="raw", max_client_message_bytes=64 * 1024,
                       write_queue_bytes=128 * 1024)
    src = Src(relay.tcp_address)
    code, key = banner(src)
    writers = [writer(relay, code, key) for _ in range(3)]
    n, size = 60, 50000
    payloads = {}

    def run(i, ws):
        for k in range(n):
            body = bytes([65 + i]) * size
            ws.send_binary(body)
        payloads[i] = True
    threads = [gevent.spawn(run, i, ws) for i, ws in enumerate(writers)]
    got = read_exactly(src, 3 * n * size)
    gevent.joinall(threads, timeout=unit(30))
    # each message is a run of one letter, whole: chop the stream into messages
    for k in range(0, len(got), size):
        chunk = got[k:k + size]
        assert chunk == chunk[:1] * size, "interleaved at %d" % k
    assert sorted(got[k] for k in range(0, len(got), size)).count(65) == n


def test_a_writer_that_outruns_its_source_is_paused_not_dropped(make_relay):
    relay = make_relay(write_back=True, framing="raw", max_client_message_bytes=16 * 1024,
                       write_queue_bytes=64 * 1024)
    src = Src(relay.tcp_address)
    code, key = banner(src)
    w = raw_upgrade(relay, "room=%s&key=%s" % (code, key))
    # more than the kernel can hold between the relay and a source that reads nothing yet
    # (the relay's send buffer grows to net.ipv4.tcp_wmem's 4 MiB; the source's receive
    # buffer does not grow while it does not read): the queue fills, the writer is paused
    total, sent = 48 << 20, hashlib.sha256()
    done = []

    def pump():
        block = os.urandom(16 * 1024)
        # a binary frame with an all-zero mask: the payload goes as is (no slow client-side XOR)
        frame = b"\x82\xfe" + len(block).to_bytes(2, "big") + b"\0\0\0\0" + block
        for _ in range(total // len(block)):
            w.sendall(frame)
            sent.update(block)
        done.append(1)
    g = gevent.spawn(pump)
    wait_for(lambda: relay.stats.writer_pauses > 0, timeout=unit(30), what="writer paused")
    assert relay.registry.get(code).outbox.bytes <= 64 * 1024 + 16 * 1024
    got, left = hashlib.sha256(), total - len(src.buf)
    got.update(src.buf)
    while left > 0:
        chunk = src.sock.recv(min(left, 1 << 20))
        assert chunk, "source connection closed with %d bytes to go" % left
        got.update(chunk)
        left -= len(chunk)
    g.join(timeout=unit(30))
    assert done and got.hexdigest() == sent.hexdigest()
    m = write_back_metrics(relay)
    assert m["writer_pauses_total"] == relay.stats.writer_pauses > 0
    assert m["received_bytes_total"] == total


def test_writes_wait_for_a_source_that_is_away(make_relay, tmp_path):
    path = rooms_file(tmp_path, "desk desk-token-123 write=desk_write_key_0123456\n")
    relay = make_relay(rooms_file=path)
    w = writer(relay, "desk", "desk_write_key_0123456")
    w.send("queued while away")
    wait_for(lambda: relay.registry.get("desk").outbox.bytes > 0, what="held")
    src = Src(relay.tcp_address, b"AUTH desk-token-123\n")
    code, key = banner(src)
    assert (code, key) == ("desk", "desk_write_key_0123456")
    assert src.line() == b"queued while away\n"
