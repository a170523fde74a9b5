"""Session rooms' lines (sans-IO): the control link and the data links of ``connect --sessions``.

The wire (docs/PROTOCOL.md, "Session rooms"):

- **control link**: a source connection whose first line is ``SESSIONS`` (after ``AUTH <TOKEN>``
  for a named room). The relay answers ``ROOM <CODE>`` and ``WRITE <KEY>``, then sends one
  ``OPEN <SID>`` line per client; the agent answers a session it cannot open with
  ``REFUSED <SID> <REASON>``; a bare newline from the agent is a keep-alive.
- **data link**: a new source connection whose first line is ``SESSION <SID>``; every byte after
  that line, both ways, is the session's.

A session id is 22 to 64 characters from ``A-Z a-z 0-9 _ -`` (the relay draws 128 bits from
:mod:`secrets`). :class:`LineReader` cuts a byte stream into lines; the ``parse_*`` functions
turn a line into an event tuple; the ``*_line`` functions build lines.
"""

import re

SESSIONS = b"SESSIONS"
SESSION = b"SESSION"
_SID = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
#: longest reason carried by a REFUSED line (characters)
MAX_REASON = 100


def valid_sid(text):
    """True for a well-formed session id (str)."""
    return bool(_SID.match(text or ""))


def clean_reason(text, limit=MAX_REASON):
    """``text`` as one line of printable ASCII, at most ``limit`` characters (never empty)."""
    shown = "".join(c if " " <= c <= "~" else " " for c in str(text)).strip()
    return " ".join(shown.split())[:limit] or "refused"


def open_line(sid):
    return b"OPEN %s\n" % sid.encode("ascii")


def session_line(sid):
    return b"SESSION %s\n" % sid.encode("ascii")


def refused_line(sid, reason):
    return b"REFUSED %s %s\n" % (sid.encode("ascii"), clean_reason(reason).encode("ascii"))


class LineTooLong(ValueError):
    """More than ``max_line`` bytes without a newline."""


class LineReader:
    """Bytes in, whole lines out (without ``\\n``; one trailing ``\\r`` stripped).

    ``feed(b"")`` is not end of stream: it returns no line; what is left unterminated at
    the end is :attr:`rest`. A line longer than ``max_line`` raises :class:`LineTooLong`."""

    def __init__(self, max_line=1024):
        self.max_line = max_line
        self.rest = b""

    def feed(self, data):
        buf = self.rest + data
        lines = buf.split(b"\n")
        self.rest = lines.pop()
        if len(self.rest) > self.max_line or any(len(line) > self.max_line for line in lines):
            raise LineTooLong("a line longer than %d bytes" % self.max_line)
        return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _text(line):
    return line.decode("utf-8", "replace")


def parse_agent_line(line):
    """A control line from the agent: ``("refused", sid, reason)``, ``("keepalive",)`` (blank)
    or ``("unknown", text)``."""
    text = _text(line).strip()
    if not text:
        return ("keepalive",)
    word, _, rest = text.partition(" ")
    sid, _, reason = rest.partition(" ")
    if word == "REFUSED" and valid_sid(sid):
        return ("refused", sid, clean_reason(reason or "refused"))
    return ("unknown", text)


def parse_relay_line(line):
    """A control line from the relay: ``("room", code)``, ``("write", key)``, ``("open", sid)``,
    ``("error", reason)``, ``("keepalive",)`` (blank) or ``("unknown", text)``."""
    text = _text(line).strip()
    if not text:
        return ("keepalive",)
    word, _, rest = text.partition(" ")
    parts = rest.split()
    if word == "ROOM" and len(parts) == 1:
        return ("room", parts[0])
    if word == "WRITE" and len(parts) == 1:
        return ("write", parts[0])
    if word == "OPEN" and len(parts) == 1 and valid_sid(parts[0]):
        return ("open", parts[0])
    if word == "ERROR":
        return ("error", rest.strip())
    return ("unknown", text)
