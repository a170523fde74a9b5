"""Redis mode: a room's write-back queue, in Redis (``P:out:{K}``), as one node sees it."""

from gevent.event import Event

from ..errors import RelayUnavailable
from ..proto import redis_keys, resp

__all__ = ["RedisOutbox"]


class RedisOutbox:
    """The room's write-back queue, in Redis (``P:out:{K}``): writers on any node put whole
    messages; the drainer on the owner's node takes them. The same interface as
    :class:`~sphincter_lib.rooms.outbox.Outbox`."""

    def __init__(self, room, limit):
        self.room = room
        self.limit = limit
        self.closed = False
        self.known = 0            # bytes queued in Redis, as last seen
        self.sending = 0          # bytes on their way to Redis
        self._event = Event()
        self._callbacks = []
        self._taken = None
        self._trimmed = None      # set once Redis applied the last done()

    def put(self, data):
        """From the event loop: queue ``data``; False when the queue is (about) full."""
        size = len(data)
        self.sending += size
        room = self.room
        room.model.pipe.send(resp.command("EVAL", redis_keys.script("WPUT", room.model.keys.cluster), 6, *(room.redis_keys + [
            room.chan_e, data, room.chan_w])), lambda reply: self._put_done(reply, size))
        return self.known + self.sending < self.limit

    def _put_done(self, reply, size):
        self.sending -= size
        if isinstance(reply, int) and reply >= 0:
            self.known = reply

    @property
    def waiting_writers(self):
        return len(self._callbacks)

    def when_writable(self, callback):
        self._callbacks.append(callback)

    def writable(self):
        self.known = 0
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def take(self, limit=64 * 1024):
        """Whole messages from the head of the queue, joined, at most ``limit`` bytes (at least
        one message); None when there are none (or Redis cannot be reached)."""
        trimmed = self._trimmed
        if trimmed is not None and not trimmed.wait(2.0):
            return None                       # the last done() is not applied yet
        try:
            items = self.room.model.out_head(self.room)
        except RelayUnavailable:
            return None
        if not items:
            return None
        taken, size = [], 0
        for item in items:
            if taken and size + len(item) > limit:
                break
            taken.append(item)
            size += len(item)
        self._taken = (len(taken), size)
        return b"".join(taken)

    def done(self):
        """The messages of the last :meth:`take` were written: drop them from the queue. Sent
        through the node's pipe, so it happens even if the drainer is stopped right after."""
        n, size = self._taken
        self._taken = None
        trimmed = self._trimmed = Event()
        room = self.room

        def applied(reply):
            if isinstance(reply, int):
                self.known = reply
            trimmed.set()
        room.model.pipe.send(resp.command("EVAL", redis_keys.script("WDONE", room.model.keys.cluster), 6, *(room.redis_keys + [
            room.chan_e, n, size, self.limit])), applied)
        return n

    def wait(self, timeout=None):
        """Until woken (``P:w:{K}``), or at most a second: a wake-up lost with Redis costs that."""
        self._event.wait(1.0 if timeout is None else min(timeout, 1.0))
        self._event.clear()

    def wake(self):
        self._event.set()

    def close(self):
        self.closed = True
        self._event.set()
        self._callbacks = []
