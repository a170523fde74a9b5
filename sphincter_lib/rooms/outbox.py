"""Write-back: the bounded queue of writers' messages toward a room's source."""

from gevent.event import Event


class Outbox:
    """Write-back messages queued toward a room's source: bounded, whole messages, FIFO.

    Writers :meth:`put` (from the event loop: never blocks); one drainer at a
    time — the current source's writer — :meth:`take` s whole messages,
    writes them, then :meth:`done`. Past ``limit`` bytes :meth:`put` returns
    False and the writer pauses its reading until :meth:`when_writable` calls
    it back (once the queue is under half the limit), so a room holds at most
    ``limit`` plus one message per writer. Messages wait here while the room
    has no source and go to the next one.
    """

    def __init__(self, limit):
        self.limit = limit
        self.messages = []
        self.bytes = 0
        self.closed = False
        self._ready = Event()
        self._paused = []
        self._taken = 0

    def put(self, data):
        if self.closed:
            return True
        self.messages.append(data)
        self.bytes += len(data)
        self._ready.set()
        return self.bytes < self.limit

    def when_writable(self, callback):
        """Call ``callback()`` once the queue has room again (paused writers)."""
        self._paused.append(callback)

    def take(self, limit=64 * 1024):
        """Whole messages from the head, joined, at most ``limit`` bytes (at least one); None if empty."""
        msgs = self.messages
        if not msgs:
            self._ready.clear()
            return None
        n, size = 1, len(msgs[0])
        while n < len(msgs) and size + len(msgs[n]) <= limit:
            size += len(msgs[n])
            n += 1
        self._taken = n
        return msgs[0] if n == 1 else b"".join(msgs[:n])

    def done(self):
        """The last :meth:`take` was written: drop those messages (returns how many); wake paused
        writers."""
        n, self._taken = self._taken, 0
        if not n:
            return 0
        self.bytes -= sum(len(m) for m in self.messages[:n])
        del self.messages[:n]
        if self._paused and self.bytes <= self.limit // 2:
            paused, self._paused = self._paused, []
            for callback in paused:
                callback()
        return n

    def wait(self, timeout=None):
        """Block the drainer until there may be something to take (or a wake-up)."""
        self._ready.wait(timeout)

    def wake(self):
        self._taken = 0
        self._ready.set()

    def close(self):
        """The room closed: drop what waits; resume paused writers (their messages go nowhere)."""
        self.closed = True
        self.messages, self.bytes, self._taken = [], 0, 0
        self._ready.set()
        paused, self._paused = self._paused, []
        for callback in paused:
            callback()
