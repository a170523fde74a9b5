"""``sphincter connect``: the local services it bridges (see :mod:`.connect`).

Each kind is a class whose instances are one connection: ``open()`` (raises
``OSError`` or :class:`~sphincter_lib.errors.SphincterError` when the service
is not there), ``read()`` -> bytes for the room (``b""``: the connection
ended), ``write(bytes)`` for write-back data, ``close()``. ``final``: the end
of its input is the end of the program (stdin).
"""

import logging
import socket
import sys

import gevent

from ..proto import obsws
from . import wsclient
from ..errors import SphincterError

logger = logging.getLogger("sphincter.agent.local")


class Fatal(SphincterError):
    """Retrying cannot help: stop with exit status ``status`` (one-line message)."""

    def __init__(self, message, status=1):
        SphincterError.__init__(self, message)
        self.status = status


class LineSplitter:
    """Write-back bytes -> whole lines (without the newline); a line longer than ``max_line``
    comes out in pieces of that size, so memory stays bounded."""

    def __init__(self, max_line):
        self.max_line = max_line
        self._buf = b""

    def feed(self, data):
        self._buf += data
        parts = self._buf.split(b"\n")
        self._buf = parts.pop()
        out = []
        for line in parts:
            out.extend(self._cut(line.rstrip(b"\r")))
        while len(self._buf) > self.max_line:
            out.append(self._buf[:self.max_line])
            self._buf = self._buf[self.max_line:]
        return out

    def _cut(self, line):
        if len(line) <= self.max_line:
            return [line] if line else []
        return [line[i:i + self.max_line] for i in range(0, len(line), self.max_line)]


def _is_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class TcpLocal:
    read_size = 256 * 1024
    final = False       # its end is not the end of the program

    def __init__(self, spec, opts):
        self.address = (spec.host, spec.port)
        self.timeout = opts.connect_timeout
        self.sock = None

    def open(self):
        self.sock = socket.create_connection(self.address, timeout=self.timeout)
        self.sock.settimeout(None)
        return self

    def read(self):
        try:
            return self.sock.recv(self.read_size)
        except OSError:
            return b""

    def write(self, data):
        self.sock.sendall(data)

    def close(self):
        if self.sock is not None:
            self.sock.close()


class StdioLocal:
    """``--from -``: stdin to the room, write-back to stdout; the end of stdin ends the program."""

    read_size = 64 * 1024
    final = True

    def __init__(self, spec, opts, stdin=None, stdout=None):
        self.stdin = (stdin or sys.stdin.buffer).fileno()
        self.stdout = (stdout or sys.stdout.buffer).fileno()

    def open(self):
        from gevent import os as gos
        gos.make_nonblocking(self.stdin)
        gos.make_nonblocking(self.stdout)
        return self

    def read(self):
        from gevent import os as gos
        try:
            return gos.nb_read(self.stdin, self.read_size)
        except OSError:
            return b""

    def write(self, data):
        from gevent import os as gos
        view = memoryview(data)
        while view:
            view = view[gos.nb_write(self.stdout, view):]

    def close(self):
        pass


class WsLocal:
    """A local WebSocket service: each message becomes a line (``--framing lines``) or a chunk
    (``raw``); write-back lines (chunks) go back as messages, text when they are UTF-8."""

    final = False

    def __init__(self, spec, opts, subprotocols=()):
        self.url = spec.url
        self.opts = opts
        self.lines = opts.framing == "lines"
        self.splitter = LineSplitter(opts.max_message_bytes)
        self.conn = wsclient.ClientConnection(spec.url, subprotocols, timeout=opts.connect_timeout,
                                        max_message_bytes=opts.max_message_bytes)

    def open(self):
        self.conn.open()
        return self

    def read(self):
        try:
            opcode, payload = self.conn.recv()
        except (wsclient.ConnectionClosed, OSError) as exc:
            self.closed_by = exc
            return b""
        return payload + b"\n" if self.lines else payload

    def write(self, data):
        if not self.lines:
            self.conn.send(data, text=False)
            return
        for line in self.splitter.feed(data):
            self.conn.send(line, text=_is_utf8(line))

    def close(self):
        self.conn.close()


class ObsLocal(WsLocal):
    """obs-websocket 5: events (op 5) and responses (op 7, 9) become JSON lines; writers'
    requests (op 6, 8) reach OBS only with ``--obs-allow-requests``."""

    def __init__(self, spec, opts):
        WsLocal.__init__(self, spec, opts, subprotocols=(obsws.SUBPROTOCOL,))
        self.lines = True
        self.session = obsws.ObsSession(opts.obs_password, opts.obs_events, opts.obs_allow_requests,
                                        opts.obs_initial_requests)

    def open(self):
        self.conn.open()
        try:
            with gevent.Timeout(self.opts.connect_timeout, SphincterError(
                    "obs did not answer within %g s" % self.opts.connect_timeout)):
                while not self.session.identified:
                    opcode, payload = self.conn.recv()
                    self._act(self.session.from_obs(payload.decode("utf-8", "replace")))
        except wsclient.ConnectionClosed as exc:
            self.conn.close()
            raise _obs_closed(exc)
        except BaseException:
            self.conn.close()
            raise
        logger.info("obs identified (obs-websocket %s, rpc %s)", self.session.obs_version,
                    self.session.rpc_version)
        return self

    def _act(self, actions):
        out = []
        for kind, value in actions:
            if kind == "send":
                self.conn.send(value)
            elif kind == "relay":
                out.append(value.encode("utf-8") + b"\n")
            elif kind == "drop":
                logger.warning("%s", value)
        return b"".join(out)

    def read(self):
        skipped = 0
        while True:
            try:
                opcode, payload = self.conn.recv()
            except wsclient.ConnectionClosed as exc:
                if exc.code == obsws.SESSION_INVALIDATED:
                    raise Fatal("obs closed the session: %s" % obsws.describe_close(exc.code))
                self.closed_by = obsws.describe_close(exc.code)
                return b""
            except OSError as exc:
                self.closed_by = exc
                return b""
            skipped += 1
            if skipped % 64 == 0:
                gevent.sleep(0)          # many messages that go nowhere: let others run
            if opcode != wsclient.TEXT:
                logger.warning("obs sent a binary message; dropped")
                continue
            data = self._act(self.session.from_obs(payload.decode("utf-8")))
            if data:
                return data

    def write(self, data):
        for line in self.splitter.feed(data):
            self._act(self.session.from_room(line))


def _obs_closed(exc):
    if exc.code == obsws.SESSION_INVALIDATED:
        return Fatal("obs closed the session: %s" % obsws.describe_close(exc.code))
    return SphincterError("obs closed the connection: %s" % obsws.describe_close(exc.code))


def make_local(spec, opts):
    """A factory: each call makes a fresh (unopened) local connection object."""
    kinds = {"tcp": TcpLocal, "ws": WsLocal, "obs": ObsLocal, "stdio": StdioLocal}
    return lambda: kinds[spec.kind](spec, opts)


