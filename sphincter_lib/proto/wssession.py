"""Sans-IO server side of one WebSocket connection (RFC 6455), after the handshake.

A :class:`ServerSession` owns the connection's state and never touches a
socket: its adapter feeds it the bytes the peer sent
(:meth:`~ServerSession.receive_data`, :meth:`~ServerSession.receive_eof`),
writes what :meth:`~ServerSession.data_to_send` returns, and closes the
connection when :attr:`~ServerSession.state` says so::

    OPEN ──send_close()──▶ CLOSING ──peer's close──▶ CLOSED
      │                                                ▲
      └── peer's close (echoed) / fail() / EOF ────────┘

The session answers pings, echoes a peer's close with the peer's code,
fails protocol errors with their code (1002, 1007, 1009), and keeps the
keepalive bookkeeping (with the clock's readings passed in). It queues
control frames; data messages an endpoint sends (the echo) are queued in
the same order. Subscribers' data frames do *not* go through the session:
their adapter (``relay.session.Session``) writes the room's pre-encoded frames itself
and asks the session only whether control frames are :attr:`pending`.

What the adapter does, by state:

- ``OPEN``: write :meth:`data_to_send` whenever :attr:`pending` is set.
- ``CLOSING``: our close frame is queued or sent; write it, then keep reading
  until the peer's close arrives (the state becomes ``CLOSED``) or a timeout.
- ``CLOSED``: write what is queued (a close echo, a failure's close frame),
  then close the TCP connection. With :attr:`failed` the peer broke the
  protocol (or went silent) and may still be sending: nothing more is parsed.
  After :meth:`receive_eof` nothing is sent at all.
"""

from . import frames
from ..closecodes import CloseCode

OPEN, CLOSING, CLOSED = "open", "closing", "closed"

#: the close code and reason for a peer that left a keepalive ping unanswered
PING_TIMEOUT = CloseCode.INTERNAL_ERROR, "ping timeout"

_PING = frames.encode_ping(b"")


class ServerSession:
    """The state of one server-side WebSocket connection; see the module docstring."""

    # one per subscriber: keep it small (an idle subscriber costs ~10 KiB in all)
    __slots__ = ("state", "max_message_bytes", "keep_data", "_parser", "pending",
                 "close_sent", "close_received", "failed", "close_code", "close_reason",
                 "ping_sent_at", "last_ping_at")

    def __init__(self, max_message_bytes=None, keep_data=True, now=0.0):
        self.state = OPEN
        #: largest data message accepted (None: FrameParser's default); bigger: 1009
        self.max_message_bytes = max_message_bytes
        #: False: data messages are checked but not kept (endpoints that discard them)
        self.keep_data = keep_data
        self._parser = None              # made when the first bytes arrive (idle costs nothing)
        #: frames queued for the adapter to write, oldest first; None when there are none
        self.pending = None
        self.close_sent = False          # our close frame is queued (and then sent)
        self.close_received = False      # the peer's close frame arrived (or its broken header)
        #: True once the connection failed (protocol error, ping timeout): no closing
        #: handshake to wait for, close the TCP connection after the close frame
        self.failed = False
        self.close_code = None           # the code of our close frame (None: no status code)
        self.close_reason = ""
        self.ping_sent_at = None         # when the unanswered keepalive ping went out
        self.last_ping_at = now          # when the last keepalive ping went out (or the session began)

    def __repr__(self):
        return "<ServerSession %s close=%s>" % (self.state, self.close_code)

    # -- input ----------------------------------------------------------------------
    def receive_data(self, data, on_message=None):
        """Feed bytes the peer sent.

        Complete data messages go to ``on_message(opcode, payload)``, in order
        with the session's own answers: a frame the callback queues (see
        :meth:`send_message`) goes out before the pong for a later ping.
        Pings are answered, a close is echoed (``CLOSED``) or completes our
        closing handshake (``CLOSING`` → ``CLOSED``), a protocol error fails
        the connection with its code (:meth:`fail`). Events parsed before a
        violation are still handled. Ignored once the peer's close came or the
        connection failed.
        """
        if self.close_received or self.failed or self.state is CLOSED:
            return
        parser = self._parser
        if parser is None:
            parser = self._parser = frames.FrameParser(max_message_bytes=self.max_message_bytes,
                                                        keep_data=self.keep_data)
        events, error = parser.feed_partial(data)
        if events:
            self.ping_sent_at = None     # any frame proves the peer is alive
        for opcode, payload in events:
            if opcode == frames.PING:
                if self.state is OPEN:
                    self._queue(frames.encode_pong(payload))
            elif opcode == frames.CLOSE:
                self._on_close(payload)
                return
            elif opcode != frames.PONG and on_message is not None and self.state is OPEN:
                on_message(opcode, payload)
        if error is not None:
            self.close_received = parser.close_seen     # a broken close frame: the peer is done
            self.fail(error.code, error.reason)

    def _on_close(self, payload):
        self.close_received = True
        self._parser = None              # nothing more is parsed
        if self.close_sent:
            self.state = CLOSED          # the peer answered our close
            return
        code, _reason = frames.parse_close(payload)    # validated by the parser already
        self.send_close(code)            # echo the peer's code (none if it sent none)

    def receive_eof(self):
        """The peer's TCP connection ended: ``CLOSED``, nothing more is sent."""
        self.state = CLOSED
        self.pending = None
        self._parser = None

    # -- output ---------------------------------------------------------------------
    def data_to_send(self):
        """The queued frames as one ``bytes`` (``b""`` if none); the queue is emptied."""
        pending, self.pending = self.pending, None
        if pending is None:
            return b""
        return b"".join(pending)

    def _queue(self, frame):
        if self.pending is None:
            self.pending = [frame]
        else:
            self.pending.append(frame)

    def send_message(self, payload, text):
        """Queue a data message (``OPEN`` only; ignored otherwise)."""
        if self.state is not OPEN:
            return
        frame = frames.encode_message(payload, text)
        if frame.__class__ is tuple:     # a large frame: (header, payload)
            self._queue(frame[0])
            frame = frame[1]
        self._queue(frame)

    def send_close(self, code=None, reason=""):
        """Queue our close frame (once): ``CLOSING``, or ``CLOSED`` when the peer's
        close already came or the connection failed. ``code`` None: no status code."""
        if self.close_sent or self.state is CLOSED:
            return
        self.close_sent = True
        self.close_code, self.close_reason = code, reason
        self._queue(frames.encode_close(code, reason))
        self.state = CLOSED if self.close_received or self.failed else CLOSING

    def fail(self, code, reason):
        """The connection cannot go on: queue a close frame with ``code`` (unless one is
        queued already) and do not wait for the peer's: ``CLOSED``, :attr:`failed`."""
        if self.state is CLOSED and not self.close_sent:
            return                       # the peer is gone (EOF)
        self.failed = True
        self._parser = None
        self.send_close(code, reason)
        self.state = CLOSED

    # -- keepalive (the adapter reads the clock and passes ``now``) ------------------
    def ping_due(self, now, interval):
        """True when no ping is out and the last went out ``interval`` s ago or more."""
        return self.state is OPEN and self.ping_sent_at is None and now - self.last_ping_at >= interval

    def send_ping(self, now):
        """Queue a keepalive ping; :meth:`ping_overdue` then watches for an answer."""
        if self.state is OPEN:
            self._queue(_PING)
            self.ping_sent_at = self.last_ping_at = now

    def ping_overdue(self, now, timeout):
        """True when the peer sent no frame at all for ``timeout`` s after our ping.

        The adapter then fails the session (:data:`PING_TIMEOUT` close code)."""
        return self.ping_sent_at is not None and now - self.ping_sent_at > timeout
