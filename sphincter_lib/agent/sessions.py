"""``sphincter connect --sessions``: a session room, one connection to the local service per client.

The *control link* is a source connection whose first line is ``SESSIONS`` (after ``AUTH``
with ``--token``); the relay answers ``ROOM``, ``WRITE`` and ``SESSIONS`` (accepted), then
sends ``OPEN <SID>`` for each WebSocket client. For each, this agent dials its own ``--from``
service — never anything a client chose — and, once connected, opens a *data link* to the
relay (first line ``SESSION <SID>``) and splices the two, bytes both ways, each end's FIN passed
on to the other; a service that cannot be reached is answered ``REFUSED <SID> <reason>``. The
control link is kept up with capped backoff; sessions in progress go on over their own links
when it drops. Wire: docs/PROTOCOL.md, "Session rooms".
"""

import logging
import socket
import ssl
import sys
import time

import gevent
import gevent.event
import gevent.lock

from ..errors import SphincterError
from ..proto import sessionwire
from ..tcp import SPLICE, NoPipe, SplicePipe, plain
from .backoff import Backoff
from .dial import relay_socket
from .local import Fatal

logger = logging.getLogger("sphincter.agent.sessions")


def _reason(exc):
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__


def dial_relay(opts):
    """A TCP (or TLS) connection to the relay's source port, or a source link over WebSocket
    (``--relay wss://...``: ``dial.relay_socket``), within ``--connect-timeout``."""
    return relay_socket(opts)


class SessionAgent:
    """The control link, kept up; a greenlet per session. :meth:`run` returns the exit status."""

    #: bytes moved by one direction of a session before it yields
    yield_bytes = 256 * 1024
    #: bytes asked of each read
    read_size = 256 * 1024
    #: move a session's bytes with ``os.splice`` through a pipe (no copy into Python) when both
    #: ends are plain TCP sockets (Linux, Python 3.10+); else, or False, recv/sendall
    zero_copy = True

    def __init__(self, opts, out=None, backoff=None):
        self.opts = opts
        self.out = out or sys.stdout
        self.backoff = backoff or Backoff(opts.retry_min, opts.retry_max)
        self.done = gevent.event.AsyncResult()
        self.code = self.key = None
        self.control = None
        self._control_lock = gevent.lock.Semaphore()
        self.sessions = set()
        self.opened = 0

    def _first(self):
        return b"AUTH %s\n" % self.opts.token.encode() if self.opts.token else b""

    # -- the control link -----------------------------------------------------------------
    def _open_control(self):
        sock = dial_relay(self.opts)
        try:
            sock.sendall(self._first() + sessionwire.SESSIONS + b"\n")
            reader = sessionwire.LineReader()
            code = key = None
            deadline = time.monotonic() + self.opts.connect_timeout
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(4096)
                except socket.timeout:
                    raise SphincterError("the relay did not accept sessions within %g s "
                                         "(an older relay?)" % self.opts.connect_timeout)
                if not data:
                    raise SphincterError("relay closed the connection before its banner")
                for line in reader.feed(data):
                    if line == sessionwire.SESSIONS and code and key:
                        sock.settimeout(None)
                        return sock, code, key, reader
                    event = sessionwire.parse_relay_line(line)
                    if event[0] == "error":
                        if event[1] in ("sessions are off", "unauthorized"):
                            raise Fatal("the relay refused the session room (ERROR %s)%s" % (
                                event[1], ": check --token" if event[1] == "unauthorized" else
                                ": it needs --sessions on"))
                        raise SphincterError("relay said: ERROR %s" % event[1])
                    if event[0] == "room":
                        code = event[1]
                    elif event[0] == "write":
                        key = event[1]
        except BaseException:
            sock.close()
            raise

    def _keep_control(self):
        while True:
            try:
                sock, code, key, reader = self._open_control()
            except Fatal:
                raise
            except (OSError, SphincterError, ssl.CertificateError) as exc:
                delay = self.backoff.next()
                logger.warning("relay %s:%d: %s; retrying in %.1f s", self.opts.relay[0],
                               self.opts.relay[1], _reason(exc).splitlines()[0], delay)
                gevent.sleep(delay)
                continue
            opened = time.monotonic()
            if code != self.code:
                if self.code is not None:
                    logger.warning("the room code changed from %s to %s", self.code, code)
                print("ROOM %s" % code, file=self.out, flush=True)
            if key != self.key:
                print("WRITE %s" % key, file=self.out, flush=True)
            self.code, self.key = code, key
            logger.info("relay connected: session room %s", code)
            self.control = sock
            why = self._read_control(sock, reader)
            self.control = None
            sock.close()
            if time.monotonic() - opened >= 10.0:
                self.backoff.reset()
            delay = self.backoff.next()
            logger.warning("control link lost (%s); reconnecting in %.1f s (%d sessions go on)",
                           why, delay, len(self.sessions))
            gevent.sleep(delay)

    def _read_control(self, sock, reader):
        try:
            while True:
                data = sock.recv(4096)
                if not data:
                    return "connection closed"
                for line in reader.feed(data):
                    event = sessionwire.parse_relay_line(line)
                    if event[0] == "open":
                        g = gevent.spawn(self._session, event[1])
                        g.link_exception(self._crashed)
                    elif event[0] == "error":
                        return "ERROR %s" % event[1]
                    elif event[0] == "unknown":
                        logger.warning("relay sent an unexpected line: %r", event[1][:80])
                gevent.sleep(0)
        except (OSError, sessionwire.LineTooLong) as exc:
            return _reason(exc)

    def _tell(self, line):
        sock = self.control
        if sock is None:
            return
        try:
            with self._control_lock:
                sock.sendall(line)
        except OSError:
            pass

    # -- one session --------------------------------------------------------------------------
    def _session(self, sid):
        spec, started = self.opts.spec, time.monotonic()
        try:
            service = socket.create_connection((spec.host, spec.port), timeout=self.opts.session_dial_timeout)
        except OSError as exc:
            logger.info("session %s: service %s unreachable: %s", sid[:6], spec.text, _reason(exc))
            self._tell(sessionwire.refused_line(sid, "service unreachable: %s" % _reason(exc)))
            return
        try:
            service.settimeout(None)
            try:
                link = dial_relay(self.opts)
                link.settimeout(None)
                link.sendall(self._first() + sessionwire.session_line(sid))
            except (OSError, ssl.CertificateError) as exc:
                logger.warning("session %s: no data link to the relay: %s", sid[:6], _reason(exc))
                return
            self.opened += 1
            self.sessions.add(sid)
            try:
                up, down = self._splice(service, link)
            finally:
                self.sessions.discard(sid)
                link.close()
            logger.info("session %s ended: bytes to relay=%d from relay=%d duration=%.3fs",
                        sid[:6], up, down, time.monotonic() - started)
        finally:
            service.close()

    def _splice(self, service, link):
        pump = self._pump
        if self.zero_copy and SPLICE is not None and plain(service) and plain(link):
            pump = self._splice_pump
        up = gevent.spawn(pump, service, link)
        up.link_exception(self._crashed)
        try:                                     # the relay -> service direction in this greenlet:
            down = pump(link, service)           # one greenlet less per session
        except Exception:
            logger.error("session pump crashed", exc_info=True)
            down = 0
        up.join()
        return up.value or 0, down

    def _pump(self, src, dst):
        moved, budget = 0, self.yield_bytes
        try:
            while True:
                data = src.recv(self.read_size)
                if not data:
                    dst.shutdown(socket.SHUT_WR)       # FIN passed on, after every byte
                    return moved
                dst.sendall(data)
                moved += len(data)
                budget -= len(data)
                if budget <= 0:
                    budget = self.yield_bytes
                    gevent.sleep(0)
        except OSError:                          # a reset: end both directions
            _cut(src, dst)
            return moved

    def _splice_pump(self, src, dst):
        """:meth:`_pump` with ``os.splice``: src → a pipe → dst, the bytes never copied into this
        process; the next read only once the pipe was emptied into ``dst`` (TCP's backpressure).
        The pipe is held only while bytes flow; with none to be had, the rest is :meth:`_pump`'s."""
        hub = gevent.get_hub()
        src_fd, dst_fd = src.fileno(), dst.fileno()
        readable, writable = hub.loop.io(src_fd, 1), hub.loop.io(dst_fd, 2)
        pipe, moved, budget = SplicePipe(self.read_size), 0, self.yield_bytes
        try:
            while True:
                try:
                    n = pipe.fill(src_fd, lambda: hub.wait(readable))
                except NoPipe:
                    return moved + self._pump(src, dst)
                if not n:
                    dst.shutdown(socket.SHUT_WR)       # FIN passed on, after every byte
                    return moved
                pipe.drain(n, dst_fd, lambda: hub.wait(writable))
                moved += n
                budget -= n
                if budget <= 0:
                    budget = self.yield_bytes
                    gevent.sleep(0)
        except OSError:                          # a reset: end both directions
            _cut(src, dst)
            return moved
        finally:
            pipe.close()
            readable.close()
            writable.close()

    def _crashed(self, greenlet):
        logger.error("session greenlet crashed", exc_info=greenlet.exc_info)

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self, status=0):
        if not self.done.ready():
            logger.info("stopping")
            self.done.set(status)

    def run(self):
        def keeper():
            try:
                self._keep_control()
            except Fatal as exc:
                logger.error("%s", exc)
                self.done.set(exc.status)
            except Exception:
                logger.exception("control link greenlet crashed")
                self.done.set(1)
        g = gevent.spawn(keeper)
        status = self.done.get()
        g.kill()
        if self.control is not None:
            self.control.close()
        logger.info("stopped: %d sessions opened", self.opened)
        return status


def _cut(*socks):
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
