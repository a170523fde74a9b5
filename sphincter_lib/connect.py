"""``sphincter connect``: the source side. Bridges one local service into one room, both ways.

``python sphincter.py connect --relay HOST:PORT --from SPEC [options]``. SPEC is
``tcp:HOST:PORT`` (a local TCP service), ``ws://...``/``wss://...`` (a local
WebSocket service), ``obs://HOST:PORT`` (obs-websocket 5, see :mod:`.obsws`) or
``-`` (stdin to the room, write-back to stdout).

Two sides, each kept open by its own keeper greenlet that reconnects with
capped exponential backoff and jitter: the *relay link* (a source connection:
``AUTH``/``RESUME`` lines, the banner, then data; see docs/PROTOCOL.md) and the
*local service*. Two pumps move bytes: local -> relay (it holds at most one
chunk while the relay is away, so a slow or absent relay stops the reading of
the local service: TCP backpressure) and relay -> local (write-back; dropped,
and counted, while the local service is down). The room survives a relay-link
drop through its ``RESUME`` line. The pure parts (:class:`Backoff`,
:class:`BannerParser`, :class:`LineSplitter`) never touch a socket.
"""

import logging
import random
import signal
import socket
import ssl
import sys
import time

import gevent
import gevent.event

from .errors import SphincterError
from . import wsclient
from .connect_local import Fatal, make_local
from .connect_options import parse

logger = logging.getLogger(__name__)

#: bytes moved by a pump before it lets other greenlets run
YIELD_EVERY = 1 << 20
#: a connection that stayed up this long resets its side's backoff
STABLE_AFTER = 10.0


class RelayRefused(SphincterError):
    """The relay answered ``ERROR <reason>``."""

    def __init__(self, reason):
        SphincterError.__init__(self, "relay said: ERROR %s" % reason)
        self.reason = reason


# --- pure parts ------------------------------------------------------------------

class Backoff:
    """Capped exponential backoff with jitter: ``next()`` is the next delay in seconds."""

    def __init__(self, minimum=0.5, maximum=30.0, rng=None):
        self.minimum, self.maximum = minimum, max(minimum, maximum)
        self.rng = rng or random.Random()
        self.failures = 0

    def next(self):
        ceiling = min(self.maximum, self.minimum * (2 ** min(self.failures, 30)))
        self.failures += 1
        return ceiling * self.rng.uniform(0.5, 1.0)

    def reset(self):
        self.failures = 0


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
        self.opened_at = time.monotonic()

    @classmethod
    def open(cls, opts, resume=None):
        host, port = opts.relay
        sock = socket.create_connection((host, port), timeout=opts.connect_timeout)
        try:
            _keepalive(sock)
            if opts.tls:
                ctx = ssl.create_default_context(cafile=opts.tls_ca or None)
                sock = ctx.wrap_socket(sock, server_hostname=opts.tls_server_name or host)
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
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _keepalive(sock, idle=20, interval=5, probes=4):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    except (OSError, AttributeError):
        pass


# --- the bridge --------------------------------------------------------------------

class RetryNow(SphincterError):
    """Open again at once (the relay forgot our room: ask for a new one)."""


def _one_line(exc):
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0] if text.strip() else exc.__class__.__name__


class Side:
    """Keeps one connection open, reconnecting with backoff; pumps :meth:`wait` for it."""

    def __init__(self, name, opener, backoff, on_up=None):
        self.name, self.opener, self.backoff, self.on_up = name, opener, backoff, on_up
        self.conn = None
        self.up = gevent.event.Event()
        self._lost = gevent.event.Event()
        self.reason = ""
        self.state = "connecting"

    def wait(self):
        while True:
            self.up.wait()
            conn = self.conn
            if conn is not None:
                return conn

    def lose(self, conn, reason):
        """``conn`` is broken (only the current connection counts)."""
        if conn is not None and conn is self.conn:
            self.conn = None
            self.up.clear()
            self.reason = reason
            self._lost.set()

    def run(self):
        while True:
            try:
                conn = self.opener()
            except RetryNow as exc:
                logger.warning("%s: %s", self.name, exc)
                continue
            except (OSError, SphincterError, ssl.CertificateError) as exc:   # the latter: Python 3.6
                if isinstance(exc, Fatal):
                    raise
                delay = self.backoff.next()
                self.state = "retrying in %.1f s" % delay
                logger.warning("%s: %s; retrying in %.1f s", self.name, _one_line(exc), delay)
                gevent.sleep(delay)
                continue
            opened = time.monotonic()
            self._lost.clear()
            self.conn = conn
            self.state = "connected"
            if self.on_up is not None:
                self.on_up(conn)
            else:
                logger.info("%s connected", self.name)
            self.up.set()
            self._lost.wait()
            conn.close()
            if time.monotonic() - opened >= STABLE_AFTER:
                self.backoff.reset()
            delay = self.backoff.next()
            self.state = "retrying in %.1f s" % delay
            logger.warning("%s lost (%s); reconnecting in %.1f s", self.name, self.reason, delay)
            gevent.sleep(delay)


class Bridge:
    """One local service <-> one room, kept up forever (until stdin ends, a signal, or a
    :class:`Fatal` condition). :meth:`run` returns the exit status."""

    def __init__(self, opts, local_factory, out=None):
        self.opts = opts
        self.out = out or (sys.stderr if opts.spec.kind == "stdio" else sys.stdout)
        self.resume = None
        self.code = self.write_key = None
        self.sent = self.received = self.dropped = 0
        self.done = gevent.event.AsyncResult()
        self.relay = Side("relay %s:%d" % opts.relay, self._open_relay,
                          Backoff(opts.retry_min, opts.retry_max), self._relay_up)
        self.local = Side("local service %s" % opts.spec.text, self._opener(local_factory),
                          Backoff(opts.retry_min, opts.retry_max))
        self._greenlets = []

    @staticmethod
    def _opener(factory):
        def open_local():
            conn = factory()
            conn.open()
            return conn
        return open_local

    # -- the relay side -------------------------------------------------------------
    def _open_relay(self):
        try:
            return RelayLink.open(self.opts, self.resume)
        except RelayRefused as exc:
            if exc.reason == "cannot resume" and self.resume:
                old, self.resume = self.resume[0], None
                raise RetryNow("room %s is gone (its grace period ended?); opening a new room" % old)
            if exc.reason == "unauthorized":
                raise Fatal("the relay refused the token (ERROR unauthorized): check --token")
            raise

    def _relay_up(self, link):
        if self.code is not None and link.code != self.code:
            logger.warning("the room code changed from %s to %s: subscribers must use the new code",
                           self.code, link.code)
        if link.code != self.code:
            self._announce("ROOM %s" % link.code)
        if link.write_key and link.write_key != self.write_key:
            self._announce("WRITE %s" % link.write_key)
        self.code, self.write_key = link.code, link.write_key
        if link.resume:
            self.resume = link.resume
        elif not self.opts.token:
            logger.warning("the relay has no grace period (--room-grace 0): after a reconnect "
                           "the room code will change")
        logger.info("relay connected: room %s%s", link.code, " (write-back on)" if link.write_key else "")

    def _announce(self, line):
        print(line, file=self.out, flush=True)

    # -- pumps ------------------------------------------------------------------------
    def _pump_up(self):
        """Local service -> relay: one chunk in hand at most."""
        moved = 0
        while True:
            local = self.local.wait()
            data = local.read()
            if not data:
                if local.final:
                    logger.info("end of input: stopping")
                    self.done.set(0)
                    return
                self.local.lose(local, getattr(local, "closed_by", None) or "connection closed")
                continue
            while True:
                link = self.relay.wait()
                try:
                    link.send(data)
                    break
                except OSError as exc:
                    self.relay.lose(link, "write failed: %s" % _one_line(exc))
                    logger.warning("%d bytes may be lost with the relay link", len(data))
                    data = None
                    break
            if data is None:
                continue
            self.sent += len(data)
            moved += len(data)
            if moved >= YIELD_EVERY:
                moved = 0
                gevent.sleep(0)

    def _pump_down(self):
        """Relay -> local service (write-back), and the relay's ERROR lines."""
        moved = 0
        while True:
            link = self.relay.wait()
            for event in link.read():
                kind = event[0]
                if kind == "data":
                    moved += self._write_back(event[1])
                elif kind == "eof":
                    self.relay.lose(link, "connection closed")
                elif kind == "error":
                    if event[1] == "replaced by a newer source":
                        raise Fatal("another source took over room %s (ERROR replaced by a newer "
                                    "source): is a second connect running?" % self.code)
                    self.relay.lose(link, "ERROR %s" % event[1])
                elif kind == "line":
                    logger.warning("relay sent an unexpected line: %r", event[1][:80])
            if moved >= YIELD_EVERY:
                moved = 0
                gevent.sleep(0)

    def _write_back(self, data):
        local = self.local.conn
        if local is None:
            if not self.dropped:
                logger.warning("local service down: dropping write-back data")
            self.dropped += len(data)
            return 0
        try:
            local.write(data)
        except (OSError, wsclient.ConnectionClosed) as exc:
            self.local.lose(local, "write failed: %s" % _one_line(exc))
            self.dropped += len(data)
            return 0
        self.received += len(data)
        return len(data)

    def _status(self):
        while True:
            gevent.sleep(self.opts.stats_interval)
            logger.info("status: relay %s (room %s), local %s, sent %d bytes, received %d bytes, "
                        "dropped %d bytes", self.relay.state, self.code, self.local.state,
                        self.sent, self.received, self.dropped)

    # -- lifecycle --------------------------------------------------------------------
    def _guard(self, fn):
        def run():
            try:
                fn()
            except Fatal as exc:
                logger.error("%s", exc)
                self.done.set(exc.status)
            except gevent.GreenletExit:
                pass
            except Exception:
                logger.exception("connect greenlet crashed")
                self.done.set(1)
        return run

    def start(self):
        fns = [self.relay.run, self.local.run, self._pump_up, self._pump_down]
        if self.opts.stats_interval:
            fns.append(self._status)
        self._greenlets = [gevent.spawn(self._guard(fn)) for fn in fns]
        return self

    def stop(self, status=0):
        if not self.done.ready():
            logger.info("stopping")
            self.done.set(status)

    def run(self):
        self.start()
        status = self.done.get()
        gevent.killall(self._greenlets)
        for side in (self.relay, self.local):
            if side.conn is not None:
                side.conn.close()
        logger.info("stopped: sent %d bytes, received %d bytes", self.sent, self.received)
        return status


def main(argv=None, env=None):
    from .cli import setup_logging
    try:
        opts = parse(argv, env)
    except SphincterError as exc:
        print("sphincter connect: error: %s" % exc, file=sys.stderr)
        return 2
    setup_logging(opts.log_level, opts.log_format)
    bridge = Bridge(opts, make_local(opts.spec, opts))
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, bridge.stop, 0)
    return bridge.run()


__all__ = ["Backoff", "BannerParser", "Bridge", "Fatal", "RelayLink", "main"]
