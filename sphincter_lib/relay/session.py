"""A subscriber's connection: :class:`Session` (no greenlet while idle) and the :class:`Keepalive` sweep.

An idle subscriber :class:`Session` has no greenlet: an I/O watcher feeds what
the client sends to the sans-IO :class:`~sphincter_lib.proto.wssession.ServerSession`
from the event loop, and the event loop writes new frames and control frames
(pongs, pings) itself with non-blocking sends (:meth:`Session._direct`). A
writer greenlet exists only while there is more to write than one
non-blocking send takes (a full socket buffer, a large frame, the closing
handshake): it drains the room's backlog from the subscriber's cursor, parks
the cursor and ends once caught up. The event loop never writes while the
writer lives, so frames never interleave. ``web.WebApp`` makes sessions and
starts them.
"""

import logging
import time

import gevent
from gevent.event import Event

from ..logformat import log_crash
from ..proto import frames
from ..proto.wssession import CLOSING, OPEN, PING_TIMEOUT, ServerSession

# the logger of the /ws route, as before this module was split out of web.py
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
    """One subscriber connection: a room cursor, a protocol session, a writer greenlet at times.

    :meth:`start` returns at once; the session ends on its own and then calls
    ``app.session_done(session)``. Every wake-up of the cursor (``sub.waker``:
    :meth:`_wake`) first tries the event loop's non-blocking sends; only what
    they cannot do spawns the writer (:meth:`_write`): it drains the room's
    backlog from the subscriber's cursor and writes the frames the protocol
    session :attr:`ws` queued (pongs, pings, the close frame), then ends. Incoming
    bytes go to :attr:`ws` from the event loop (:meth:`_on_data`), so an idle
    subscriber costs one I/O watcher and a few small objects. Who closes: the
    room (``sub.kick``: too slow; ``close_after_drain``: source gone, shutdown),
    the protocol session (the client's close is echoed, a protocol error,
    keepalive) — each decision reaches the other side, and the first close
    frame queued is the one sent.
    """

    #: most bytes written to one subscriber per write (small frames are joined up to this;
    #: a frame this big or bigger goes alone, uncopied)
    batch_bytes = frames.LARGE_PAYLOAD
    #: most bytes written to one subscriber before its writer yields to the event loop (a
    #: socket that stays writable never blocks, so a fast reader would otherwise hold the loop);
    #: also the most one direct write from the event loop sends before handing over to the writer
    yield_bytes = 4 * frames.LARGE_PAYLOAD

    __slots__ = ("conn", "sub", "peer", "app", "ws", "_peer_closed", "writer", "slot", "_writer",
                 "finished", "_done")

    def __init__(self, app, conn, sub, peer, writer=False):
        self.app, self.conn, self.sub, self.peer = app, conn, sub, peer
        #: True: a writer (it presented the room's write key): its messages go to the source
        self.writer = writer
        self.ws = ServerSession(max_message_bytes=app.settings.client_message_limit(writer),
                                keep_data=writer,         # other subscribers' messages are discarded
                                now=app.keepalive.clock())
        self._peer_closed = None        # an Event while the writer waits for the client's close
        #: the caller's per-address slot (``web.WebApp``), handed back by ``session_done``
        self.slot = None
        self._writer = None             # the writer greenlet while one runs
        self.finished = False           # True once the session ended (and session_done was called)
        self._done = None               # an Event while run() waits for the end

    def start(self):
        """Run the session from the event loop, with no greenlet of its own: returns at once."""
        sub, conn = self.sub, self.conn
        sub.attach(direct=None if conn.tls else self._direct, interrupt=self._interrupt,
                   waker=self._wake)
        self.app.keepalive.sessions.add(self)
        try:
            conn.start_reading(self._on_data)
            self._wake()                   # the replay window, or park
        except BaseException:
            self.abort()
            raise

    def run(self):
        """:meth:`start`, then block the calling greenlet until the session ends (a connection
        that cannot outlive its handler: TLS)."""
        self._done = Event()
        try:
            self.start()
            self._done.wait()
        finally:
            self.abort()

    def abort(self):
        """End the session now (shutdown's deadline, a killed handler): no closing handshake."""
        self.conn.close()
        self._finish()

    def _finish(self):
        if self.finished:
            return
        self.finished = True
        self.app.keepalive.sessions.discard(self)
        self.sub.leave()
        self.conn.close()
        if self._done is not None:
            self._done.set()
        self.app.session_done(self)

    def _wake(self):
        """Something to do (the cursor's waker: from anywhere, must not block): the event loop's
        non-blocking sends do what they can; a writer greenlet the rest."""
        if self._writer is not None or self.finished:
            return                         # the writer loops until it sees nothing more to do
        if self.conn.send_now is not None and not self.sub.closing and self._send_control() \
                and self._direct():
            self.sub.park()                # caught up: the backlog's flush serves it next
            return
        self._writer = gevent.spawn_raw(self._run_writer)

    def _send_control(self):
        """Queued control frames (pong, ping) with one non-blocking send: True once all went."""
        ws, conn = self.ws, self.conn
        if not ws.pending:
            return True
        if conn.writing or conn.unsent or conn.closed:
            return False
        data = ws.data_to_send()
        try:
            sent = conn.send_now(data)
        except OSError:                    # BlockingIOError included: the writer sends it
            sent = 0
        if sent < len(data):
            conn.defer(data[sent:])
            return False
        return True

    def _run_writer(self):
        done = True
        try:
            done = self._write()
        except BaseException:              # a bug: the session ends, the log says why
            logger.error("subscriber %s: writer crashed", self.peer, exc_info=True)
        finally:
            self._writer = None
        if done:
            self._finish()

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

        Sends them with non-blocking sends (a large frame's header and payload
        in one ``sendmsg``, uncopied): True once all went (the writer stays
        asleep), False to wake the writer — for a close, queued control frames,
        or a send that would block. A partial send's remainder is handed to
        ``conn.defer``: the writer's next write sends it before anything else,
        so the byte stream stays in order.
        """
        conn, sub = self.conn, self.sub
        if conn.writing or conn.closed or conn.unsent or self.ws.pending or sub.closing \
                or self._writer is not None:
            return False                   # (checked before take(): the writer may hold one)
        send, take, batch = conn.send_now, sub.take, self.batch_bytes
        budget = self.yield_bytes
        while True:                        # until caught up, or the kernel takes no more
            if budget <= 0:
                return False               # much to send: the writer goes on, yielding as it goes
            data = take(batch)
            if data is None:
                return True
            try:
                if data.__class__ is tuple:
                    if not conn.bare:
                        return False
                    size = len(data[0]) + len(data[1])
                    sent = conn.send_frame_now(data)
                else:
                    size = len(data)
                    sent = send(data)
            except OSError:                # BlockingIOError included: the writer retries
                return False
            if not sent:
                return False
            sub.commit()
            budget -= size
            if sent < size:
                conn.defer(_rest(data, sent))
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
        """The writer: until caught up (then the cursor is parked: False) or closed (True)."""
        conn, sub, ws = self.conn, self.sub, self.ws
        batch, budget = self.batch_bytes, self.yield_bytes
        try:
            while True:
                if sub.closing and (sub.close_now or sub.caught_up()):
                    break
                if conn.closed:
                    return True
                if conn.unsent or ws.pending:
                    conn.sendall(ws.data_to_send())
                    continue               # (that write may have blocked: check for a close again)
                data = sub.take(batch)
                if data is None:
                    sub.park()             # no switch between this and the writer's end
                    return False
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
        conn.close()
        return True

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


def _rest(frame, sent):
    """What a partial send of ``frame`` (bytes or a ``(header, payload)`` pair) left, uncopied
    where it can be."""
    if frame.__class__ is not tuple:
        return memoryview(frame)[sent:]
    header, payload = frame
    if sent < len(header):
        return header[sent:] + payload
    return memoryview(payload)[sent - len(header):]
