"""RESP (the Redis protocol), sans-IO: encode commands, parse replies and pub/sub pushes.

Only what the relay's two hot Redis connections need (see ``cluster.link``):
:func:`command` encodes one command as a RESP array of bulk strings, and
:class:`Parser` turns the bytes read from a connection into replies —
``bytes`` (simple and bulk strings), ``int``, ``None`` (null), ``list``
(arrays, pub/sub pushes) or :class:`Error`. RESP2 only (no ``HELLO 3``).
Every other Redis command goes through redis-py.
"""

__all__ = ["command", "Parser", "Error", "RespError"]

_CRLF = b"\r\n"


def _bulk(arg):
    if arg.__class__ is not bytes:
        arg = str(arg).encode() if not isinstance(arg, (bytes, bytearray, memoryview)) else bytes(arg)
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def command(*args):
    """One command (names and arguments: bytes, str or int) as RESP bytes."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


class Error(object):
    """An error reply (``-ERR ...``): a value, not an exception (a pipeline goes on)."""

    __slots__ = ("message",)

    def __init__(self, message):
        self.message = message

    def __repr__(self):
        return "Error(%r)" % self.message

    def __eq__(self, other):
        return isinstance(other, Error) and other.message == self.message


class RespError(Exception):
    """The server sent bytes that are not RESP: the connection must be dropped.

    Not a :class:`~sphincter_lib.errors.ProtocolError` (that one is WebSocket's, with a close
    code); it stays outside the ``SphincterError`` tree so nothing catches it by accident."""


class Parser:
    """Feed bytes, get whole replies: ``for reply in parser.feed(data): ...``.

    Incomplete replies wait for more bytes; a large bulk string is not
    scanned, only counted, so a big pub/sub message costs one copy."""

    def __init__(self, max_bulk=512 << 20):
        self._buf = bytearray()
        self._pos = 0
        self.max_bulk = max_bulk

    def feed(self, data):
        buf = self._buf
        if self._pos:
            del buf[:self._pos]
            self._pos = 0
        buf += data
        out = []
        while True:
            start = self._pos
            try:
                value, pos = self._parse(start)
            except IndexError:
                pos = -1
            if pos < 0:
                self._pos = start
                return out
            self._pos = pos
            out.append(value)

    def _line(self, pos):
        end = self._buf.find(_CRLF, pos)
        if end < 0:
            return None, -1
        return self._buf[pos:end], end + 2

    def _parse(self, pos):
        buf = self._buf
        if pos >= len(buf):
            return None, -1
        kind = buf[pos]
        line, nxt = self._line(pos + 1)
        if nxt < 0:
            return None, -1
        if kind == 36:                        # '$' bulk string
            n = int(line)
            if n < 0:
                return None, nxt
            if n > self.max_bulk:
                raise RespError("bulk string of %d bytes" % n)
            end = nxt + n
            if end + 2 > len(buf):
                return None, -1
            return bytes(buf[nxt:end]), end + 2
        if kind == 42:                        # '*' array
            n = int(line)
            if n < 0:
                return None, nxt
            items = []
            for _ in range(n):
                value, nxt = self._parse(nxt)
                if nxt < 0:
                    return None, -1
                items.append(value)
            return items, nxt
        if kind == 43:                        # '+' simple string
            return bytes(line), nxt
        if kind == 58:                        # ':' integer
            return int(line), nxt
        if kind == 45:                        # '-' error
            return Error(bytes(line).decode("utf-8", "replace")), nxt
        raise RespError("unexpected reply type %r" % chr(kind))
