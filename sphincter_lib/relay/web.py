"""The HTTP side: a WSGI app with ``/ws`` (subscribers), ``/healthz``, and a route table.

A subscriber :class:`Session` is one greenlet, its writer (it drains the
room's backlog from the subscriber's cursor and writes what the protocol
session queued), plus an I/O watcher that feeds what the client sends to the
sans-IO :class:`~sphincter_lib.proto.wssession.ServerSession` from the event loop.
While the writer sleeps, the event loop writes new frames itself with
non-blocking sends (:meth:`Session._direct`); it never does while the writer
is awake, so frames never interleave.
"""

import hmac
import json
import logging
import time
from urllib.parse import parse_qs

import gevent
from gevent.event import Event
from gevent.pool import Group

from .. import __version__
from . import api, metrics, presence, viewer
from ..proto import frames
from ..proto.addresses import client_address, is_local_client, is_trusted, peer_name
from ..closecodes import CloseCode
from ..errors import RelayUnavailable, RoomFullError, RoomNotFound, ShuttingDown
from ..logformat import log_crash
from .security import ConnectionCaps, OriginPolicy, RateLimiter
from .ws import close_blocking
from ..proto.wssession import CLOSING, OPEN, PING_TIMEOUT, ServerSession

logger = logging.getLogger("sphincter.relay.web")


class Keepalive:
    """One greenlet pings every connection every ``interval`` s; drops those silent for ``timeout`` s."""

    def __init__(self, interval, timeout, clock=time.monotonic):
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.sessions = set()
        self._greenlet = None

    def start(self):
        if self.interval > 0 and self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
            self._greenlet.link_exception(log_crash(logger, "keepalive"))

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self):
        tick = max(0.05, min(5.0, self.interval / 2, self.timeout / 2))
        while True:
            gevent.sleep(tick)
            self.sweep()

    def sweep(self):
        now = self.clock()
        for s in list(self.sessions):
            ws = s.ws
            if ws.ping_overdue(now, self.timeout):
                logger.debug("subscriber %s: no pong in %.1fs, dropping", s.peer, self.timeout)
                ws.fail(*PING_TIMEOUT)
                s.sub.kick(*PING_TIMEOUT)
                self.sessions.discard(s)
            elif ws.ping_due(now, self.interval):
                ws.send_ping(now)
                s.sub.wake()


class Session:
    """One subscriber connection: a room cursor, a protocol session, one greenlet.

    The calling (handler) greenlet is the writer: it drains the room's backlog
    from the subscriber's cursor and writes the frames the protocol session
    :attr:`ws` queued (pongs, pings, the close frame). Incoming bytes go to
    :attr:`ws` from the event loop (:meth:`_on_data`), without a greenlet of
    their own, so an idle subscriber costs one parked greenlet and one I/O
    watcher. Who closes: the room (``sub.kick``: too slow; ``close_after_drain``:
    source gone, shutdown), the protocol session (the client's close is echoed,
    a protocol error, keepalive) — each decision reaches the other side, and
    the first close frame queued is the one sent.
    """

    #: most bytes written to one subscriber per write (small frames are joined up to this;
    #: a frame this big or bigger goes alone, uncopied)
    batch_bytes = frames.LARGE_PAYLOAD
    #: most bytes written to one subscriber before its writer yields to the event loop (a
    #: socket that stays writable never blocks, so a fast reader would otherwise hold the loop);
    #: also the most one direct write from the event loop sends before handing over to the writer
    yield_bytes = 4 * frames.LARGE_PAYLOAD

    __slots__ = ("conn", "sub", "peer", "app", "ws", "_peer_closed", "writer")

    def __init__(self, app, conn, sub, peer, writer=False):
        self.app, self.conn, self.sub, self.peer = app, conn, sub, peer
        #: True: a writer (it presented the room's write key): its messages go to the source
        self.writer = writer
        self.ws = ServerSession(max_message_bytes=app.settings.client_message_limit(writer),
                                keep_data=writer,         # other subscribers' messages are discarded
                                now=app.keepalive.clock())
        self._peer_closed = None        # an Event while the writer waits for the client's close

    def run(self):
        sub, conn = self.sub, self.conn
        sub.attach(direct=None if conn.tls else self._direct, interrupt=self._interrupt)
        keepalive = self.app.keepalive
        keepalive.sessions.add(self)
        try:
            conn.start_reading(self._on_data)
            self._write()
        finally:
            keepalive.sessions.discard(self)
            sub.leave()
            conn.close()

    def _interrupt(self):
        """Kicked (from anywhere; must not block): the close frame is queued at once. A
        write in progress may finish (then the close frame goes out) for at most
        ``close_timeout`` seconds, else the connection is dropped."""
        sub = self.sub
        self.ws.send_close(sub.close_code, sub.close_reason)   # no-op if one is queued already
        if self.conn.writing:
            timer = gevent.get_hub().loop.timer(self.app.settings.close_timeout)
            timer.start(self._drop)

    def _drop(self):
        self.conn.close()
        self._wake_closer()

    def _wake_closer(self):
        if self._peer_closed is not None:
            self._peer_closed.set()

    def _direct(self):
        """New frames while the writer sleeps (called from the event loop, must not block).

        Sends them with non-blocking sends: True once all went (the writer
        stays asleep), False to wake the writer — for a large frame, a close,
        queued control frames, or a send that would block. A partial send's
        remainder is handed to ``conn.defer``: the writer's next write sends
        it before anything else, so the byte stream stays in order.
        """
        conn, sub = self.conn, self.sub
        if conn.writing or conn.closed or conn.unsent or self.ws.pending or sub.closing:
            return False                   # (checked before take(): the writer may hold one)
        send, take, batch = conn.send_now, sub.take, self.batch_bytes
        budget = self.yield_bytes
        while True:                        # until caught up, or the kernel takes no more
            if budget <= 0:
                return False               # much to send: the writer goes on, yielding as it goes
            data = take(batch)
            if data is None:
                return True
            if data.__class__ is tuple:
                return False
            budget -= len(data)
            try:
                sent = send(data)
            except OSError:                # BlockingIOError included: the writer retries
                return False
            if not sent:
                return False
            sub.commit()
            if sent < len(data):
                conn.defer(data[sent:])
                return False

    def _on_data(self, data):
        """Incoming bytes (from the event loop: must not block). ``b""``: the peer is gone."""
        ws, sub = self.ws, self.sub
        if not data:                       # gone without a close frame: just drop it
            ws.receive_eof()
            self._drop()
            sub.kick(None, "")
            return
        was_open, was_failed = ws.state is OPEN, ws.failed
        ws.receive_data(data, self._on_message if self.writer else None)
        if ws.state is OPEN:
            if ws.pending:
                sub.wake()                 # a pong to send
            return
        if ws.state is CLOSING:            # our close is queued or out, the client's is still to come
            return
        self.conn.stop_reading()           # the client's close came, or it broke the protocol
        if ws.failed and not was_failed:
            logger.debug("subscriber %s: protocol error, close %s %s", self.peer, ws.close_code, ws.close_reason)
        self._wake_closer()
        if was_open:
            sub.kick(ws.close_code, ws.close_reason)     # the writer sends the close frame now

    def _on_message(self, opcode, payload):
        """A writer's message (from the event loop): to the room's source, whole. When the queue
        toward the source is full, stop reading this connection until it has room again."""
        if self.app.settings.framing == "lines":
            payload += b"\n"
        room = self.sub.room
        if not room.write(payload) and self.conn.reading:
            self.conn.stop_reading()
            self.app.stats.writer_pauses += 1
            room.outbox.when_writable(self._resume_reading)

    def _resume_reading(self):
        if self.ws.state is OPEN and not self.conn.closed and not self.conn.reading:
            self.conn.start_reading(self._on_data)

    def _write(self):
        conn, sub, ws = self.conn, self.sub, self.ws
        batch, budget = self.batch_bytes, self.yield_bytes
        try:
            while True:
                if sub.closing and (sub.close_now or sub.caught_up()):
                    break
                if conn.unsent or ws.pending:
                    conn.sendall(ws.data_to_send())
                    continue               # (that write may have blocked: check for a close again)
                data = sub.take(batch)
                if data is None:
                    budget = self.yield_bytes
                    sub.wait()
                    continue
                conn.send_frame(data)
                sub.commit()
                budget -= len(data) if data.__class__ is not tuple else len(data[1])
                if budget <= 0:
                    budget = self.yield_bytes
                    gevent.sleep(0)
            if not conn.closed:
                self._close()
        except OSError as exc:
            logger.debug("subscriber %s: write failed: %s", self.peer, exc)
        finally:
            conn.close()

    def _close(self):
        """The closing handshake, within ``close_timeout``: write what is queued and the
        close frame; if ours went first, wait for the client's."""
        conn, sub, ws = self.conn, self.sub, self.ws
        with gevent.Timeout(self.app.settings.close_timeout, False):
            ws.send_close(sub.close_code, sub.close_reason)     # no-op if one is queued already
            conn.sendall(ws.data_to_send())
            if ws.close_sent and ws.close_code is not None:
                self.app.stats.close_codes[ws.close_code] += 1
            if ws.state is CLOSING:
                self._peer_closed = Event()
                self._peer_closed.wait()


class WebApp:
    """WSGI application: routes by exact path; ``routes`` may be extended by other modules."""

    def __init__(self, registry, settings, clock=time.time):
        self.registry = registry
        self.stats = registry.stats
        self.settings = settings
        self.clock = clock
        self.keepalive = Keepalive(settings.ping_interval, settings.ping_timeout)
        self.connections = 0          # upgraded connections still open
        self.sessions = Group()       # subscriber sessions detached from their HTTP handler
        self.routes = {"/ws": self.ws, "/healthz": self.healthz}
        self.routes.update(viewer.routes())
        self.routes.update(metrics.routes(registry, connections=lambda: self.connections))
        self.routes.update(api.routes(registry, settings.admin_token, client=self.client))
        self.routes.update(presence.routes(registry, self.precheck, self._unknown_room,
                                           settings.max_presence_waits))
        self.origins = OriginPolicy(settings.allowed_origins)
        self.ip_caps = ConnectionCaps(settings.max_subscribers_per_ip)
        self.unknown_rooms = RateLimiter(settings.unknown_room_rate, settings.unknown_room_burst)
        self._warned_unforwarded = False
        self._noted_local = False

    def client(self, environ):
        """The client's address (see ``addresses.client_address``): a loopback peer that sends
        no forwarding header is its own client; None when another trusted proxy did not say
        who its client is: then no per-address limit applies (it would hold every viewer
        behind the proxy to one budget), and a warning says so, once."""
        ip = client_address(environ, self.settings.trusted_proxies)
        if ip is None and not self._warned_unforwarded:
            self._warned_unforwarded = True
            logger.warning("trusted proxy %s forwarded no usable X-Forwarded-For or X-Real-IP: "
                           "per-address limits are off for its clients; make it forward the client "
                           "address (nginx: proxy_set_header X-Real-IP $remote_addr;)",
                           environ.get("REMOTE_ADDR"))
        return ip

    def _note_local_refused(self, environ, ip):
        """Once, when a per-address limit first refuses a trusted loopback peer counted as its
        own client: if it is in fact a proxy that forwards nothing, every viewer shares its budget.
        INFO, not WARNING: it may as well be a browser on this host that reached the limit."""
        remote = environ.get("REMOTE_ADDR", "")
        if self._noted_local or not is_local_client(environ) \
                or not is_trusted(remote, self.settings.trusted_proxies):
            return
        self._noted_local = True
        logger.info("per-address limit reached by %s, a local client (no X-Forwarded-For or "
                    "X-Real-IP): if a proxy on this host serves your viewers, they all count as "
                    "this one address; make it forward the client address "
                    "(nginx: proxy_set_header X-Real-IP $remote_addr;)", ip)

    def precheck(self, environ):
        """Called by ``ws.Handler`` before upgrading: (status, body, headers) to refuse, else None.

        An address that used up its unknown-room budget is refused for *every*
        room until it earns a token back, so a 429 says nothing about whether a
        code exists."""
        ip = self.client(environ)
        if self.ip_caps.full(ip):
            self.stats.rejected["subscriber", "too_many_connections"] += 1
            refusal = ("429 Too Many Requests", "too many connections from your address\n",
                       [("Retry-After", "10")])
        elif self.unknown_rooms.blocked(ip):
            self.stats.rejected["subscriber", "rate_limited"] += 1
            wait = max(1, int(round(1.0 / self.unknown_rooms.rate)))
            refusal = ("429 Too Many Requests", "too many unknown-room attempts, slow down\n",
                       [("Retry-After", str(wait))])
        else:
            return None
        self._note_local_refused(environ, ip)
        return refusal

    def _unknown_room(self, environ):
        """Count an unknown-room attempt against the client's address."""
        self.unknown_rooms.allow(self.client(environ))

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        handler = self.routes.get(path) or self.routes.get(path.rsplit("/", 1)[0] + "/*")
        if handler is None:
            return text_response(start_response, "404 Not Found", "not found\n")
        return handler(environ, start_response)

    def healthz(self, environ, start_response):
        registry = self.registry
        info = {
            "status": "ok" if not registry.shutting_down else "stopping",
            "version": __version__,
            "rooms": len(registry),
            "subscribers": registry.subscriber_count,
            "uptime_seconds": round(self.clock() - self.stats.started_at, 3),
        }
        status = "200 OK"
        if registry.node is not None:           # Redis mode: which node answered, and Redis
            info["node"] = registry.node
            info["redis"] = registry.redis_state
            if registry.redis_state != "ok" and not registry.shutting_down:
                info["status"] = "degraded"
                status = "503 Service Unavailable"
        body = json.dumps(info).encode()
        start_response(status, [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    def ws(self, environ, start_response):
        conn = environ.get("wsgi.websocket")
        if conn is None:
            return text_response(start_response, "400 Bad Request",
                                 "this endpoint speaks WebSocket: GET /ws?room=CODE with an Upgrade\n")
        self.connections += 1
        ip = self.client(environ)
        slot = self.ip_caps.acquire(ip, force=True)     # per-IP count (checked in precheck)
        session = None
        try:
            session = self._subscriber(environ, conn, ip)
        finally:
            if session is None:
                self.connections -= 1
                self.ip_caps.release(slot)
        if session is None:
            return []
        if conn.detach():
            # the session no longer needs the HTTP handler: run it in a fresh greenlet with a
            # shallow stack, and let the handler (its greenlet, its request state) go
            self.sessions.spawn(self._run, session, slot).link_exception(log_crash(logger, "session"))
        else:
            self._run(session, slot)
        return []

    def _subscriber(self, environ, conn, ip):
        """A Session for this connection, or None after refusing it with a close code."""
        peer = peer_name(environ, ip)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        code = (query.get("room") or [""])[0]
        if not self.origins.allowed(environ.get("HTTP_ORIGIN")):
            return self._refuse(conn, peer, CloseCode.FORBIDDEN, "origin not allowed", "origin")
        try:
            sub = self.registry.subscribe(code, peer)
        except RoomNotFound:
            self.unknown_rooms.allow(ip)
            return self._refuse(conn, peer, CloseCode.ROOM_NOT_FOUND, "unknown room", "unknown_room")
        except RoomFullError:
            return self._refuse(conn, peer, CloseCode.ROOM_FULL, "room full", "room_full")
        except ShuttingDown:
            return self._refuse(conn, peer, CloseCode.GOING_AWAY, "server shutting down", "shutting_down")
        except RelayUnavailable:
            return self._refuse(conn, peer, CloseCode.TRY_AGAIN_LATER, "relay unavailable", "relay_unavailable")
        key = (query.get("key") or [""])[0]
        if key:
            expected = sub.room.write_key
            if not expected or not hmac.compare_digest(key.encode("utf-8"), expected.encode()):
                sub.leave()
                why = "wrong write key" if expected else "write-back is off"
                return self._refuse(conn, peer, CloseCode.FORBIDDEN, why, "write_key")
        logger.debug("subscriber %s joined room %s%s", peer, sub.room.code, " as a writer" if key else "")
        return Session(self, conn, sub, peer, writer=bool(key))

    def _run(self, session, slot=None):
        try:
            session.run()
        finally:
            self.ip_caps.release(slot)
            self.connections -= 1
            logger.debug("subscriber %s left room %s (close %s)", session.peer, session.sub.room.code,
                         session.sub.close_code)

    def _refuse(self, conn, peer, code, reason, key):
        self.stats.rejected["subscriber", key] += 1
        self.stats.close_codes[code] += 1
        logger.debug("subscriber %s refused: %d %s", peer, code, reason)
        ws = ServerSession(max_message_bytes=self.settings.client_message_limit(False), keep_data=False)
        ws.send_close(code, reason)
        close_blocking(conn, ws, self.settings.close_timeout)     # and wait for the client's close


def text_response(start_response, status, text):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]
