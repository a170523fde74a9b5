"""``sphincter connect``: its link to the relay (a source connection, see docs/PROTOCOL.md).

:class:`BannerParser` (sans-IO) turns what the relay sends into events: the banner
(``ROOM``, then optionally ``RESUME`` and ``WRITE``), ``ERROR`` lines, and write-back data
after a ``WRITE`` line. :class:`RelayLink` is one connection: it sends the ``AUTH`` /
``RESUME`` lines, reads the banner, then reads events and sends data.
"""

import socket
import time

import gevent.lock

from ..errors import SphincterError
from .dial import relay_socket


class RelayRefused(SphincterError):
    """The relay answered ``ERROR <reason>``."""

    def __init__(self, reason):
        SphincterError.__init__(self, "relay said: ERROR %s" % reason)
        self.reason = reason


class BannerParser:
    """What the relay sends a source, as events (sans-IO).

    ``feed(bytes)`` returns a list of ``("room", code)``, ``("resume", code,
    key)``, ``("write", key)``, ``("error", reason)``, ``("line", text)`` (an
    unexpected line) and ``("data", bytes)``. The banner is ``ROOM`` then
    optionally ``RESUME`` and ``WRITE``; after a ``WRITE`` line everything is
    write-back data, otherwise the relay only ever sends ``ERROR`` lines.
    """

    def __init__(self, max_line=1024):
        self.max_line = max_line
        self.data_mode = False
        self._buf = b""

    def feed(self, data):
        if self.data_mode:
            return [("data", data)] if data else []
        self._buf += data
        events = []
        while not self.data_mode:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line:
                    raise SphincterError("relay sent a line longer than %d bytes" % self.max_line)
                return events
            line, self._buf = self._buf[:end].rstrip(b"\r"), self._buf[end + 1:]
            events.append(self._line(line.decode("utf-8", "replace")))
        if self._buf:
            events.append(("data", self._buf))
            self._buf = b""
        return events

    def _line(self, text):
        word, _, rest = text.partition(" ")
        parts = rest.split()
        if word == "ROOM" and len(parts) == 1:
            return ("room", parts[0])
        if word == "RESUME" and len(parts) == 2:
            return ("resume", parts[0], parts[1])
        if word == "WRITE" and len(parts) == 1:
            self.data_mode = True
            return ("write", parts[0])
        if word == "ERROR":
            return ("error", rest.strip())
        return ("line", text)


# --- the relay link --------------------------------------------------------------

#: write-back bytes kept to recognise an ERROR line right before the relay closes
_TAIL = 128


class RelayLink:
    """One source connection to the relay, after its banner: ``code``, ``resume`` (code, key)
    or None, ``write_key`` or None; :meth:`read` returns parser events, :meth:`send` data."""

    read_size = 256 * 1024

    def __init__(self, sock, parser, code, resume, write_key, events):
        self.sock, self.parser = sock, parser
        self.code, self.resume, self.write_key = code, resume, write_key
        self.pending = events          # events that came with the banner
        self._tail = b""               # the last bytes of write-back data (see _eof)
        self._sending = gevent.lock.Semaphore()
        self.at_line_start = True      # a bare newline here is a keep-alive, not data
        self.opened_at = self.last_send = time.monotonic()

    @classmethod
    def open(cls, opts, resume=None):
        sock = relay_socket(opts)          # TCP (TLS), or a WebSocket on the relay's HTTP port
        try:
            first = b""
            if opts.token:
                first += b"AUTH %s\n" % opts.token.encode()
            if resume:
                first += b"RESUME %s %s\n" % (resume[0].encode(), resume[1].encode())
            if first:
                sock.sendall(first)
            link = cls._banner(sock, opts.connect_timeout)
            sock.settimeout(None)
            return link
        except BaseException:
            sock.close()
            raise

    @classmethod
    def _banner(cls, sock, timeout):
        parser = BannerParser()
        events, code = [], None
        deadline = time.monotonic() + timeout
        while code is None:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(4096)
            except socket.timeout:
                raise SphincterError("no banner from the relay within %g s" % timeout)
            if not data:
                raise SphincterError("relay closed the connection before its banner")
            for event in parser.feed(data):
                if event[0] == "error" and code is None:
                    raise RelayRefused(event[1])
                if event[0] == "room" and code is None:
                    code = event[1]
                else:
                    events.append(event)
        if not events:       # RESUME / WRITE lines are written with ROOM, in one piece
            sock.settimeout(0.2)
            try:
                data = sock.recv(4096)
                events.extend(parser.feed(data) if data else [("eof",)])
            except socket.timeout:
                pass
        resume = write_key = None
        rest = []
        for event in events:
            if event[0] == "resume":
                resume = (event[1], event[2])
            elif event[0] == "write":
                write_key = event[1]
            else:
                rest.append(event)
        return cls(sock, parser, code, resume, write_key, rest)

    def read(self):
        """The next events (``[("eof",)]`` when the connection ended)."""
        if self.pending:
            events, self.pending = self.pending, []
            for event in events:
                if event[0] == "data":
                    self._tail = (self._tail + event[1])[-_TAIL:]
            return events
        try:
            data = self.sock.recv(self.read_size)
        except OSError:
            data = b""
        if not data:
            return self._eof()
        if self.parser.data_mode:
            self._tail = (self._tail + data)[-_TAIL:]
        return self.parser.feed(data)

    def _eof(self):
        """After a WRITE line the relay's last ERROR line is mixed with write-back data: an
        ``ERROR`` line right before the end is taken for what it says (it was passed on too)."""
        if self.parser.data_mode and self._tail.endswith(b"\n"):
            last = self._tail[:-1].rpartition(b"\n")[2]
            if last.startswith(b"ERROR "):
                return [("error", last[6:].decode("utf-8", "replace").strip()), ("eof",)]
        return [("eof",)]

    def send(self, data):
        """Write ``data`` whole (greenlets take turns: a keep-alive never lands inside a chunk)."""
        with self._sending:
            self.sock.sendall(data)
        self.last_send = time.monotonic()
        self.at_line_start = data.endswith(b"\n")

    def finish(self):
        """Half-close: no more data from us. False if the connection is already gone."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            return True
        except OSError:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
