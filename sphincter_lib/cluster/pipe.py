"""Redis mode's ordered send pipe: what a node *sends*, in order, without waiting for replies.

One connection (a :class:`~sphincter_lib.cluster.link.Link`: it comes back by itself) carries
message batches (``PUBLISH``, ``XADD``), write-back messages, a source leaving, subscriber counts
going down and flow-control reports. Order matters: a room's last batch must reach Redis before
the script saying its source left. Commands are pre-encoded RESP (``resp.command``): the hot
path costs a ``bytes`` join and a ``sendall`` per loop turn, not redis-py's per-command
machinery (docs/redis-design.md, table P). Replies are read back in order and handed to each
command's callback. After a reconnect, what was in flight is sent again (receivers drop
duplicates by sequence number).
"""

import logging
import time
from collections import deque

import gevent
from gevent.event import Event

from ..proto import resp
from ..proto.sentinel import is_readonly
from ..proto.slots import redirection
from .link import Link

logger = logging.getLogger("sphincter.cluster.link")     # one logger for the connections to Redis

__all__ = ["Pipe"]


class Pipe(Link):
    """Commands sent in order, replies read back in order; ``send`` never blocks.

    ``send(data, callback=None, droppable=False)``: ``data`` is pre-encoded
    RESP for one command; ``callback(reply)`` runs with its reply (from this
    link's greenlet). When nothing is being written, ``send`` writes at once
    (a non-blocking send, from whatever calls it, the event loop included): a
    message batch leaves for Redis before the owner's own subscribers are
    served, not after. Past ``max_bytes`` queued (Redis unreachable), the
    oldest droppable commands (message batches) are dropped; receivers see
    the gap. After a reconnect, what was in flight is sent again."""

    name = "pipe"
    #: most bytes written to Redis in one go by the greenlet
    batch_bytes = 1 << 20

    def __init__(self, endpoint, on_down=None, on_up=None, max_bytes=64 << 20):
        Link.__init__(self, endpoint, on_down, on_up)
        self.max_bytes = max_bytes
        self._queue = deque()       # not written yet
        self._inflight = deque()    # written (or being written), reply still to come
        self._queued = 0
        self._busy = False          # a greenlet is in a blocking write
        self._send_now = None       # a non-blocking send on the socket (plain TCP only)
        self._ready = Event()
        self.dropped = 0            # droppable commands dropped while Redis was unreachable
        self.sent = 0
        self.errors = 0

    def send(self, data, callback=None, droppable=False):
        self._queue.append((data, callback, droppable))
        self._queued += len(data)
        if self._queued > self.max_bytes:
            self._shed()
        elif self._send_now is not None and not self._busy:
            self._write_now()
        self._ready.set()

    def _write_now(self):
        items = list(self._queue)
        self._queue.clear()
        self._queued = 0
        self._inflight.extend(items)
        data = items[0][0] if len(items) == 1 else b"".join(item[0] for item in items)
        try:
            sent = self._send_now(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0                            # the reader sees the broken connection
        if sent < len(data):                    # the rest by a greenlet: this may be the loop
            self._busy = True
            gevent.spawn(self._finish, self.sock, data[sent:])

    def _finish(self, sock, rest):
        """Write the rest of a partial direct write, then whatever was queued meanwhile."""
        try:
            sock.sendall(rest)
            while self._queue and self.sock is sock:
                items = list(self._queue)
                self._queue.clear()
                self._queued = 0
                self._inflight.extend(items)
                sock.sendall(b"".join(item[0] for item in items))
        except OSError:
            pass                                  # the reader sees the broken connection
        finally:
            self._busy = False

    def _shed(self):
        kept = deque()
        while self._queue and self._queued > self.max_bytes // 2:
            item = self._queue.popleft()
            if item[2]:
                self._queued -= len(item[0])
                self.dropped += 1
            else:
                kept.append(item)
        kept.extend(self._queue)
        self._queue = kept

    def flush(self, timeout):
        """Wait until everything queued was sent and answered (or ``timeout``); True if so."""
        deadline = time.monotonic() + timeout
        while (self._queue or self._inflight) and time.monotonic() < deadline:
            gevent.sleep(0.01)
        return not (self._queue or self._inflight)

    def _session(self, sock):
        if self.on_up is not None:
            self.on_up(self)
        # what was in flight when the last connection broke goes first (receivers drop duplicates)
        self._queue.extendleft(reversed(self._inflight))
        self._queued = sum(len(item[0]) for item in self._queue)
        self._inflight.clear()
        self._busy = False
        parser = resp.Parser()
        inflight = self._inflight
        raw = getattr(sock, "_sock", None)
        self._send_now = raw.send if raw is not None and not self.endpoint.tls else None
        try:
            while True:
                if not inflight:
                    if not self._queue or self._busy:
                        self._ready.clear()
                        self._ready.wait(0.05 if self._busy else None)
                        continue
                    items, size = [], 0
                    while self._queue and size < self.batch_bytes:
                        item = self._queue.popleft()
                        self._queued -= len(item[0])
                        size += len(item[0])
                        items.append(item)
                    inflight.extend(items)
                    self._write(sock, b"".join(item[0] for item in items))
                    continue
                data = sock.recv(65536)
                if not data:
                    raise OSError("connection closed by Redis")
                replies = parser.feed(data)
                for reply in replies:
                    if is_readonly(reply):        # a demoted primary: this and what follows are
                        raise OSError("redis is a replica now (READONLY)")   # sent again
                    if redirection(reply) is not None:  # a Cluster shard moved (a failover):
                        raise OSError("redis answered %s" % reply.message)   # the same, there
                    data_, callback, _ = inflight.popleft()
                    self.sent += 1
                    if isinstance(reply, resp.Error):
                        self.errors += 1
                        logger.debug("redis pipe: %s", reply.message)
                    if callback is not None:
                        try:
                            callback(reply)
                        except Exception:
                            logger.error("redis pipe: callback failed", exc_info=True)
                if len(replies) > 256:
                    gevent.sleep(0)               # a busy pipe must not hold the loop
        finally:
            self._send_now = None

    def _write(self, sock, data):
        self._busy = True
        try:
            sock.sendall(data)
        finally:
            self._busy = False
