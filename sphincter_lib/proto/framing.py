"""Sans-IO framing of a source's byte stream into messages.

A framer is fed the bytes a source sends and returns the messages to publish::

    framer = LineFramer(max_message_bytes=1 << 20)
    for message in framer.feed(chunk): ...     # any number of times
    for message in framer.eof(): ...           # once, when the source closes

``feed(b"")`` returns ``[]`` and changes nothing (it is *not* end of stream;
call :meth:`eof` for that). Messages are ``bytes``; whether one goes out as a
text or a binary WebSocket message is :func:`is_text`'s decision.

Both framers keep at most ``max_message_bytes`` bytes between calls, whatever
the input: memory is bounded, and nothing is dropped.
"""

from ..errors import ConfigError

#: ``bytes.isascii`` (CPython 3.7+); on 3.6 a stand-in answering False, so the full UTF-8
#: check runs instead (same result, slower)
_isascii = getattr(bytes, "isascii", lambda data: False)

#: default upper bound of one message, in bytes (1 MiB)
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20


def is_text(payload):
    """True if ``payload`` is valid UTF-8 (so it goes out as a text message)."""
    if _isascii(payload):
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _cut(buf, start, limit):
    """Index where the next chunk of at most ``limit`` bytes of ``buf[start:]`` ends.

    Prefers not to split a UTF-8 sequence: if the byte just past the limit is a
    continuation byte, the cut moves back (at most 3 bytes) to the sequence's
    lead byte, so valid text stays valid text in every chunk.
    """
    pos = start + limit
    if buf[pos] & 0xC0 == 0x80:
        for back in range(1, 4):
            b = buf[pos - back]
            if b & 0xC0 == 0xC0:          # lead byte of the sequence pos belongs to
                if pos - back > start:
                    return pos - back
                break
            if b & 0xC0 != 0x80 or pos - back <= start:
                break
    return pos


def _split(line, limit, out):
    """Append ``line`` to ``out`` as chunks of at most ``limit`` bytes."""
    start, end = 0, len(line)
    while end - start > limit:
        cut = _cut(line, start, limit)
        out.append(line[start:cut])
        start = cut
    if start < end:
        out.append(line[start:] if start else line)


class LineFramer:
    """``lines`` framing: one message per ``\\n``-terminated line.

    One trailing ``\\r`` is stripped; empty lines are not messages (bare
    newlines serve as keep-alives); a line longer than ``max_message_bytes``
    goes out as consecutive messages of at most that size; an unterminated last
    line is delivered by :meth:`eof`.
    """

    __slots__ = ("max_message_bytes", "_pending")

    def __init__(self, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES):
        if max_message_bytes < 1:
            raise ConfigError("max_message_bytes must be at least 1")
        self.max_message_bytes = max_message_bytes
        self._pending = bytearray()

    def feed(self, data):
        out = []
        limit = self.max_message_bytes
        nl = data.find(b"\n")
        if nl < 0:
            self._hold(data, out)
            return out
        pending = self._pending
        if pending:
            pending += data[:nl]
            self._line(bytes(pending), out)
            pending.clear()
        else:
            self._line(data[:nl], out)
        lines = data[nl + 1:].split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                continue
            if len(line) > limit:
                _split(line, limit, out)
            else:
                out.append(line)
        if rest:
            self._hold(rest, out)
        return out

    def eof(self):
        out = []
        if self._pending:
            self._line(bytes(self._pending), out)
            self._pending.clear()
        return out

    def _line(self, line, out):
        if line[-1:] == b"\r":
            line = line[:-1]
        if line:
            _split(line, self.max_message_bytes, out)

    def _hold(self, data, out):
        """Keep an unterminated tail; emit full chunks once it exceeds the limit."""
        pending = self._pending
        pending += data
        limit = self.max_message_bytes
        if len(pending) > limit:
            start = 0
            while len(pending) - start > limit:
                cut = _cut(pending, start, limit)
                out.append(bytes(pending[start:cut]))
                start = cut
            del pending[:start]


class RawFramer:
    """``raw`` framing: each chunk read is a binary message of at most ``max_message_bytes``.

    The concatenation of the messages equals the bytes fed.
    """

    __slots__ = ("max_message_bytes",)

    def __init__(self, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES):
        if max_message_bytes < 1:
            raise ConfigError("max_message_bytes must be at least 1")
        self.max_message_bytes = max_message_bytes

    def feed(self, data):
        limit = self.max_message_bytes
        if len(data) <= limit:
            return [bytes(data)] if data else []
        return [bytes(data[i:i + limit]) for i in range(0, len(data), limit)]

    def eof(self):
        return []


FRAMERS = {"lines": LineFramer, "raw": RawFramer}


def make_framer(name, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES):
    try:
        cls = FRAMERS[name]
    except KeyError:
        raise ConfigError("unknown framing %r (choose from %s)" % (name, ", ".join(FRAMERS)))
    return cls(max_message_bytes)
