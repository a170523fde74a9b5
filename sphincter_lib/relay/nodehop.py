"""A session's data link that reached the wrong node (Redis mode): forward it, bytes both ways,
to the node holding the session's client (issue 20).

Behind a TCP load balancer (nginx's ``stream``, conf/nginx-cluster-stream.conf) the agent's data
link for a session lands on any node. The session id names the node that drew it
(``proto.sessionsignal``); a node that is not that one opens a plain TCP connection to that
node's source port (its ``--node-address``, from Redis), sends a PROXY v1 header naming the
agent if that node reads PROXY headers (``--source-proxy-protocol``: this node must then be in
its ``--trusted-proxies``), then ``SESSION <SID>`` and what followed it, and copies bytes both
ways until both directions ended: one extra hop, never through Redis. Each direction is read
in bounded chunks and yields to the event loop every :data:`YIELD_EVERY` chunks; TCP's own flow
control paces it (a blocked send stops that direction's reads).
"""

import logging
import socket
import time

import gevent

from ..errors import RelayUnavailable
from ..proto import sessionsignal, sessionwire

logger = logging.getLogger("sphincter.relay.nodehop")

#: bytes read at once in each direction
CHUNK = 64 * 1024
#: chunks copied before a direction yields to the event loop
YIELD_EVERY = 16
#: seconds to connect to the other node
CONNECT_TIMEOUT = 5.0


def forward(cluster, sock, who, sid, rest, connect_timeout=CONNECT_TIMEOUT):
    """Forward the data link ``sock`` (from ``who``; ``rest``: the bytes after its ``SESSION``
    line) of session ``sid`` to the node its id names, until it ends."""
    tag = sessionsignal.sid_tag(sid)
    try:
        found = cluster.node_address(tag)
    except RelayUnavailable:
        found = None
    if found is None:
        logger.info("data link from %s for a session of an unknown node (%s): closed", who, tag)
        return
    host, port, proxy, node = found
    started = time.monotonic()
    try:
        other = socket.create_connection((host, port), timeout=connect_timeout)
    except OSError as exc:
        logger.warning("data link from %s: cannot reach node %s at %s:%d: %s", who, node, host, port,
                       exc.strerror or exc)
        return
    counts = [0, 0]
    try:
        other.settimeout(None)
        other.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = sessionsignal.proxy_line(who.split(" ")[0], (host, port)) if proxy else b""
        other.sendall(head + sessionwire.session_line(sid) + rest)
        back = gevent.spawn(_copy, other, sock, counts, 1)
        back.link_exception(lambda g: logger.error("data link hop crashed", exc_info=g.exc_info))
        _copy(sock, other, counts, 0)
        back.join()
    except OSError as exc:
        logger.info("data link from %s to node %s broke: %s", who, node, exc.strerror or exc)
    finally:
        other.close()
    logger.info("data link from %s forwarded to node %s (%s:%d): bytes up=%d down=%d duration=%.1fs",
                who, node, host, port, counts[0], counts[1], time.monotonic() - started)


def _copy(src, dst, counts, index):
    """``src`` → ``dst`` until ``src`` ends (then ``dst`` is half-closed) or either breaks (then
    both are shut, so the other direction ends too)."""
    chunks = 0
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                _shutdown(dst, socket.SHUT_WR)
                return
            dst.sendall(data)
            counts[index] += len(data)
            chunks += 1
            if chunks % YIELD_EVERY == 0:
                gevent.sleep(0)
    except OSError:
        _shutdown(src, socket.SHUT_RDWR)
        _shutdown(dst, socket.SHUT_RDWR)


def _shutdown(sock, how):
    try:
        sock.shutdown(how)
    except (OSError, AttributeError):   # (AttributeError: a data link that is not a socket)
        pass
