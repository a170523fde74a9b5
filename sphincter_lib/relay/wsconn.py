"""An upgraded WebSocket connection's socket I/O: :class:`ServerConnection`, :func:`close_blocking`.

``ws.Handler`` makes one per upgraded connection and hands it to the
endpoint as ``environ['wsgi.websocket']``; the endpoint drives a sans-IO
:class:`~sphincter_lib.proto.wssession.ServerSession` over it.
:func:`close_blocking` ends one from a greenlet that reads and writes itself.
"""

import _socket
import io
import logging
import socket
import ssl

import gevent

from ..proto import wssession

# the logger of the connection's side, as before this module was split out of ws.py
logger = logging.getLogger("sphincter.relay.ws")

# Stands in for pywsgi's buffered reader once a connection is upgraded, so the
# reader's 8 KiB buffer is freed for every idle subscriber (pywsgi only asks
# whether it is closed, and then ends the request loop).
_SPENT_READER = io.BufferedReader(io.BytesIO(b""))
_SPENT_READER.close()


class ServerConnection:
    """One upgraded connection's socket I/O, for a :class:`~sphincter_lib.proto.wssession.ServerSession`.

    Reading: :meth:`recv` (a greenlet that reads and writes itself: the echo
    endpoint, refusals) or :meth:`start_reading` (bytes delivered from the
    event loop, no greenlet). Writing: :meth:`sendall` and :meth:`send_frame`
    block the calling greenlet, :attr:`writing` is True meanwhile; the event
    loop may also write with one non-blocking :attr:`send_now` while no
    greenlet writes, handing an unsent rest to :meth:`defer`. Whoever writes
    must make sure writes never overlap (``session.Session``: its writer greenlet,
    and direct sends only while that greenlet sleeps). :meth:`close` is the one
    way to end the connection. Protocol state (close frames, pings) is the
    session's, not this object's.
    """

    #: bytes asked of each read (subscribers send little: pongs and closes)
    read_size = 16 * 1024

    # one per subscriber: no __dict__
    __slots__ = ("environ", "socket", "_handler", "_owner", "_rfile", "_pending", "detached", "bare", "tls",
                 "send_now", "unsent", "writing", "closed", "_on_data", "_watcher", "accepted", "_waiting")

    def __init__(self, handler):
        self.environ = handler.environ
        self.socket = handler.socket
        self._handler = handler
        self._owner = handler            # the pywsgi handler, until detach()
        self._rfile = handler.rfile
        self._pending = b""              # bytes taken from the handshake reader at detach()
        self.detached = False
        self.bare = False               # detached onto a bare OS socket (see detach)
        # wss://: gevent's SSLSocket (or the stdlib's) carries an _sslobj
        self.tls = isinstance(self.socket, ssl.SSLSocket) or hasattr(self.socket, "_sslobj")
        #: a non-blocking send on the OS socket (None for TLS), for the event loop's direct writes:
        #: returns the bytes the kernel took, raises BlockingIOError when it takes none
        self.send_now = None if self.tls else self.socket._sock.send
        #: bytes that must go out before anything else (the rest of a partial direct send);
        #: the next sendall() writes them first
        self.unsent = b""
        self.writing = False            # True while a blocking write is in progress
        self.closed = False             # True once close() was called
        self._on_data = None
        self._watcher = None
        self.accepted = False           # the 101 response went out (see accept)
        self._waiting = None            # the watcher a blocked read or write of a bare socket waits on

    def accept(self):
        """Write the handshake's 101 response, once: done by the first read, write or detach."""
        if not self.accepted:
            self.accepted = True
            handler = self._handler if self._handler is not None else self._owner
            if handler is not None:
                handler.write(b"")

    # -- reading ---------------------------------------------------------------------
    def recv(self):
        """Bytes from the peer; ``b""`` at end of stream or on a broken connection.

        Reads the socket directly: a buffered reader would hold a ``read_size``
        buffer for every idle connection while it waits. Bytes the handshake's
        reader already buffered are taken first, without waiting.
        """
        if not self.accepted:
            self.accept()
        if self._rfile is not None:
            data = self._take_buffered()
            if data:
                return data
        try:
            data = self._recv_detached() if self.bare else self.socket.recv(self.read_size)
        except OSError:
            return b""
        if len(data) >= self.read_size:
            gevent.sleep(0)     # more is probably waiting: let other connections run first
        return data

    def _recv_detached(self):
        while True:
            try:
                return self.socket.recv(self.read_size)
            except BlockingIOError:
                self._wait_io(1)

    def _sendall_detached(self, data):
        send = self.socket.send
        while data:
            try:
                sent = send(data)
            except BlockingIOError:
                sent = 0
            if sent:
                data = memoryview(data)[sent:]
            else:
                self._wait_io(2)

    def _wait_io(self, events):
        """Block this greenlet until the bare socket is readable (1) or writable (2);
        :meth:`close` wakes it (the shutdown makes the socket ready), and the socket is
        closed here then."""
        if self.closed:
            raise OSError("connection closed")
        hub = gevent.get_hub()
        watcher = self._waiting = hub.loop.io(self.socket.fileno(), events)
        try:
            hub.wait(watcher)
        finally:
            self._waiting = None
            watcher.close()
            if self.closed:
                self.socket.close()

    def _take_buffered(self):
        rfile, self._rfile = self._rfile, None
        sock = self.socket
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            return rfile.read1(self.read_size)      # buffered bytes, never waits
        except (OSError, ValueError):
            return b""
        finally:
            sock.settimeout(timeout)
            self._release_request(rfile)

    def _release_request(self, rfile):
        """Free what pywsgi keeps per request but an upgraded connection no longer needs.

        Its buffered reader (8 KiB), the parsed headers and the WSGI environ
        would otherwise live as long as every idle subscriber.
        """
        handler, self._handler = self._handler, None
        handler.rfile = _SPENT_READER
        if getattr(handler, "wsgi_input", None) is not None:
            handler.wsgi_input.rfile = _SPENT_READER
        handler.headers = None
        rfile.close()
        self.environ.clear()

    def detach(self, bare=False):
        """Let this connection outlive its WSGI handler; False if it cannot (TLS sockets).

        The socket is duplicated and the handler forgets the original, so
        pywsgi closes only its own descriptor (the connection stays up) and
        neither drains nor writes to it. The handler's greenlet and request
        state can then be freed while the session runs elsewhere; the
        session's :meth:`close` then closes the duplicate. With ``bare`` the
        duplicate is a bare non-blocking OS socket, not a gevent socket (which
        carries two I/O watchers): this object's reads and writes that must
        wait make a watcher for the time they wait (:meth:`_wait_io`), and
        :attr:`socket` is for its owner's non-blocking use only (broadcast
        subscribers, ``session.Session``); without it, :attr:`socket` stays a
        gevent socket (session-room clients use it directly).
        """
        if not self.accepted and not self.closed:
            self.accept()
        handler, sock = self._owner, self.socket
        if handler is None or self.tls or self.closed:
            return False
        if self._rfile is not None:
            self._pending = self._take_buffered() or b""
        if bare:
            raw = sock._sock
            self.socket = _socket.socket(raw.family, raw.type, raw.proto, _socket.dup(raw.fileno()))
            self.socket.setblocking(False)
            self.send_now = self.socket.send
        else:
            self.socket = sock.dup()
            self.send_now = self.socket._sock.send
        self.bare = bare
        self.environ = None              # (cleared with the request already)
        handler.socket = None
        handler.websocket = None
        self._owner = None
        self.detached = True
        return True

    def start_reading(self, on_data):
        """Deliver incoming bytes to ``on_data(data)`` from the event loop, with no greenlet.

        ``on_data`` runs in the hub: it must not block or switch. It gets
        ``b""`` once at end of stream (or when the connection breaks), after
        which reading stops. Bytes already buffered by the handshake reader
        are delivered first (before this returns). Costs one I/O watcher per
        connection instead of a greenlet parked in ``recv`` with its stack.
        """
        if not self.accepted:
            self.accept()
        self._on_data = on_data
        if self._rfile is not None:
            self._pending = self._take_buffered() or b""
        data, self._pending = self._pending, b""
        if data:
            on_data(data)
        if self._on_data is None:          # on_data stopped reading already
            return
        self._watcher = gevent.get_hub().loop.io(self.socket.fileno(), 1)
        self._watcher.start(self._readable)

    def _readable(self):
        sslobj = getattr(self.socket, "_sslobj", None)     # wss://: read through TLS
        try:
            if sslobj is not None:
                data = sslobj.read(self.read_size)         # over the non-blocking OS socket
            else:                                           # the OS socket: non-blocking
                data = (self.socket if self.bare else self.socket._sock).recv(self.read_size)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:                                    # incl. SSLZeroReturnError (TLS EOF)
            data = b""
        on_data = self._on_data
        if not data:
            self.stop_reading()
        if on_data is not None:
            try:
                on_data(data)
            except Exception:
                logger.error("reader callback crashed", exc_info=True)
                self.close()
        if data and sslobj is not None and self._on_data is not None and sslobj.pending():
            # decrypted bytes wait inside TLS, the socket may never be readable again for them
            gevent.get_hub().loop.run_callback(self._readable)

    @property
    def reading(self):
        """True while incoming bytes are delivered to an ``on_data`` callback."""
        return self._on_data is not None

    def stop_reading(self):
        self._on_data = None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()

    # -- writing (one writer at a time) --------------------------------------------------
    def defer(self, rest):
        """Keep ``rest`` (the tail of a partial :attr:`send_now`, bytes or a memoryview of a
        frame's payload) to go out first with the next write."""
        self.unsent = b"".join((self.unsent, rest)) if self.unsent else rest

    def send_frame_now(self, frame):
        """One non-blocking ``sendmsg`` of a ``(header, payload)`` pair, for the event loop's direct
        writes on a connection detached bare: the bytes the kernel took (BlockingIOError: none)."""
        return self.socket.sendmsg(frame)

    def sendall(self, data):
        """Write ``unsent`` and ``data``; blocks the calling greenlet. Raises OSError if gone."""
        if not self.accepted:
            self.accept()
        if self.unsent:
            data, self.unsent = b"".join((self.unsent, data)) if data else self.unsent, b""
        if not data:
            return
        self.writing = True
        try:
            if not self.tls:
                # one plain send first: most writes fit in the socket buffer, and gevent's
                # sendall costs a getsockopt and a timeout object per call
                try:
                    sent = self.send_now(data)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return
                data = memoryview(data)[sent:]
            if self.bare:
                self._sendall_detached(data)
            else:
                self.socket.sendall(data)
        finally:
            self.writing = False

    def send_frame(self, frame):
        """Write one prepared frame: ``bytes`` or a ``(header, payload)`` pair (no copy)."""
        if frame.__class__ is not tuple:
            return self.sendall(frame)
        header, payload = frame
        if not self.accepted:
            self.accept()
        if self.unsent or getattr(self.socket, "_sslobj", None) is not None:
            self.sendall(header)                    # TLS sockets have no sendmsg
            return self.sendall(payload)
        self.writing = True
        sock = self.socket
        sendall = self._sendall_detached if self.bare else sock.sendall
        try:
            try:
                sent = sock.sendmsg(frame)
            except BlockingIOError:           # (a bare socket does not wait)
                sent = 0
            if sent < len(header):
                sendall(header[sent:])
                sent = len(header)
            if sent - len(header) < len(payload):
                sendall(memoryview(payload)[sent - len(header):])
        finally:
            self.writing = False

    def shutdown_write(self):
        """End our direction of the TCP connection (the peer reads EOF); reading goes on."""
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- the end -----------------------------------------------------------------------
    def close(self):
        """End the connection now, from anywhere (a greenlet, a timer, the reader callback).

        Stops reading and shuts the socket down, which wakes a greenlet blocked
        in a read or write on it (it gets EOF or an OSError). A detached
        connection's own descriptor is closed too; otherwise pywsgi closes its
        socket when the handler returns (gevent-websocket's handler calls this
        method then). Idempotent.
        """
        if self.closed:
            return
        self.closed = True
        self.stop_reading()
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.detached and self._waiting is None:
            self.socket.close()         # (else the shutdown wakes the blocked greenlet, which closes it)


def close_blocking(conn, session, timeout):
    """Finish ``session`` from a greenlet that is ``conn``'s only reader and writer, then close.

    Writes what the session has queued (answers, its close frame). Then, by
    the session's state: ``CLOSING`` (our close went first) — read until the
    peer's close; failed — end our side of the TCP connection and discard
    what still arrives until the peer closes too, as RFC 6455 7.1.1 prefers
    (what a broken peer sends cannot be parsed); otherwise done. All of it
    within ``timeout`` seconds.
    """
    try:
        with gevent.Timeout(timeout, False):
            conn.sendall(session.data_to_send())
            if session.failed:
                conn.shutdown_write()
                while conn.recv():
                    pass
            while session.state is wssession.CLOSING:
                data = conn.recv()
                if not data:
                    break
                session.receive_data(data)
    except OSError:
        pass
    conn.close()
