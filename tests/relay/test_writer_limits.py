"""How big a message a subscriber may send (issue 18, item 3): with --max-client-message-bytes
'auto' (the default), a writer in raw framing may send messages up to --max-message-bytes (a
tunnel's clients send binary messages of any size); writers in lines framing and read-only
subscribers keep 4 KiB; a size set explicitly applies to every subscriber.

A too-big message is announced by its frame header alone: the relay refuses it (1009) before
reading any of its payload, and the test leaves no unread bytes that would turn the relay's
close into a reset."""

import os

import pytest
import websocket

from conftest import recv_close, subscribe, unit, wait_for
from hardening_util import ServerProcess
from test_lifecycle import Src, rooms_file
from test_writeback import banner, read_exactly, writer

BINARY, TEXT = websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT


def announce(ws, size, opcode=BINARY):
    """Send only the header of a masked data frame of ``size`` bytes."""
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    ws.sock.sendall(head + b"\0\0\0\0")


def refused(ws, size, limit, opcode=BINARY):
    announce(ws, size, opcode)
    assert recv_close(ws) == (1009, "message too big (limit %d bytes)" % limit)


def passes_whole(src, ws, payload):
    """``payload`` sent as one binary message reaches the source exactly (a marker after it
    shows nothing more came)."""
    ws.send_binary(payload)
    ws.send_binary(b"<end>")
    assert read_exactly(src, len(payload) + 5) == payload + b"<end>"


def raw_room(make_relay, **overrides):
    relay = make_relay(framing="raw", write_back=True, **overrides)
    src = Src(relay.tcp_address)
    code, key = banner(src)
    return relay, src, code, key


def test_a_raw_writer_sends_64k_by_default_and_up_to_max_message_bytes(make_relay):
    relay, src, code, key = raw_room(make_relay)
    assert relay.settings.max_client_message_bytes == 0            # 'auto'
    passes_whole(src, writer(relay, code, key), os.urandom(64 * 1024))
    refused(writer(relay, code, key), (1 << 20) + 1, 1 << 20)


def test_a_raw_writers_limit_follows_max_message_bytes(make_relay):
    relay, src, code, key = raw_room(make_relay, max_message_bytes=128 * 1024)
    passes_whole(src, writer(relay, code, key), os.urandom(128 * 1024))
    refused(writer(relay, code, key), 128 * 1024 + 1, 128 * 1024)


def test_an_explicit_limit_applies_to_raw_writers(make_relay):
    relay, src, code, key = raw_room(make_relay, max_client_message_bytes=4096)
    passes_whole(src, writer(relay, code, key), os.urandom(4096))
    refused(writer(relay, code, key), 64 * 1024, 4096)


def test_an_explicit_limit_applies_to_read_only_subscribers(make_relay):
    relay, src, code, _ = raw_room(make_relay, max_client_message_bytes=64 * 1024)
    reader = subscribe(relay, code)
    wait_for(lambda: relay.registry.get(code).subscribers, what="joined")
    reader.send_binary(os.urandom(64 * 1024))              # read and discarded
    src.send(b"still here")
    assert reader.recv() == b"still here"
    refused(reader, 64 * 1024 + 1, 64 * 1024)


def test_a_read_only_subscriber_in_raw_framing_keeps_4k(make_relay):
    relay, src, code, _ = raw_room(make_relay)
    reader = subscribe(relay, code)
    wait_for(lambda: relay.registry.get(code).subscribers, what="joined")
    reader.send_binary(b"r" * 4096)                        # read and discarded
    src.send(b"still here")
    assert reader.recv() == b"still here"
    refused(reader, 64 * 1024, 4096)


def test_a_lines_writer_keeps_4k(make_relay):
    relay = make_relay(write_back=True)
    src = Src(relay.tcp_address)
    code, key = banner(src)
    w = writer(relay, code, key)
    w.send("x" * 4096)
    assert src.line() == b"x" * 4096 + b"\n"
    refused(w, 64 * 1024, 4096, TEXT)


def test_a_named_rooms_raw_writer_without_write_back(make_relay, tmp_path):
    """A rooms file's write=KEY makes writers without --write-back: the same limit."""
    path = rooms_file(tmp_path, "desk desk-token-123 write=desk_write_key_0123456\n")
    relay = make_relay(framing="raw", rooms_file=path)
    src = Src(relay.tcp_address, b"AUTH desk-token-123\n")
    assert banner(src) == ("desk", "desk_write_key_0123456")
    passes_whole(src, writer(relay, "desk", "desk_write_key_0123456"), os.urandom(64 * 1024))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("env, limit", [({}, None), ({"SPHINCTER_MAX_CLIENT_MESSAGE_BYTES": "4KiB"}, 4096)])
def test_the_command_line_tunnel(env, limit):
    """``sphincter --framing raw --write-back on`` as a user starts it: a writer's 64 KiB
    message reaches the source; set in the environment, 4KiB still wins."""
    with ServerProcess("--framing", "raw", "--write-back", "on", env=env) as server:
        src = Src((server.tcp_host, server.tcp_port))
        code, key = banner(src)
        url = server.ws_url() + "?room=%s&key=%s" % (code, key)
        ws = websocket.create_connection(url, timeout=unit(10))
        if limit is None:
            passes_whole(src, ws, os.urandom(64 * 1024))
        else:
            refused(ws, 64 * 1024, limit)
