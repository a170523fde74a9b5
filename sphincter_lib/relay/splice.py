"""One session of a session room: a client's WebSocket spliced to its data link (issue 20).

Two greenlets, one per direction, each a bounded pump with TCP's backpressure: the
service's bytes (the data link) go to the client as binary messages, read only once the
previous chunk was written (a slow client slows only its own service connection); the
client's messages, binary or text, go to the service as their bytes, the next read only
once the previous message was written. Both yield after :attr:`Splice.yield_bytes`. Where both
sockets are plain TCP (Linux, Python 3.10+) the service's bytes are not copied into Python: they
go through a pipe with ``os.splice``, each read after its binary message header.

Ends: the service closes (EOF on the data link) → every byte, then close 1000 ``service
closed``; the client closes → every byte of its messages, then FIN on the data link (the
agent passes it on to the service), and what the service still sends is read and dropped
until its EOF (at most ``close_timeout``), so that no reset can eat bytes in flight.

Keepalive: every ``ping_interval`` (``--ping-interval``) in which nothing went to the client, a
ping, so that a proxy's idle timeout (nginx's ``proxy_read_timeout``) does not cut a quiet
session (a VNC desktop where nothing changes). Browsers answer pings themselves. An unanswered
ping ends nothing: a client held back by TCP's backpressure may rightly not answer for long.
"""

import logging
import os
import socket
import time

import gevent
import gevent.lock

from ..closecodes import CloseCode
from ..logformat import log_crash
from ..proto import frames
from ..proto.wssession import OPEN, ServerSession
from ..tcp import SPLICE, NoPipe, SplicePipe, plain

logger = logging.getLogger("sphincter.relay.tunnel")


class Splice:
    """``conn`` (a ``wsconn.ServerConnection``) ⇄ ``link`` (a ``tunnel.DataLink``)."""

    #: bytes read from the data link at once (one binary message each)
    read_size = 128 * 1024
    #: bytes read from the client's socket at once (frames are parsed from them)
    client_read_size = 128 * 1024
    #: bytes moved by one pump before it yields to the event loop
    yield_bytes = 128 * 1024
    #: the service's bytes go to the client with ``os.splice`` (a frame header, then the payload
    #: from a pipe: never copied into Python) when both sockets are plain TCP; else recv + send
    zero_copy = True

    def __init__(self, conn, link, max_message_bytes=1 << 20, close_timeout=5.0, ping_interval=0):
        self.conn, self.link, self.sock = conn, link, link.sock
        self.ping_interval = ping_interval
        self.ws = ServerSession(max_message_bytes=max_message_bytes)
        self.close_timeout = close_timeout
        self._writing = gevent.lock.Semaphore()
        self.to_client = self.from_client = 0
        self.how = "?"
        self._close = (CloseCode.NORMAL, "service closed")

    def stop(self, code, reason):
        """End the session from outside (shutdown): the client gets what was read, then
        ``code``; the data link is cut. Must not block."""
        self._close = (code, reason)
        self._set_how(reason)
        _cut(self.sock)

    def run(self):
        """Splice until both directions are done; returns how it ended (for the log line)."""
        conn = self.conn
        first = []
        conn.start_reading(first.append)      # bytes the handshake's reader holds, then a plain reader
        conn.stop_reading()
        up = gevent.spawn(self._client_to_service, b"".join(first))
        up.link_exception(log_crash(logger, "session client reader"))
        timer = None
        if self.ping_interval:                # a loop timer, not a greenlet, while nothing is due
            timer = gevent.get_hub().loop.timer(self.ping_interval, self.ping_interval)
            timer.start(self._keepalive, [self.to_client])
        try:
            self._send(self.link.rest)
            self._service_to_client(up)
        finally:
            if timer is not None:
                timer.close()
            up.join(self.close_timeout)
            up.kill(block=False)
            conn.close()
        return self.how

    def _send(self, data):
        """Service bytes to the client (one binary message); dropped once the session is closing."""
        if not data:
            return
        with self._writing:
            if self.ws.state is OPEN:
                self.conn.send_frame(frames.encode_message(data, False))
                self.to_client += len(data)

    def _keepalive(self, sent):
        """(In the event loop.) A ping when nothing went to the client since the last tick."""
        quiet, sent[0] = self.to_client == sent[0], self.to_client
        if quiet and self.ws.state is OPEN and not self._writing.locked():
            self.ws.send_ping(time.monotonic())
            gevent.spawn(self._flush_quietly)

    def _flush_quietly(self):
        try:
            self._flush()
        except OSError:
            pass                              # the session's own pumps see the broken socket

    def _flush(self):
        if self.ws.pending:
            with self._writing:
                self.conn.sendall(self.ws.data_to_send())

    def _service_to_client(self, up):
        try:
            conn = self.conn                 # (wsconn's attributes read defensively: it is being reworked)
            if self.zero_copy and SPLICE is not None and not getattr(conn, "tls", True) \
                    and not getattr(conn, "unsent", True) and plain(self.sock) \
                    and plain(getattr(conn, "socket", None)):
                self._down_spliced()
            else:
                self._down_copied()
        except OSError as exc:
            if self.how == "?":
                self.how = "data link broke (%s)" % (exc.strerror or exc)
        if self.how == "?":
            self.how = "service closed"
        try:
            with self._writing:
                self.ws.send_close(*self._close)   # no-op once the client closed
            self._flush()
        except OSError:
            pass
        up.join(self.close_timeout)          # the client's answer to our close

    def _down_copied(self):
        recv, budget = self.sock.recv, self.yield_bytes
        while True:
            data = recv(self.read_size)
            if not data:
                return
            self._send(data)
            budget -= len(data)
            if budget <= 0:
                budget = self.yield_bytes
                gevent.sleep(0)

    def _down_spliced(self):
        """What the data link brings, up to ``read_size`` at a time, into a pipe (``os.splice``),
        then a binary message's header and the pipe's bytes to the client: one message per read,
        the next read only once it was written (TCP's backpressure, as :meth:`_down_copied`).
        The pipe is held only while bytes flow; with none to be had, the rest is copied."""
        hub = gevent.get_hub()
        src, dst = self.sock.fileno(), self.conn.socket.fileno()
        readable, writable = hub.loop.io(src, 1), hub.loop.io(dst, 2)
        pipe, budget = SplicePipe(self.read_size), self.yield_bytes
        try:
            while True:
                try:
                    n = pipe.fill(src, lambda: hub.wait(readable))
                except NoPipe:                   # no file descriptor for a pipe: copy instead
                    return self._down_copied()
                if not n:
                    return
                self._send_spliced(pipe, n, dst, lambda: hub.wait(writable))
                budget -= n
                if budget <= 0:
                    budget = self.yield_bytes
                    gevent.sleep(0)
        finally:
            pipe.close()
            readable.close()
            writable.close()

    def _send_spliced(self, pipe, n, dst, wait_writable):
        """The ``n`` bytes in ``pipe`` to the client as one binary message (dropped once closing)."""
        with self._writing:
            if self.ws.state is not OPEN:
                while n:
                    n -= len(os.read(pipe.r, n))
                return
            self.conn.socket.sendall(frames.message_header(n), socket.MSG_MORE)
            pipe.drain(n, dst, wait_writable)
            self.to_client += n

    def _client_to_service(self, first):
        ws, sock = self.ws, self.sock
        recv, size = self.conn.socket.recv, self.client_read_size   # the handshake's buffer is `first`
        budget = self.yield_bytes
        data = first
        try:
            while True:
                if not data:
                    try:
                        data = recv(size)
                    except OSError:
                        data = b""
                    if not data:
                        ws.receive_eof()
                        self._set_how("client gone")
                        break
                messages = []
                ws.receive_data(data, lambda opcode, payload: messages.append(payload))
                data = b""
                if messages:                 # the messages of one read: one write (fewer wakeups)
                    payload = messages[0] if len(messages) == 1 else b"".join(messages)
                    sock.sendall(payload)
                    self.from_client += len(payload)
                    budget -= len(payload)
                self._flush()
                if ws.state is not OPEN:
                    self._set_how("client error %s" % ws.close_code if ws.failed
                                  else "client closed (%s)" % ws.close_code)
                    break
                if budget <= 0:
                    budget = self.yield_bytes
                    gevent.sleep(0)
        except OSError as exc:
            self._set_how("broke (%s)" % (exc.strerror or exc))
        try:
            self._flush()
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)    # FIN to the service, after every byte
        except OSError:
            pass
        # drain what the service still sends (dropped), at most close_timeout, then cut it
        gevent.spawn_later(self.close_timeout, _cut, sock).link_exception(log_crash(logger, "cut"))

    def _set_how(self, how):
        if self.how == "?":
            self.how = how


def _cut(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def session_log(sroom, sid, peer, splice, started, how):
    """The one INFO line of a session."""
    logger.info("session %s.%s of %s ended: %s; bytes to client=%d from client=%d duration=%.3fs",
                sroom.code, sid[:6], peer, how,
                splice.to_client if splice else 0, splice.from_client if splice else 0,
                time.monotonic() - started)
