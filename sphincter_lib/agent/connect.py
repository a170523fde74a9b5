"""``sphincter connect``: the source side. Bridges one local service into one room, both ways.

``python sphincter.py connect --relay HOST:PORT --from SPEC [options]`` (or ``--relay
wss://HOST/``: every link a WebSocket on the relay's HTTP port, see :func:`.dial.relay_socket`). SPEC is
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
drop through its ``RESUME`` line.

Modules: :mod:`.options` (the options), :mod:`.relay_link` (the relay link and
its sans-IO banner parser), :mod:`.local` (the local services), this one (backoff,
the two sides, the pumps, ``main``).
"""

import logging
import signal
import ssl
import sys
import time

import gevent
import gevent.event

from ..errors import SphincterError
from ..logformat import setup_logging
from . import wsclient
from .backoff import Backoff
from .local import Fatal, make_local
from .options import parse
from .relay_link import RelayLink, RelayRefused

logger = logging.getLogger("sphincter.agent.connect")

#: bytes moved by a pump before it lets other greenlets run
YIELD_EVERY = 1 << 20
#: a connection that stayed up this long resets its side's backoff
STABLE_AFTER = 10.0


# --- the bridge --------------------------------------------------------------------

class RetryNow(SphincterError):
    """Open again at once (the relay forgot our room: ask for a new one)."""


def _one_line(exc):
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0] if text.strip() else exc.__class__.__name__


class Side:
    """Keeps one connection open, reconnecting with backoff; pumps :meth:`wait` for it."""

    def __init__(self, name, opener, backoff, on_up=None, on_demand=False):
        self.name, self.opener, self.backoff, self.on_up = name, opener, backoff, on_up
        self.conn = None
        self.up = gevent.event.Event()
        self._lost = gevent.event.Event()
        #: on_demand: each connection is opened only once :meth:`want` was called
        self.on_demand = on_demand
        self._demand = gevent.event.Event()
        if not on_demand:
            self._demand.set()
        self.reason = ""
        self.state = "connecting"

    def want(self):
        """Open a connection now (for an on-demand side) and wait for it."""
        self._demand.set()
        return self.wait()

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
            if self.on_demand:
                self._demand.clear()
            self.reason = reason
            self._lost.set()

    def run(self):
        while True:
            if not self._demand.is_set():
                self.state = "idle (connects on the next write-back data)"
                self._demand.wait()
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
            if self.on_demand:
                logger.info("%s closed (%s); connecting again on the next write-back data",
                            self.name, self.reason)
            else:
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
        self.finishing = False
        self.done = gevent.event.AsyncResult()
        where = opts.relay_url or "%s:%d" % opts.relay
        self.relay = Side("relay %s" % where, self._open_relay,
                          Backoff(opts.retry_min, opts.retry_max), self._relay_up)
        name = "stdin/stdout" if opts.spec.kind == "stdio" else "local service %s" % opts.spec.text
        self.local = Side(name, self._opener(local_factory),
                          Backoff(opts.retry_min, opts.retry_max),
                          on_demand=opts.local_connect == "on-write")
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
                    return self._finish()
                self.local.lose(local, getattr(local, "closed_by", None) or "connection closed")
                continue
            link = self.relay.wait()
            try:
                link.send(data)
            except OSError as exc:
                self.relay.lose(link, "write failed: %s" % _one_line(exc))
                logger.warning("%d bytes may be lost with the relay link", len(data))
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
                    if self.finishing:
                        self.done.set(0)
                        return
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

    def _finish(self):
        """End of input (stdin): half-close the relay link, so the relay publishes what is in
        flight and closes; write-back keeps arriving until then (bounded by a timeout)."""
        self.finishing = True
        link = self.relay.conn
        logger.info("end of input: closing")
        if link is None or not link.finish():
            self.done.set(0)
            return
        gevent.spawn_later(self.opts.connect_timeout, self.stop, 0)

    def _write_back(self, data):
        local = self.local.conn
        if local is None and self.local.on_demand:
            local = self.local.want()        # holds this chunk (and the relay link) meanwhile
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

    def _keepalive(self):
        """A bare newline after ``--keepalive`` quiet seconds, only between lines (with
        ``lines`` framing the relay publishes nothing for it): a relay with
        ``--source-idle-timeout`` keeps a quiet source."""
        period = self.opts.keepalive
        while True:
            link = self.relay.conn
            wait = period
            if link is not None:
                quiet = time.monotonic() - link.last_send
                if quiet >= period and link.at_line_start:
                    try:
                        link.send(b"\n")
                    except OSError as exc:
                        self.relay.lose(link, "write failed: %s" % _one_line(exc))
                else:
                    wait = max(0.05, period - quiet)
            gevent.sleep(wait)

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
        if self.opts.keepalive:
            fns.append(self._keepalive)
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
    try:
        opts = parse(argv, env)
    except SphincterError as exc:
        print("sphincter connect: error: %s" % exc, file=sys.stderr)
        return 2
    setup_logging(opts.log_level, opts.log_format)
    if opts.proxy is not None:
        logger.info("relay links go through the proxy %s (%s)", opts.proxy.url, opts.proxy_source)
    if opts.sessions:
        from .sessions import SessionAgent
        bridge = SessionAgent(opts)
    else:
        bridge = Bridge(opts, make_local(opts.spec, opts))
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, bridge.stop, 0)
    except (AttributeError, NotImplementedError, ValueError, OSError):
        pass                     # no signal handlers here (Windows): Ctrl-C interrupts run()
    try:
        return bridge.run()
    except KeyboardInterrupt:
        return 0


__all__ = ["Backoff", "Bridge", "Fatal", "main"]
