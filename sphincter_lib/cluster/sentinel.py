"""Redis mode behind Redis Sentinel: where the primary is now (``--redis-sentinels``).

Every new connection to Redis (the pipe, the listener: ``cluster.link``; the redis-py pool's
connections: :func:`control_client`) asks the sentinels for the primary's address first
(:meth:`Discovery.discover`), then checks with ``ROLE`` that the server is a primary, as the
Sentinel client guidelines say; the pure part (answers, asking order) is ``proto.sentinel``. A
failover breaks every connection to the old primary (it died, or Sentinel disconnects its
clients when it demotes it; a ``-READONLY`` answer drops the connection too), the connections
come back to the new one, and the node recovers as after a Redis restart (``cluster.liveness``):
the new primary's state may lack the last writes, and it is rebuilt from the nodes' memory.
"""

import logging
import socket

from ..proto import resp, sentinel
from .link import Link, exchange

logger = logging.getLogger("sphincter.cluster.sentinel")

__all__ = ["Discovery", "SwitchWatcher", "control_client"]


class Discovery:
    """The sentinels of primary ``master``, asked in turn (see the module docstring)."""

    def __init__(self, addresses, master, password=None, timeout=1.0):
        self.sentinels = sentinel.Sentinels(addresses)
        self.master = master
        self.password = password
        self.timeout = timeout
        #: the primary's (host, port) last named (None before the first answer)
        self.primary = None
        #: times the sentinels named another primary than before (failovers seen)
        self.switches = 0
        #: ``fn((host, port))`` called when they name another primary: connections made before
        #: to the old one are dropped (Sentinel disconnects a demoted primary's clients itself;
        #: this covers a role change that did not break them)
        self.on_switch = []

    def __str__(self):
        where = " at %s:%d" % self.primary if self.primary else ""
        return "primary %r%s (sentinels %s)" % (self.master, where, self.sentinels)

    def discover(self):
        """(host, port) of the primary, from the first sentinel that names one; OSError with
        every sentinel's reason otherwise."""
        reasons = []
        for address in self.sentinels:
            try:
                found = sentinel.master_address(self._ask(address))
            except (OSError, resp.RespError, sentinel.SentinelError) as exc:
                reasons.append("%s:%d: %s" % (address[0], address[1], exc))
                continue
            self.sentinels.answered(address)
            self._named(found)
            return found
        raise OSError("no sentinel names primary %r (%s)" % (self.master, "; ".join(reasons)))

    def _ask(self, address):
        commands = [resp.command("AUTH", self.password)] if self.password is not None else []
        commands.append(sentinel.master_query(self.master))
        sock = socket.create_connection(address, timeout=self.timeout)
        try:
            replies = exchange(sock, commands)
        finally:
            sock.close()
        if self.password is not None and isinstance(replies[0], resp.Error):
            raise sentinel.SentinelError("AUTH refused: %s" % replies[0].message)
        return replies[-1]

    def _named(self, address):
        if address != self.primary:
            if self.primary is not None:
                self.switches += 1
                logger.warning("redis primary %r is now %s:%d (was %s:%d)", self.master,
                               address[0], address[1], self.primary[0], self.primary[1])
            else:
                logger.info("redis primary %r is at %s:%d", self.master, address[0], address[1])
            switched = self.primary is not None
            self.primary = address
            for fn in self.on_switch if switched else ():
                try:
                    fn(address)
                except Exception:
                    logger.error("redis: reacting to a new primary failed", exc_info=True)

    def announced(self, address):
        """A sentinel announced that the primary moved to ``address`` (``+switch-master``)."""
        self._named(address)

    def check_role(self, host, port, reply):
        """The answer to ``ROLE`` of the server at (host, port): OSError unless it is a primary
        (a sentinel named a primary that was demoted since: ask again)."""
        role = sentinel.role(reply)
        if role != "master":
            raise OSError("redis at %s:%d is %s, not the primary" % (host, port, repr(role) if role else "no primary"))


class _Sentinels(object):
    """What :class:`SwitchWatcher`'s connection is made to: the first sentinel that answers."""

    tls = False
    retry_max = 2.0

    def __init__(self, discovery):
        self.discovery = discovery

    def __str__(self):
        return "sentinels %s" % self.discovery.sentinels

    def connect(self):
        discovery, reasons = self.discovery, []
        for address in discovery.sentinels:
            try:
                sock = socket.create_connection(address, timeout=discovery.timeout)
            except OSError as exc:
                reasons.append("%s:%d: %s" % (address[0], address[1], exc))
                continue
            try:
                if discovery.password is not None:
                    reply = exchange(sock, [resp.command("AUTH", discovery.password)])[0]
                    if isinstance(reply, resp.Error):
                        raise OSError("AUTH refused: %s" % reply.message)
                sock.settimeout(None)
                return sock
            except (OSError, resp.RespError) as exc:
                sock.close()
                reasons.append("%s:%d: %s" % (address[0], address[1], exc))
        raise OSError("no sentinel answers (%s)" % "; ".join(reasons))


class SwitchWatcher(Link):
    """A pub/sub connection to a sentinel, subscribed to ``+switch-master``: a failover is followed
    the moment the sentinels announce it (every connection leaves the old primary: the
    :class:`Discovery`'s ``on_switch``), not only when a connection breaks or at the next heartbeat
    (which still asks, in case this connection missed it)."""

    name = "sentinel watch"

    def __init__(self, discovery):
        Link.__init__(self, _Sentinels(discovery))
        self.discovery = discovery
        #: ``+switch-master`` announcements for our primary received
        self.announcements = 0

    def _session(self, sock):
        sock.sendall(sentinel.switch_query())
        parser = resp.Parser()
        while True:
            data = sock.recv(4096)
            if not data:
                raise OSError("connection closed by the sentinel")
            for push in parser.feed(data):
                address = sentinel.switched(push, self.discovery.master)
                if address is not None:
                    self.announcements += 1
                    logger.info("redis: the sentinels announce primary %r at %s:%d (+switch-master)",
                                self.discovery.master, address[0], address[1])
                    self.discovery.announced(address)


def control_client(endpoint, max_connections=64):
    """``cluster.link.control_client`` behind sentinels: a redis-py client on a
    BlockingConnectionPool whose connections go to the primary the sentinels name now (checked
    with ``ROLE``); a ``-READONLY`` answer (a demoted primary) drops the connection as a
    connection error, so the caller retries on a fresh one."""
    import redis
    base = redis.SSLConnection if endpoint.tls else redis.Connection
    discovery = endpoint.sentinels

    class PrimaryConnection(base):
        def _connect(self):
            self.host, self.port = discovery.discover()
            return base._connect(self)

        def read_response(self, *args, **kwargs):
            try:
                return base.read_response(self, *args, **kwargs)
            except redis.exceptions.ReadOnlyError:
                self.disconnect()
                raise redis.exceptions.ConnectionError("redis at %s:%s is a replica now" % (self.host, self.port))

    def on_connect(connection):
        connection.on_connect()
        connection.send_command("ROLE")
        try:
            discovery.check_role(connection.host, connection.port, connection.read_response())
        except OSError as exc:
            raise redis.exceptions.ConnectionError(str(exc))

    return redis.Redis(connection_pool=redis.BlockingConnectionPool(
        connection_class=PrimaryConnection, max_connections=max_connections, timeout=10.0,
        host=discovery.primary[0] if discovery.primary else "127.0.0.1", port=6379,
        username=endpoint.username, password=endpoint.password, db=endpoint.db,
        socket_timeout=endpoint.timeout, socket_connect_timeout=endpoint.timeout,
        redis_connect_func=on_connect))
