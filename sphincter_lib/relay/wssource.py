"""Source links over WebSocket: ``/ws?source=1`` on the HTTP port, for agents that only get out on 443.

Inside the WebSocket the link carries exactly the TCP source port's byte stream (docs/PROTOCOL.md,
"Source links over WebSocket"): the agent's binary (or text) messages are its bytes, the relay's
bytes go back as binary messages, an *empty* binary message is the end of one direction (TCP's
FIN: the other direction goes on), and the close frame ends the link. :class:`WsSourceSocket`
gives ``ingest.SourceHandler`` a socket-like object over the upgraded connection (``recv``,
``sendall``, ``shutdown``, ``settimeout``, ``close``, ``do_handshake``), so every source rule —
``AUTH``, ``--handshake-timeout``, ``--max-sources-per-ip`` (with the client address from
``X-Forwarded-For`` when the peer is a ``--trusted-proxies`` proxy), rooms, write-back, session
rooms — applies unchanged. ``--ws-sources off`` (the default) refuses such links with 4403
``source links are off``.

Flow control as over TCP: the connection is read (from the event loop, no greenlet) only while
fewer than :attr:`WsSourceSocket.high_water` bytes wait to be taken; then reading stops and
TCP slows the agent down. Nothing here loops without blocking.
"""

import logging
import socket
import time
from collections import deque
from urllib.parse import parse_qs

import gevent
import gevent.lock
from gevent.event import Event

from ..closecodes import CloseCode
from ..logformat import log_crash
from ..proto import frames
from ..proto.addresses import canonical
from ..proto.wssession import OPEN, ServerSession
from .wsconn import close_blocking

logger = logging.getLogger("sphincter.relay.ingest")     # (the source side: its log lines)

#: the query parameter that marks a source link on ``/ws``
QUERY = "source"
#: the close reason of a source link refused by ``--ws-sources off``
OFF_REASON = "source links are off"


def is_source_link(environ):
    """True when ``/ws`` was asked for a source link (``?source=1``)."""
    query = environ.get("QUERY_STRING", "")
    return QUERY in query and (parse_qs(query).get(QUERY) or ["0"])[0] not in ("", "0")


class WsSourceSocket:
    """The socket a source handler reads and writes, over one upgraded WebSocket connection."""

    #: bytes kept waiting to be taken before the connection is not read any more (TCP backpressure)
    high_water = 256 * 1024
    #: largest message sent to the agent (bigger writes are cut)
    max_send = 64 * 1024

    def __init__(self, conn, max_message_bytes=1 << 20, ping_interval=20.0, close_timeout=5.0,
                 clock=time.monotonic):
        self.conn = conn
        self.ws = ServerSession(max_message_bytes=max_message_bytes, now=clock())
        self.clock = clock
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self._chunks = deque()       # bytes received, not yet taken
        self._held = 0
        self._fin = False            # the agent's end of data (empty message, close, EOF)
        self._fin_sent = False
        self._closed = False
        self._arrived = Event()
        self._writing = gevent.lock.Semaphore()
        self._timeout = None
        self._pinger = None
        conn.start_reading(self._on_data)
        if ping_interval:
            self._pinger = gevent.spawn(self._ping)
            self._pinger.link_exception(log_crash(logger, "source link pinger"))

    # -- reading (the event loop feeds, recv takes) --------------------------------------
    def _on_data(self, data):
        """From the event loop: must not block."""
        if not data:
            self.ws.receive_eof()
            self._fin = True
        elif not self._fin:
            self.ws.receive_data(data, self._on_message)
            if self.ws.state is not OPEN:
                self._fin = True      # the agent's close (or a protocol error): its data is over
        if self._fin or self._held >= self.high_water:
            self.conn.stop_reading()
        self._arrived.set()

    def _on_message(self, opcode, payload):
        if self._fin:
            return
        if not payload and opcode == frames.BINARY:
            self._fin = True          # an empty binary message: the agent's FIN
            return
        self._chunks.append(payload)
        self._held += len(payload)

    def recv(self, size):
        """Up to ``size`` bytes the agent sent; ``b""`` at its end; ``socket.timeout`` after
        the time :meth:`settimeout` set."""
        deadline = None if self._timeout is None else self.clock() + self._timeout
        while not self._chunks:
            self._flush_control()
            if self._fin or self._closed or self.conn.closed:
                return b""
            if not self.conn.reading and not self.conn.closed:
                self.conn.start_reading(self._on_data)
                continue
            self._arrived.clear()
            wait = None if deadline is None else max(0.0, deadline - self.clock())
            if not self._arrived.wait(wait):
                raise socket.timeout("timed out")
        chunk = self._chunks.popleft()
        if len(chunk) > size:                    # the rest stays, as a view (no copy of it)
            view = memoryview(chunk)
            chunk, rest = view[:size], view[size:]
            self._chunks.appendleft(rest)
        self._held -= len(chunk)
        return chunk if chunk.__class__ is bytes else bytes(chunk)

    def settimeout(self, seconds):
        self._timeout = seconds

    def gettimeout(self):
        return self._timeout

    # -- writing ----------------------------------------------------------------------
    def sendall(self, data):
        """``data`` to the agent as binary messages; OSError once the link is closing."""
        view = memoryview(data)
        with self._writing:
            for start in range(0, len(view), self.max_send):
                if self._fin_sent or self.ws.state is not OPEN or self.conn.closed:
                    raise BrokenPipeError(32, "source link closed")
                self._write(frames.encode_message(bytes(view[start:start + self.max_send]), False))
                if start:
                    gevent.sleep(0)
            if self.ws.pending:
                self._write(self.ws.data_to_send())

    def _write(self, frame):
        """One frame, within the socket's timeout (as a TCP source's sendall)."""
        if self._timeout is None:
            self.conn.send_frame(frame)
            return
        with gevent.Timeout(self._timeout, socket.timeout("timed out")):
            self.conn.send_frame(frame)

    def _flush_control(self):
        """Pongs, a close echo: written by the reader when no writer is at work (else after it)."""
        if self.ws.pending and self._writing.acquire(blocking=False):
            try:
                self.conn.sendall(self.ws.data_to_send())
            except OSError:
                pass
            finally:
                self._writing.release()

    def shutdown(self, how):
        """``SHUT_WR``: our FIN (an empty binary message; the agent's data may go on).
        ``SHUT_RD``/``SHUT_RDWR``: end the link now (wakes its reader and writers)."""
        if how == socket.SHUT_WR:
            if not self._fin_sent and self.ws.state is OPEN:
                with self._writing:
                    self._write(frames.encode_message(b"", False))
                self._fin_sent = True
            return
        self._fin = True
        self._arrived.set()
        self.conn.close()

    def do_handshake(self):
        """TLS, if any, was done by the HTTP server (``--source-tls-cert`` is the TCP port's)."""

    def setsockopt(self, *args):
        """TCP options (keepalive) are the HTTP connection's business: pings keep the link."""

    def close(self):
        """Close frame 1000 (unless one went out), wait for the agent's (``close_timeout``), end."""
        if self._closed:
            return
        self._closed = True
        if self._pinger is not None:
            self._pinger.kill(block=False)
        self.conn.stop_reading()
        self._arrived.set()
        self.ws.send_close(CloseCode.NORMAL, "")
        if self._writing.acquire(timeout=self.close_timeout):
            try:
                close_blocking(self.conn, self.ws, self.close_timeout)
            finally:
                self._writing.release()
        else:
            self.conn.close()

    def _ping(self):
        """Keep a quiet link open through proxies (nginx's ``proxy_read_timeout``): a ping while
        no write is under way. Unanswered pings end nothing: an agent may rightly stop reading
        for long (its service is slow: TCP backpressure); a vanished one is noticed as over TCP
        (the writes of these pings fail)."""
        interval = self.ping_interval
        while not self._closed:
            gevent.sleep(interval)
            if self.ws.state is OPEN and not self._writing.locked():
                self.ws.send_ping(self.clock())
                self._flush_control()


def refuse(conn, code, reason, close_timeout=5.0):
    """A source link that is not served: a close frame with ``code`` and ``reason``."""
    ws = ServerSession(keep_data=False)
    ws.send_close(code, reason)
    close_blocking(conn, ws, close_timeout)


def serve(handler, conn, environ, client, settings, origins=None):
    """Run ``handler`` (``ingest.SourceHandler``, None with ``--ws-sources off``) on one source
    link; ``client``: the client's address (``X-Forwarded-For`` from a trusted proxy);
    ``origins``: the ``--allowed-origins`` policy (a page's source link is held to it, as its
    subscribers are; an agent sends no ``Origin``)."""
    remote = environ.get("REMOTE_ADDR", "")
    port = str(environ.get("REMOTE_PORT") or "")
    if client is None:                   # a trusted proxy that did not say: the proxy
        client = canonical(remote) or remote
    forwarded = client != (canonical(remote) or remote)
    address = client if forwarded or not port.isdigit() else (client, int(port))
    if handler is None or not settings.ws_sources:
        logger.info("source link from %s refused: %s", client, OFF_REASON)
        refuse(conn, CloseCode.FORBIDDEN, OFF_REASON, settings.close_timeout)
        return
    if origins is not None and not origins.allowed(environ.get("HTTP_ORIGIN")):
        logger.info("source link from %s refused: origin not allowed", client)
        refuse(conn, CloseCode.FORBIDDEN, "origin not allowed", settings.close_timeout)
        return
    sock = WsSourceSocket(conn, max_message_bytes=max(1 << 20, settings.max_message_bytes),
                          ping_interval=settings.ping_interval, close_timeout=settings.close_timeout)
    try:
        handler(sock, address, forwarded=True)
    finally:
        sock.close()                     # (the handler closes it: once is enough)
