"""Redis mode's I/O: the connections to Redis and what carries commands over them.

The commands themselves are built by those who send them (the model and what it holds, the
rooms, their outboxes), through the clients made here and held by ``cluster/node.py``; every
connection to Redis is made here.

- :func:`control_client`: a redis-py client for every command that needs an
  answer before the caller goes on (open, claim, resume, admit, heartbeat).
- :class:`~sphincter_lib.cluster.pipe.Pipe` (``cluster/pipe.py``, a :class:`Link`): one
  connection carrying, in order and without waiting for replies, what a node *sends*
  (message batches, write-back messages, a source leaving).
- :class:`Listener`: one connection in pub/sub mode for the node's rooms'
  channels; pushes are parsed by ``resp.Parser`` and handed to one callback.

Both connections reconnect by themselves (0.1 s doubling to 2 s) and tell
their owner (``on_down`` / ``on_up``); the Pipe resends what was in flight
(receivers drop duplicates by sequence number).
"""

import logging
import socket
import ssl

try:
    from urllib.parse import unquote, urlsplit
except ImportError:                                   # pragma: no cover
    raise

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from ..proto import resp

logger = logging.getLogger("sphincter.cluster.link")

__all__ = ["Endpoint", "exchange", "control_client", "Link", "Listener", "redis_errors", "hide_password"]

#: backoff between reconnection attempts (seconds): first, then doubled up to the last
BACKOFF = (0.1, 2.0)


def hide_password(url):
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class Endpoint:
    """Where Redis is: ``--redis-url``, or the primary the sentinels name (``--redis-sentinels``,
    ``cluster.sentinel``: then the URL gives only the scheme, credentials and database)."""

    def __init__(self, url, timeout=2.0, sentinels=None):
        parts = urlsplit(url)
        self.url = url
        self.tls = parts.scheme == "rediss"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        path = (parts.path or "/").strip("/")
        self.db = int(path) if path else 0
        self.timeout = timeout
        #: a :class:`~sphincter_lib.cluster.sentinel.Discovery`, or None (the URL's host)
        self.sentinels = sentinels
        #: longest wait between two connection attempts: shorter behind sentinels, where an
        #: attempt while the primary is down is one question to a sentinel, and a failover
        #: should be followed within a fraction of a second of the promotion
        self.retry_max = BACKOFF[1] if sentinels is None else 0.5

    def __str__(self):
        if self.sentinels is not None:
            return str(self.sentinels)
        return hide_password(self.url)

    def address(self):
        """(host, port) of the Redis to connect to now (the sentinels' primary: OSError if none
        names one)."""
        if self.sentinels is not None:
            return self.sentinels.discover()
        return self.host, self.port

    def connect(self):
        """A connected, authenticated socket (RESP2) to the primary, or OSError."""
        host, port = self.address()
        sock = socket.create_connection((host, port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            hello = []
            if self.password is not None:
                hello.append(resp.command("AUTH", *([self.username] if self.username else []) + [self.password]))
            if self.db:
                hello.append(resp.command("SELECT", self.db))
            if self.sentinels is not None:
                hello.append(resp.command("ROLE"))    # a demoted primary must not be used
            if hello:
                replies = exchange(sock, hello)
                for reply in replies[:-1] if self.sentinels is not None else replies:
                    if isinstance(reply, resp.Error):
                        raise OSError("redis refused: %s" % reply.message)
                if self.sentinels is not None:
                    self.sentinels.check_role(host, port, replies[-1])
            sock.settimeout(None)
            return sock
        except Exception:
            sock.close()
            raise


def exchange(sock, commands):
    """Send pre-encoded ``commands`` on a blocking ``sock`` and read one reply each (OSError
    if the connection closes first)."""
    sock.sendall(b"".join(commands))
    parser, replies = resp.Parser(), []
    while len(replies) < len(commands):
        data = sock.recv(4096)
        if not data:
            raise OSError("connection closed before %d repl%s" % (len(commands), "y" if len(commands) == 1 else "ies"))
        replies.extend(parser.feed(data))
    return replies


def control_client(endpoint, max_connections=64):
    """A redis-py client (greenlet-safe under gevent's monkey-patching) whose pool makes a
    caller wait for a free connection rather than fail: a burst of joins (each one round trip)
    queues up instead of looking like an outage. (With sentinels: ``cluster.sentinel``'s.)"""
    import redis
    pool = redis.BlockingConnectionPool.from_url(
        endpoint.url, max_connections=max_connections, timeout=10.0, socket_timeout=endpoint.timeout,
        socket_connect_timeout=endpoint.timeout, decode_responses=False)
    return redis.Redis(connection_pool=pool)


def redis_errors():
    """The exceptions that mean "Redis cannot be reached now"."""
    import redis
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class Link:
    """A connection that comes back by itself. Subclasses: ``_session(sock)`` until it breaks
    (:class:`Listener` here, :class:`~sphincter_lib.cluster.pipe.Pipe`)."""

    name = "link"

    def __init__(self, endpoint, on_down=None, on_up=None):
        self.endpoint = endpoint
        self.on_down = on_down
        self.on_up = on_up
        self.connected = False
        #: (host, port) of the server of the current connection (None between connections)
        self.address = None
        self._sock = None
        self._greenlet = None
        self._stopping = False

    @property
    def sock(self):
        """The connected socket (None between connections)."""
        return self._sock

    def start(self):
        self._greenlet = gevent.spawn(self._run)
        self._greenlet.link_exception(lambda g: logger.error("redis %s crashed", self.name,
                                                             exc_info=g.exc_info))
        return self

    def drop_unless(self, address):
        """Drop the connection unless it is to ``address`` (host, port): the primary changed (a
        failover); the link reconnects to the new one by itself."""
        sock = self._sock
        if sock is not None and self.address is not None and tuple(self.address) != tuple(address):
            logger.warning("redis %s: connected to %s:%d, not the primary: reconnecting", self.name,
                           self.address[0], self.address[1])
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self._stopping = True
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        if self._sock is not None:
            self._sock.close()

    def _run(self):
        delay = BACKOFF[0]
        while not self._stopping:
            try:
                sock = self.endpoint.connect()
            except OSError as exc:
                logger.debug("redis %s: cannot connect to %s: %s", self.name, self.endpoint, exc)
                gevent.sleep(delay)
                delay = min(delay * 2, self.endpoint.retry_max)
                continue
            delay = BACKOFF[0]
            try:
                self.address = sock.getpeername()[:2]
            except OSError:
                self.address = None
            self._sock = sock
            self.connected = True
            try:
                self._session(sock)
            except (OSError, resp.RespError) as exc:
                if not self._stopping:
                    logger.warning("redis %s: connection to %s lost: %s", self.name, self.endpoint, exc)
            finally:
                self.connected = False
                self._sock = None
                self.address = None
                sock.close()
            if not self._stopping and self.on_down is not None:
                self.on_down(self)
            gevent.sleep(BACKOFF[0])

    def _session(self, sock):
        raise NotImplementedError


_DONE = Event()
_DONE.set()


class Listener(Link):
    """Pub/sub: ``subscribe(channel)`` (returns an Event set once Redis confirmed it),
    ``unsubscribe(channel)``; every message goes to ``on_message(channel, data)``."""

    name = "listener"
    #: bytes of messages handled before yielding to the event loop. Small beside a room's
    #: budget: a node that fell behind (a stall) and reads many batches at once lets its
    #: subscribers take each part before the next is applied, so one that keeps up is never
    #: judged against its budget on a whole burst (``skip``/``cut``). Set from the budget.
    yield_bytes = 32 * 1024

    def __init__(self, endpoint, on_message, on_down=None, on_up=None, sharded=False):
        Link.__init__(self, endpoint, on_down, on_up)
        self.on_message = on_message
        #: sharded pub/sub (Redis Cluster: ``SSUBSCRIBE``, one listener per shard, ``cluster.shards``)
        self.sharded = sharded
        self._sub, self._unsub = (b"SSUBSCRIBE", b"SUNSUBSCRIBE") if sharded else (b"SUBSCRIBE", b"UNSUBSCRIBE")
        self.channels = set()
        self._confirm = {}
        self._send_lock = Semaphore()
        self.received = 0
        self.received_bytes = 0

    def subscribe(self, channel):
        if channel in self.channels:
            return self._confirm.get(channel) or _DONE
        self.channels.add(channel)
        event = self._confirm[channel] = Event()
        self._send(resp.command(self._sub, channel))
        return event

    def unsubscribe(self, channel):
        if channel in self.channels:
            self.channels.discard(channel)
            self._confirm.pop(channel, None)
            self._send(resp.command(self._unsub, channel))

    def _send(self, data):
        sock = self.sock
        if sock is None or not self.connected:
            return                            # sent again with every channel once reconnected
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError:
                pass                          # the reader notices and reconnects

    def _session(self, sock):
        parser = resp.Parser()
        channels = sorted(self.channels)
        for channel in channels:
            self._confirm.setdefault(channel, Event())
        with self._send_lock:
            for i in range(0, len(channels), 512):
                sock.sendall(b"".join(resp.command(self._sub, c) for c in channels[i:i + 512]))
        if self.on_up is not None:
            self.on_up(self)
        budget = self.yield_bytes
        while True:
            data = sock.recv(256 * 1024)
            if not data:
                raise OSError("connection closed by Redis")
            for push in parser.feed(data):
                if push.__class__ is not list or len(push) < 3:
                    continue
                kind = push[0]
                if kind == b"message" or kind == b"smessage":
                    self.received += 1
                    self.received_bytes += len(push[2])
                    budget -= len(push[2])
                    try:
                        self.on_message(push[1].decode(), push[2])
                    except Exception:
                        logger.error("redis listener: message handler failed", exc_info=True)
                elif kind == b"subscribe" or kind == b"ssubscribe":
                    budget -= 64
                    event = self._confirm.pop(push[1].decode(), None)
                    if event is not None:
                        event.set()
                elif kind == b"sunsubscribe" and push[1].decode() in self.channels:
                    # the shard no longer serves that channel's slot (it moved, or the server was
                    # demoted): reconnect to the slot's primary and subscribe everything again
                    raise OSError("redis unsubscribed %s (its slot moved)" % push[1].decode())
                if budget <= 0:
                    budget = self.yield_bytes
                    gevent.sleep(0)               # subscribers take what came before the next part
