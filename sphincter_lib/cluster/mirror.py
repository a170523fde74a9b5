"""Redis mode: a room's incoming side on a node that does not hold its source (a *mirror*).

While a room has subscribers here, its :class:`Mirror` listens to the room's batches
(``P:m:{K}``), reads the replay log first in a replay room, and hands each batch to the room's
:class:`~sphincter_lib.proto.redis_feed.RedisFeed` for a decision: deliver (the room appends the
frames, already encoded), drop (ours back from Redis, an older epoch, a duplicate), or a *gap*
(the room closes its local subscribers 4408, or skips them on). It never blocks but in
:meth:`Mirror.ensure` (a round trip or two, from a subscriber's greenlet).

It holds the room, the room's feed, and the model (for ``pubsub`` and ``read_log``), and uses
only their public names: the room's ``deliver`` / ``missed`` / ``forget_backlog`` /
``stop_feed``.
"""

import logging

from gevent.event import Event

from ..errors import RelayUnavailable
from ..proto import redis_keys

logger = logging.getLogger("sphincter.cluster.mirror")

__all__ = ["Mirror"]


class Mirror:
    """A room's batches from Redis, in order, as this node takes them (see the module docstring)."""

    def __init__(self, room, feed, model):
        self.room = room
        self.feed = feed
        self.model = model
        #: listening to the room's batches
        self.feeding = False
        self._loading = None             # batches received while the replay log is read
        self._ready = None               # set once a subscription (and log read) is done

    def ensure(self, timeout):
        """Listen to the room's batches (and read the replay log), before a local subscriber joins.

        Blocks the calling greenlet for a round trip or two; RelayUnavailable if Redis does
        not confirm within ``timeout``."""
        ready = self._ready
        if self.feeding:
            if ready is not None:
                ready.wait(timeout)
            return
        room = self.room
        self.feeding = True
        self.feed.start()
        ready = self._ready = Event()
        try:
            if not self.model.pubsub.subscribe(room.chan_m).wait(timeout):
                room.stop_feed()
                raise RelayUnavailable()
            if room.replay and room.source is None:
                self._load_replay()
        finally:
            self._ready = None
            ready.set()

    def stop(self):
        """Stop listening to the room's batches."""
        if self.feeding:
            self.feeding = False
            self.feed.stop()
            self.model.pubsub.unsubscribe(self.room.chan_m)

    def _load_replay(self):
        """The newest ``replay`` batches from the room's log, joined with the live batches that
        arrive meanwhile at the first (epoch, seq) both have: no gap, no duplicate."""
        self._loading = []
        try:
            entries = self.model.read_log(self.room)
        except RelayUnavailable:
            entries = []
        pending, self._loading = self._loading, None
        self.room.forget_backlog()
        for entry_id, data in reversed(entries):
            self._take(data, from_log=True)
        for data in pending:
            self.receive(data)

    def receive(self, data):
        """A batch from Redis (from the listener greenlet)."""
        if self.room.source is not None:
            return                            # ours, back from Redis: not even decoded
        if self._loading is not None:
            self._loading.append(data)
            return
        self._take(data)

    def _take(self, data, from_log=False):
        room = self.room
        try:
            epoch, seq, end, frames = redis_keys.decode_batch(data)
        except ValueError as exc:
            logger.warning("room %s: dropped a malformed batch from Redis: %s", room.code, exc)
            return
        # ours, back from Redis (or fenced: an event follows); from a replaced source; a
        # duplicate (resent after a reconnect); or to deliver, maybe after a gap
        decision = self.feed.batch(epoch, seq, owned=room.source is not None, from_log=from_log)
        if decision.gap is not None:
            room.missed(decision.gap)
        if decision.deliver:
            room.deliver(epoch, end, frames, from_log)

    def check_last(self, last):
        """An event: ``last`` is the room's last batch (epoch, seq) when the script knew it, else
        None. A batch we lack is lost, and a tainted feed (our connection broke) that cannot
        tell is taken as lost: never shown as a gap."""
        if not self.feeding or self.room.source is not None or self._loading is not None:
            return
        gap = self.feed.check_last(last)
        if gap is not None:
            self.room.missed(gap)
