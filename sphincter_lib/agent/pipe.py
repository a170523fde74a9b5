"""``sphincter pipe URL``: the client side of a tunnel. stdin/stdout (or, with ``--listen``,
each local TCP connection) joined to one WebSocket session, as binary messages both ways.

A :class:`Session` splices one *local end* (:mod:`.pipe_local`: stdin/stdout, a socket) to one
WebSocket (opened by :mod:`.dial`, upgraded by :class:`.wsclient.ClientConnection`) with
two pumps, each holding at most one message, so a slow side slows the other down (TCP
backpressure) and nothing piles up here:

- *up*: read at most ``--read-size`` bytes, send them as one binary message; at the end of
  the input, send close 1000 and wait (``--close-timeout``) for the relay's answer;
- *down*: write each message the relay sends, whole, before reading the next; at the
  relay's close the output has every byte.

How a session ends (:class:`Outcome`): the relay's close 1000 (the service ended: every
byte was written out), its 4410 (``source closed``: the room's source ended), the end of
our input (our close 1000, answered), or the local output going away are the normal ends,
status 0. Any other close code, an end without a close frame, or a failure to connect
(DNS, TCP, proxy, TLS, the upgrade) is status 1 with one line saying which.
"""

import logging
import signal
import socket
import ssl
import sys

import gevent
import gevent.event

from ..closecodes import CloseCode
from ..errors import SphincterError
from ..logformat import setup_logging
from ..proto.addresses import format_peer
from . import wsclient
from .dial import DialError, dial, tls_context
from .pipe_local import SocketEnd, StdioEnd
from .pipe_options import parse

logger = logging.getLogger("sphincter.agent.pipe")

#: bytes a pump moves before it lets other greenlets run
YIELD_EVERY = 1 << 20
#: the relay's close codes that end a session normally: 1000, and 4410 (the room's source
#: closed: a room with one source and no per-session close says so this way)
NORMAL_CLOSES = (CloseCode.NORMAL, CloseCode.SOURCE_CLOSED)


class Outcome:
    """How a session ended: ``status`` 0 or 1, and one line saying why."""

    def __init__(self, status, line):
        self.status, self.line = status, line

    def __repr__(self):
        return "Outcome(%d, %r)" % (self.status, self.line)


# --- one session -----------------------------------------------------------------------

def _one_line(exc):
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0]


class Session:
    """One local end <-> one WebSocket session. :meth:`run` returns an :class:`Outcome`."""

    def __init__(self, opts, local, ssl_context=None):
        self.opts, self.local = opts, local
        self.ssl_context = ssl_context
        self.conn = None
        self.sent = self.received = 0
        self.closing = False           # our close frame went out (the input ended)
        self.done = gevent.event.AsyncResult()

    def open(self):
        """Dial and upgrade; raises :class:`DialError` or :class:`wsclient.HandshakeError`."""
        sock = dial(self.opts.url, self.opts.proxy, self.ssl_context, self.opts.connect_timeout)
        conn = wsclient.ClientConnection(self.opts.url, timeout=self.opts.connect_timeout,
                                         max_message_bytes=self.opts.max_message_bytes,
                                         headers=self.opts.headers)
        try:
            return conn.open(sock)
        except wsclient.HandshakeError as exc:
            raise wsclient.HandshakeError("the relay refused the WebSocket: %s" % exc)
        except (OSError, ssl.SSLError) as exc:
            raise DialError("the WebSocket upgrade failed: %s" % _one_line(exc))

    def run(self):
        try:
            self.conn = self.open()
        except (DialError, wsclient.HandshakeError) as exc:
            return Outcome(1, str(exc))
        logger.debug("%s: session open", self.local.name)
        pumps = [gevent.spawn(self._guard(self._pump_up)), gevent.spawn(self._guard(self._pump_down))]
        try:
            return self.done.get()
        finally:
            gevent.killall(pumps)
            self.conn.close(CloseCode.NORMAL)

    def stop(self, line="stopped"):
        self._finish(Outcome(0, line))

    def _finish(self, outcome):
        if not self.done.ready():
            self.done.set(outcome)

    def _guard(self, fn):
        def run():
            try:
                fn()
            except gevent.GreenletExit:
                pass
            except Exception as exc:
                logger.exception("%s: pipe greenlet crashed", self.local.name)
                self._finish(Outcome(1, "internal error: %s" % _one_line(exc)))
        return run

    # -- the pumps ----------------------------------------------------------------------
    def _pump_up(self):
        """Local input -> one binary message per read; at its end, our close and the wait."""
        moved = 0
        while True:
            try:
                data = self.local.read(self.opts.read_size)
            except OSError as exc:
                logger.info("%s: input failed (%s): closing", self.local.name, _one_line(exc))
                data = b""
            if not data:
                break
            try:
                self.conn.send(data, text=False)
            except OSError as exc:
                return self._finish(Outcome(1, "the connection to the relay broke: %s" % _one_line(exc)))
            self.sent += len(data)
            moved += len(data)
            if moved >= YIELD_EVERY:
                moved = 0
                gevent.sleep(0)
        logger.debug("%s: end of input after %d bytes: close 1000", self.local.name, self.sent)
        self.closing = True
        try:
            self.conn.send_close(CloseCode.NORMAL)
        except OSError as exc:
            return self._finish(Outcome(1, "the connection to the relay broke: %s" % _one_line(exc)))
        if self.done.wait(self.opts.close_timeout) is None:
            self._finish(Outcome(1, "no close frame from the relay within %g s after ours"
                                 % self.opts.close_timeout))

    def _pump_down(self):
        """Relay -> local output, message by message; the relay's close ends the session."""
        moved = 0
        while True:
            try:
                _opcode, payload = self.conn.recv()
            except wsclient.ConnectionClosed as exc:
                return self._finish(self._closed(exc))
            try:
                self.local.write(payload)
            except OSError as exc:
                logger.info("%s: output closed (%s): closing", self.local.name, _one_line(exc))
                return self._finish(Outcome(0, "the local output closed"))
            self.received += len(payload)
            moved += len(payload)
            if moved >= YIELD_EVERY:
                moved = 0
                gevent.sleep(0)

    def _closed(self, exc):
        """The Outcome for the relay's close (``exc.code`` None: no close frame came)."""
        if exc.code in NORMAL_CLOSES:
            self.local.end_output()
            if self.closing:
                return Outcome(0, "end of input: closed (%d)" % exc.code)
            return Outcome(0, "closed by the relay: %d %s" % (exc.code, exc.reason or "normal"))
        if exc.code is None:
            if self.closing and not exc.reason:
                return Outcome(0, "the relay ended the connection after our close")
            return Outcome(1, "the connection to the relay ended without a close frame%s"
                           % ((": " + exc.reason) if exc.reason else ""))
        return Outcome(1, "closed by the relay: %d %s" % (exc.code, exc.reason or "(no reason)"))


# --- the two modes -----------------------------------------------------------------------

def _context(opts):
    return tls_context(opts.tls_ca) if opts.url.lower().startswith("wss://") else None


def run_stdio(opts, ssl_context=None, stop=None):
    """stdin/stdout <-> one session; returns ``(status, line)``."""
    local = StdioEnd()
    session = Session(opts, local, ssl_context)
    if stop is not None:
        stop.append(session.stop)
    try:
        outcome = session.run()
    finally:
        local.close()
    logger.info("session ended: %s; sent %d bytes, received %d bytes", outcome.line,
                session.sent, session.received)
    return outcome


class Listener:
    """``--listen``: every accepted local connection is its own :class:`Session`."""

    #: backlog of the listening socket
    backlog = 128
    #: seconds to wait after accept() failed (out of file descriptors) before trying again
    accept_pause = 0.5

    def __init__(self, opts, ssl_context=None, out=None):
        self.opts, self.ssl_context = opts, ssl_context
        self.out = out or sys.stdout
        self.sessions = set()
        self.stopped = gevent.event.Event()
        self.sock = None

    def bind(self):
        host, port = self.opts.listen
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(self.backlog)
        except OSError as exc:
            raise DialError("cannot listen on %s:%d: %s" % (host, port, exc.strerror or exc))
        self.sock = sock
        bound = format_peer(sock.getsockname())
        print("LISTENING %s" % bound, file=self.out, flush=True)
        logger.info("listening on %s for sessions with %s", bound, self.opts.url.split("?")[0])
        return self

    def serve(self):
        """Accept until :meth:`stop`; then end every session."""
        acceptor = gevent.spawn(self._guarded(self._accept_loop, "accept loop"))
        try:
            self.stopped.wait()
        finally:
            acceptor.kill()
            self.sock.close()
            gevent.killall(list(self.sessions))
        return 0

    def stop(self):
        self.stopped.set()

    def _guarded(self, fn, what, *args):
        def run():
            try:
                fn(*args)
            except gevent.GreenletExit:
                pass
            except Exception:
                logger.exception("%s crashed", what)
                if what == "accept loop":
                    self.stop()
        return run

    def _accept_loop(self):
        while True:
            try:
                sock, peer = self.sock.accept()
            except OSError as exc:
                logger.warning("accept failed: %s", exc.strerror or exc)
                gevent.sleep(self.accept_pause)
                continue
            g = gevent.spawn(self._guarded(self._handle, "session", sock, peer))
            self.sessions.add(g)
            g.link(self.sessions.discard)

    def _handle(self, sock, peer):
        local = SocketEnd(sock, peer)
        session = Session(self.opts, local, self.ssl_context)
        logger.info("%s: connected", local.name)
        try:
            outcome = session.run()
        finally:
            local.close()
        log = logger.info if outcome.status == 0 else logger.warning
        log("%s: session ended: %s; sent %d bytes, received %d bytes", local.name, outcome.line,
            session.sent, session.received)


def main(argv=None, env=None):
    try:
        opts = parse(argv, env)
    except SphincterError as exc:
        print("sphincter pipe: error: %s" % exc, file=sys.stderr)
        return 2
    setup_logging(opts.log_level, opts.log_format)
    if opts.proxy is not None:
        logger.info("through the proxy %s (%s)", opts.proxy.url, opts.proxy_source)
    try:
        context = _context(opts)
    except (OSError, ssl.SSLError) as exc:
        print("sphincter pipe: error: argument --tls-ca: %s" % _one_line(exc), file=sys.stderr)
        return 2
    stops = []
    _on_signals(lambda: [stop() for stop in stops])
    try:
        if opts.listen is None:
            outcome = run_stdio(opts, context, stops)
            if outcome.status:
                print("sphincter pipe: %s" % outcome.line, file=sys.stderr)
            return outcome.status
        try:
            listener = Listener(opts, context).bind()
        except DialError as exc:
            print("sphincter pipe: %s" % exc, file=sys.stderr)
            return 1
        stops.append(listener.stop)
        return listener.serve()
    except KeyboardInterrupt:
        return 0


def _on_signals(callback):
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, callback)
    except (AttributeError, NotImplementedError, ValueError, OSError):
        pass                     # no signal handlers here (Windows): Ctrl-C interrupts


__all__ = ["Listener", "Outcome", "Session", "main"]
