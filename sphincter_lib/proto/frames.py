"""Sans-IO WebSocket (RFC 6455) for the server side: encode frames, parse client frames.

Nothing here touches a socket. :func:`encode_message` and :func:`encode_close`
build complete server frames (unmasked) *once*, so the same bytes can go to
every subscriber. :class:`FrameParser` is fed the bytes a client sends and
returns complete events; it raises :class:`~sphincter_lib.errors.ProtocolError`
with the close code to answer (1002 protocol error, 1007 invalid UTF-8,
1009 too big) as soon as a violation is visible, and checks sizes from the
frame header *before* any payload is buffered. What a server does with those
events (pongs, the closing handshake) is :mod:`sphincter_lib.proto.wssession`'s
business; every close code is in :mod:`sphincter_lib.closecodes`.
"""

import base64
import binascii
import codecs
import hashlib
import struct

from ..closecodes import CloseCode
from ..errors import ProtocolError

#: ``bytes.isascii`` (CPython 3.7+); on 3.6 a stand-in answering False (the full check runs)
_isascii = getattr(bytes, "isascii", lambda data: False)

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPCODES = frozenset((CONTINUATION, TEXT, BINARY))
_CONTROL_OPCODES = frozenset((CLOSE, PING, PONG))

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON = 123

_H1 = struct.Struct("!BB").pack
_H2 = struct.Struct("!BBH").pack
_H8 = struct.Struct("!BBQ").pack
_CODE = struct.Struct("!H")


# --- handshake -----------------------------------------------------------------

def valid_key(key):
    """True if ``key`` (the Sec-WebSocket-Key header) is base64 of 16 bytes."""
    try:
        return len(base64.b64decode(key.encode("latin-1"), validate=True)) == 16
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def accept_key(key):
    """The Sec-WebSocket-Accept value for ``key``."""
    digest = hashlib.sha1(key.encode("latin-1") + GUID).digest()
    return base64.b64encode(digest).decode("ascii")


# --- encoding (server frames: never masked) --------------------------------------

def encode_frame(opcode, payload, fin=True):
    """One complete frame: header + ``payload`` (bytes)."""
    return _header((0x80 if fin else 0) | opcode, len(payload)) + payload


#: payloads at least this big are encoded as a ``(header, payload)`` pair instead of one
#: bytes object, so the payload is never copied (written with one ``sendmsg``)
LARGE_PAYLOAD = 64 * 1024


def encode_message(payload, text):
    """A whole data message as one frame (text if ``text`` else binary).

    Returns ``bytes`` — or, for payloads of :data:`LARGE_PAYLOAD` bytes and
    more, a ``(header, payload)`` tuple that shares the payload.
    """
    n = len(payload)
    b0 = 0x81 if text else 0x82
    if n < 126:                          # the hot path: inlined
        return _H1(b0, n) + payload
    if n < LARGE_PAYLOAD:
        return _header(b0, n) + payload
    return _header(b0, n), payload


def message_header(length, text=False):
    """The header of a whole data message of ``length`` bytes whose payload is written apart."""
    return _header(0x81 if text else 0x82, length)


def _header(b0, n):
    if n < 126:
        return _H1(b0, n)
    if n < 65536:
        return _H2(b0, 126, n)
    return _H8(b0, 127, n)


def encode_close(code=None, reason=""):
    """A close frame; ``reason`` is cut to 123 UTF-8 bytes on a character boundary."""
    if code is None:
        return encode_frame(CLOSE, b"")
    data = reason.encode("utf-8")
    if len(data) > MAX_CLOSE_REASON:
        data = data[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(CLOSE, _CODE.pack(code) + data)


def encode_ping(payload=b""):
    return encode_frame(PING, payload)


def encode_pong(payload=b""):
    return encode_frame(PONG, payload)


# --- decoding ------------------------------------------------------------------

#: payloads at least this big are unmasked a quarter at a time by ``bytes.translate`` (about
#: twice the speed of the big-integer XOR from 1 KiB up; the XOR is faster below)
STRIDED_UNMASK = 1024
_XOR_TABLES = [bytes(i ^ k for i in range(256)) for k in range(256)]


def unmask(data, mask):
    """XOR ``data`` with the 4-byte ``mask``, the whole buffer at once."""
    n = len(data)
    if not n:
        return b""
    if n >= STRIDED_UNMASK:
        out = bytearray(data)
        for i in range(4):              # every 4th byte is XORed with the same key byte
            if mask[i]:
                out[i::4] = out[i::4].translate(_XOR_TABLES[mask[i]])
        return bytes(out)
    key = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def valid_close_code(code):
    """Codes a peer may send in a close frame (RFC 6455 7.4.1 and the IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload):
    """``(code, reason)`` of a received close frame's payload; code None if absent."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = _CODE.unpack_from(payload)
    if not valid_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "invalid close code %d" % code)
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8")
    return code, reason


class FrameParser:
    """Incremental parser of client-to-server frames.

    :meth:`feed` returns a list of ``(opcode, payload)`` events: whole data
    messages (``TEXT``/``BINARY``, fragments reassembled; text validated as
    UTF-8 as the bytes arrive) and control frames (``PING``, ``PONG``,
    ``CLOSE`` — a close payload is validated, see :func:`parse_close`).
    ``feed(b"")`` returns ``[]``. After a :class:`ProtocolError` the parser is
    spent: the connection must be closed with ``error.code``.

    Work per call is bounded by the bytes fed: a data frame's payload is
    unmasked and UTF-8-checked chunk by chunk as it arrives (never in one
    pass over a whole big message, which would stall every other
    connection), so invalid text fails at the first bad octet.
    """

    #: largest data message accepted, in bytes; a bigger one is refused with 1009
    #: as soon as the frame header announcing it is read
    max_message_bytes = 1 << 20
    #: RFC 6455 requires client frames to be masked
    require_mask = True
    #: False: data messages are checked (size, UTF-8) but not kept; their events
    #: carry ``b""`` (for endpoints that discard what clients send)
    keep_data = True
    #: True once a close frame's header (valid or not) was read
    close_seen = False

    def __init__(self, max_message_bytes=None, require_mask=None, keep_data=None):
        if max_message_bytes is not None:
            self.max_message_bytes = max_message_bytes
        if require_mask is not None:
            self.require_mask = require_mask
        if keep_data is not None:
            self.keep_data = keep_data
        self._buf = bytearray()
        self._msg_opcode = None      # opcode of the message in progress (None: between messages)
        self._fragments = []
        self._msg_size = 0
        self._utf8 = None
        self._frame = None           # [fin, mask, bytes left, offset]: a data frame still arriving

    def feed(self, data):
        events, error = self.feed_partial(data)
        if error is not None:
            raise error
        return events

    def feed_partial(self, data):
        """Like :meth:`feed`, but returns ``(events, error)``: the events parsed
        before a violation are kept (an echo must answer a message that came in
        the same read as a broken frame), ``error`` is the ProtocolError or None."""
        buf = self._buf
        if data:
            buf += data
        events = []
        pos = 0
        error = None
        try:
            while True:
                if self._frame is not None:
                    pos, event = self._continue_payload(buf, pos)
                    if event is not None:
                        events.append(event)
                    if self._frame is not None:
                        break            # the rest of the payload is still to come
                    continue
                frame = self._next_frame(buf, pos)
                if frame is None:
                    break
                pos, event = frame
                if event is not None:
                    events.append(event)
        except ProtocolError as exc:
            error = exc
        if pos:
            del buf[:pos]
        return events, error

    def _next_frame(self, buf, pos):
        """Parse the frame at ``pos``. Returns None if its header is incomplete, else
        ``(new pos, event or None)``; a data frame whose payload is not all here
        yet becomes ``self._frame`` and streams in (:meth:`_continue_payload`)."""
        header = self._read_header(buf, pos)
        if header is None:
            return None
        fin, opcode, mask, start, length = header
        end = start + length
        if len(buf) < end:
            if opcode >= CLOSE:
                return None              # a control frame: at most 125 bytes, wait for all of it
            self._begin_frame(opcode)
            self._frame = [fin, mask, length, 0]
            return start, None
        payload = bytes(buf[start:end])
        if mask:
            payload = unmask(payload, mask)
        return end, self._deliver(fin, opcode, payload)

    def _read_header(self, buf, pos):
        """The validated header at ``pos`` — ``(fin, opcode, mask or None, payload
        start, payload length)`` — or None until all of it is in ``buf``. Raises
        ProtocolError before any of the payload is buffered."""
        avail = len(buf) - pos
        if avail < 2:
            return None
        b0, b1 = buf[pos], buf[pos + 1]
        fin, opcode, masked, length = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        self._check_first_bytes(b0, opcode, fin, masked, length)
        head = 2
        if length == 126:
            if avail < 4:
                return None
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            head = 4
        elif length == 127:
            if avail < 10:
                return None
            length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            if length >> 63:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "frame length has its top bit set")
            head = 10
        if opcode < CLOSE:
            self._check_data_frame(opcode, length)
        mask_at = pos + head
        start = mask_at + (4 if masked else 0)
        if len(buf) < start:
            return None
        return fin, opcode, (bytes(buf[mask_at:start]) if masked else None), start, length

    def _check_first_bytes(self, b0, opcode, fin, masked, length):
        """What the first two bytes of a header tell: RSV bits, opcode, control frame rules, mask."""
        if b0 & 0x70:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        if opcode in _CONTROL_OPCODES:
            if opcode == CLOSE:
                self.close_seen = True   # even if invalid: the peer will send nothing more
            if not fin:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame too long")
        elif opcode not in _DATA_OPCODES:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "unknown opcode %d" % opcode)
        if not masked and self.require_mask:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frame not masked")

    def _deliver(self, fin, opcode, payload):
        """A whole frame's (unmasked) payload is here: the event it completes, or None."""
        if opcode >= CLOSE:
            return self._on_control(opcode, payload)
        if fin and opcode != CONTINUATION:   # the common case: a whole message in one frame
            if opcode == TEXT:
                _check_utf8(payload)
            return opcode, payload if self.keep_data else b""
        self._begin_frame(opcode)
        self._data_chunk(payload)
        return self._end_frame(fin)

    def _continue_payload(self, buf, pos):
        """Take the next bytes of the data frame in ``self._frame``."""
        frame = self._frame
        fin, mask, left, offset = frame
        n = min(left, len(buf) - pos)
        if n <= 0:
            return pos, None
        chunk = bytes(buf[pos:pos + n])
        if mask:
            r = offset & 3
            chunk = unmask(chunk, mask[r:] + mask[:r])
        self._data_chunk(chunk)
        frame[2] = left - n
        frame[3] = offset + n
        pos += n
        if frame[2]:
            return pos, None
        self._frame = None
        return pos, self._end_frame(fin)

    def _check_data_frame(self, opcode, length):
        if opcode == CONTINUATION:
            if self._msg_opcode is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                    "continuation frame with no message to continue")
        elif self._msg_opcode is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new message before the previous one finished")
        size = (self._msg_size if opcode == CONTINUATION else 0) + length
        if size > self.max_message_bytes:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG,
                                "message too big (limit %d bytes)" % self.max_message_bytes)

    def _begin_frame(self, opcode):
        if opcode != CONTINUATION:       # the first frame of a message
            self._msg_opcode = opcode
            self._msg_size = 0
            self._fragments = []
            self._utf8 = codecs.getincrementaldecoder("utf-8")() if opcode == TEXT else None

    def _data_chunk(self, chunk):
        self._msg_size += len(chunk)
        if self.keep_data:
            self._fragments.append(chunk)
        if self._utf8 is not None:
            try:
                self._utf8.decode(chunk, final=False)
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8")

    def _end_frame(self, fin):
        """After a data frame's last byte: the message event if ``fin``."""
        if not fin:
            return None
        if self._utf8 is not None:
            try:
                self._utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_DATA, "text message ends inside a UTF-8 sequence")
        event = (self._msg_opcode, b"".join(self._fragments))
        self._msg_opcode, self._fragments, self._msg_size, self._utf8 = None, [], 0, None
        return event

    def _on_control(self, opcode, payload):
        if opcode == CLOSE:
            parse_close(payload)
        return opcode, payload


def _check_utf8(payload):
    if not _isascii(payload):
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8")

