"""The sans-IO server session (sphincter_lib/proto/wssession.py), fed bytes in memory.

No sockets, no clock: frames come from conftest.mask_frame (built independently
of proto/frames.py), time is passed in. Modelled on python-websockets' tests/test_protocol.py.
That the adapters (relay.session.Session, the refusal path) do what the session's state
tells them is checked over real connections in tests/relay/test_wssession_adapters.py.
"""
import re
import sys
from pathlib import Path

import pytest

from sphincter_lib.proto import frames as wsproto
from sphincter_lib.closecodes import CloseCode
from sphincter_lib.proto.wssession import CLOSED, CLOSING, OPEN, PING_TIMEOUT, ServerSession
from conftest import mask_frame, parse_server_frames

ROOT = Path(__file__).resolve().parents[3]


def close_payload(code, reason=b""):
    return code.to_bytes(2, "big") + reason


def server_close(code, reason=""):
    """The close frame the server is expected to write (unmasked)."""
    return wsproto.encode_close(code, reason)


class Echo:
    """An endpoint that echoes data messages through the session (like echo.py)."""

    def __init__(self, **kw):
        self.ws = ServerSession(**kw)
        self.messages = []

    def on_message(self, opcode, payload):
        self.messages.append((opcode, payload))
        self.ws.send_message(payload, opcode == wsproto.TEXT)

    def feed(self, data):
        self.ws.receive_data(data, self.on_message)
        return self.ws.data_to_send()


# --- opening state, pings ------------------------------------------------------------

def test_new_session_is_open_and_quiet():
    ws = ServerSession()
    assert ws.state is OPEN and ws.pending is None and ws.data_to_send() == b""
    ws.receive_data(b"")
    assert ws.state is OPEN and ws.data_to_send() == b""


def test_ping_is_answered_with_its_payload():
    ws = ServerSession()
    ws.receive_data(mask_frame(wsproto.PING, b"are you there"))
    assert ws.pending
    assert ws.data_to_send() == wsproto.encode_pong(b"are you there")
    assert ws.pending is None and ws.state is OPEN


def test_answers_keep_the_order_of_the_frames_they_answer():
    echo = Echo()
    out = echo.feed(mask_frame(wsproto.TEXT, b"one") + mask_frame(wsproto.PING, b"p")
                    + mask_frame(wsproto.BINARY, b"\x00two") + mask_frame(wsproto.PONG, b""))
    assert parse_server_frames(out) == [(wsproto.TEXT, b"one"), (wsproto.PONG, b"p"),
                                        (wsproto.BINARY, b"\x00two")]


def test_stream_split_at_every_offset_gives_the_same_output():
    stream = (mask_frame(wsproto.TEXT, "héllo".encode(), fin=False) + mask_frame(wsproto.PING, b"x")
              + mask_frame(wsproto.CONTINUATION, b" world") + mask_frame(wsproto.BINARY, b"\x01" * 300)
              + mask_frame(wsproto.CLOSE, close_payload(1000, b"bye")))
    whole = Echo().feed(stream)
    assert parse_server_frames(whole) == [(wsproto.PONG, b"x"), (wsproto.TEXT, "héllo world".encode()),
                                          (wsproto.BINARY, b"\x01" * 300), (wsproto.CLOSE, close_payload(1000))]
    for cut in range(1, len(stream)):
        echo = Echo()
        assert echo.feed(stream[:cut]) + echo.feed(stream[cut:]) == whole, cut
        assert echo.ws.state is CLOSED
    echo = Echo()
    assert b"".join(echo.feed(stream[i:i + 1]) for i in range(len(stream))) == whole


def test_large_echoed_message_goes_out_whole():
    echo = Echo()
    payload = bytes(range(256)) * 300                       # over LARGE_PAYLOAD: (header, payload)
    out = echo.feed(mask_frame(wsproto.BINARY, payload))
    assert parse_server_frames(out) == [(wsproto.BINARY, payload)]


def test_subscriber_session_discards_messages_but_answers_pings():
    ws = ServerSession(keep_data=False)
    got = []
    ws.receive_data(mask_frame(wsproto.TEXT, b"ignored") + mask_frame(wsproto.PING, b""),
                    lambda op, p: got.append((op, p)))
    assert got == [(wsproto.TEXT, b"")]                     # checked, not kept
    assert ws.data_to_send() == wsproto.encode_pong(b"")


# --- closing handshake, both ways -----------------------------------------------------

def test_client_close_is_echoed_with_its_code_and_closes():
    ws = ServerSession()
    ws.receive_data(mask_frame(wsproto.CLOSE, close_payload(4000, b"bye")))
    assert ws.state is CLOSED and ws.close_received and ws.close_sent and not ws.failed
    assert ws.close_code == 4000
    assert ws.data_to_send() == server_close(4000)          # the code, not the reason


def test_empty_client_close_is_echoed_empty():
    ws = ServerSession()
    ws.receive_data(mask_frame(wsproto.CLOSE, b""))
    assert ws.state is CLOSED and ws.close_code is None
    assert ws.data_to_send() == b"\x88\x00"


def test_nothing_after_the_clients_close_is_handled():
    echo = Echo()
    out = echo.feed(mask_frame(wsproto.TEXT, b"before") + mask_frame(wsproto.CLOSE, close_payload(1000))
                    + mask_frame(wsproto.TEXT, b"after") + mask_frame(wsproto.PING, b""))
    assert parse_server_frames(out) == [(wsproto.TEXT, b"before"), (wsproto.CLOSE, close_payload(1000))]
    assert echo.feed(mask_frame(wsproto.PING, b"late")) == b""
    assert echo.messages == [(wsproto.TEXT, b"before")]


def test_server_close_waits_for_the_clients_close():
    ws = ServerSession()
    ws.send_close(CloseCode.SOURCE_CLOSED, "source closed")
    assert ws.state is CLOSING and ws.close_sent and not ws.close_received
    assert ws.data_to_send() == server_close(4410, "source closed")
    got = []
    ws.receive_data(mask_frame(wsproto.TEXT, b"late") + mask_frame(wsproto.PING, b""),
                    lambda op, p: got.append(op))
    assert ws.state is CLOSING and got == [] and ws.data_to_send() == b""   # no pong after our close
    ws.receive_data(mask_frame(wsproto.CLOSE, close_payload(4410)))
    assert ws.state is CLOSED and ws.close_received and not ws.failed
    assert ws.data_to_send() == b""                         # no second close frame


def test_only_the_first_close_is_sent():
    ws = ServerSession()
    ws.send_close(CloseCode.TOO_SLOW, "too slow")
    ws.send_close(CloseCode.GOING_AWAY, "server shutting down")
    ws.fail(*PING_TIMEOUT)
    assert ws.close_code == CloseCode.TOO_SLOW and ws.failed and ws.state is CLOSED
    assert ws.data_to_send() == server_close(4408, "too slow")


def test_send_message_after_close_is_ignored():
    ws = ServerSession()
    ws.send_close(CloseCode.GOING_AWAY)
    ws.send_message(b"late", text=True)
    ws.send_ping(now=1.0)
    assert ws.data_to_send() == server_close(1001)


def test_eof_closes_without_sending_anything():
    ws = ServerSession()
    ws.receive_data(mask_frame(wsproto.PING, b""))
    ws.receive_eof()
    assert ws.state is CLOSED and ws.data_to_send() == b""
    ws.send_close(CloseCode.GOING_AWAY)
    ws.fail(CloseCode.PROTOCOL_ERROR, "late")
    assert ws.data_to_send() == b"" and not ws.close_sent and not ws.failed


def test_eof_while_closing():
    ws = ServerSession()
    ws.send_close(CloseCode.GOING_AWAY)
    ws.receive_eof()
    assert ws.state is CLOSED and ws.data_to_send() == b""


# --- protocol errors -------------------------------------------------------------------

@pytest.mark.parametrize("frame,code", [
    (b"\x81\x02hi", CloseCode.PROTOCOL_ERROR),                                   # not masked
    (mask_frame(wsproto.TEXT, b"x", rsv=0x40), CloseCode.PROTOCOL_ERROR),        # reserved bit
    (mask_frame(0x3, b""), CloseCode.PROTOCOL_ERROR),                            # unknown opcode
    (mask_frame(wsproto.PING, b"", fin=False), CloseCode.PROTOCOL_ERROR),        # fragmented control
    (mask_frame(wsproto.CONTINUATION, b"x"), CloseCode.PROTOCOL_ERROR),          # nothing to continue
    (mask_frame(wsproto.TEXT, b"\xff"), CloseCode.INVALID_DATA),                 # not UTF-8
    (mask_frame(wsproto.TEXT, b"x" * 101), CloseCode.MESSAGE_TOO_BIG),           # over the limit
])
def test_protocol_error_fails_with_its_code(frame, code):
    ws = ServerSession(max_message_bytes=100)
    ws.receive_data(frame)
    assert ws.state is CLOSED and ws.failed and ws.close_code == code
    assert not ws.close_received
    data = ws.data_to_send()
    assert data[:2] == b"\x88" + bytes([len(data) - 2]) and int.from_bytes(data[2:4], "big") == code
    ws.receive_data(mask_frame(wsproto.PING, b""))                                # nothing more is parsed
    assert ws.data_to_send() == b""


def test_too_big_fails_on_the_header_before_the_payload():
    ws = ServerSession(max_message_bytes=1000)
    ws.receive_data(mask_frame(wsproto.BINARY, b"x" * 70000)[:14])               # the header only
    assert ws.failed and ws.close_code == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize("payload,code", [(b"\x03", CloseCode.PROTOCOL_ERROR),
                                          (close_payload(999), CloseCode.PROTOCOL_ERROR),
                                          (close_payload(5000), CloseCode.PROTOCOL_ERROR),
                                          (close_payload(1000, b"\xff"), CloseCode.INVALID_DATA)])
def test_broken_close_frame_fails_and_counts_as_the_clients_close(payload, code):
    ws = ServerSession()
    ws.receive_data(mask_frame(wsproto.CLOSE, payload))
    assert ws.state is CLOSED and ws.failed and ws.close_received and ws.close_code == code


def test_events_before_a_protocol_error_are_still_answered():
    echo = Echo()
    out = echo.feed(mask_frame(wsproto.TEXT, b"ok") + mask_frame(wsproto.PING, b"p") + b"\x81\x02hi")
    assert parse_server_frames(out) == [(wsproto.TEXT, b"ok"), (wsproto.PONG, b"p"),
                                        (wsproto.CLOSE, close_payload(1002) + b"client frame not masked")]


def test_protocol_error_while_closing_keeps_our_close():
    ws = ServerSession()
    ws.send_close(CloseCode.TOO_SLOW, "too slow")
    ws.receive_data(b"\x81\x02hi")
    assert ws.state is CLOSED and ws.failed and ws.close_code == CloseCode.TOO_SLOW
    assert ws.data_to_send() == server_close(4408, "too slow")


# --- keepalive (injected clock) --------------------------------------------------------

def test_keepalive_pings_then_times_out():
    ws = ServerSession(now=100.0)
    assert not ws.ping_due(104.9, interval=5) and ws.ping_due(105.0, interval=5)
    ws.send_ping(105.0)
    assert ws.data_to_send() == wsproto.encode_ping(b"")
    assert not ws.ping_due(200.0, interval=5)               # one ping out at a time
    assert not ws.ping_overdue(108.0, timeout=3) and ws.ping_overdue(108.1, timeout=3)
    ws.fail(*PING_TIMEOUT)
    assert ws.state is CLOSED and ws.failed
    assert ws.data_to_send() == server_close(1011, "ping timeout")
    assert not ws.ping_due(1000.0, interval=5)


@pytest.mark.parametrize("frame", [mask_frame(wsproto.PONG, b""), mask_frame(wsproto.TEXT, b"hi"),
                                   mask_frame(wsproto.PING, b"")])
def test_any_frame_answers_a_keepalive_ping(frame):
    ws = ServerSession(now=0.0)
    ws.send_ping(10.0)
    ws.receive_data(frame[:3])                              # a partial frame proves nothing yet
    assert ws.ping_overdue(20.0, timeout=5)
    ws.receive_data(frame[3:])
    assert not ws.ping_overdue(20.0, timeout=5)
    assert not ws.ping_due(14.0, interval=5) and ws.ping_due(15.0, interval=5)


# --- cost, close codes -----------------------------------------------------------------

def test_an_idle_session_is_small():
    ws = ServerSession(max_message_bytes=4096, keep_data=False, now=1.0)
    assert not hasattr(ws, "__dict__")
    assert sys.getsizeof(ws) <= 160
    ws.receive_data(mask_frame(wsproto.PING, b""))
    ws.data_to_send()
    assert ws.pending is None


def test_close_codes_print_as_numbers_and_are_documented():
    protocol = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    for code in CloseCode:
        assert str(code) == "%s" % code == "{}".format(code) == str(int(code))
        assert re.search(r"\b%d\b" % code, protocol), "%d missing from docs/PROTOCOL.md" % code
    assert len(set(CloseCode)) == len(CloseCode.__members__)    # no aliases


# The adapters over real connections: tests/relay/test_wssession_adapters.py.
