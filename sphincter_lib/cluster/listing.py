"""Redis mode: every room of the relay, for ``/api/rooms`` and ``/metrics``.

The rooms this node knows are listed as they are here (a :class:`RedisRoom
<sphincter_lib.cluster.room.RedisRoom>`, its ``relay_subscribers`` counted on every node); the
others' as a :class:`RemoteRoom`, read from their Redis hash. Rooms are found through the
``P:rooms`` index (members whose lease has not run out), not by scanning keys.
"""

import time

from ..errors import RelayUnavailable
from ..rooms.interface import WAITING
from .node import text

__all__ = ["Listing", "RemoteRoom"]


class RemoteRoom:
    """A room held by another node, as ``/api/rooms`` shows it (read from its Redis hash)."""

    backlog_bytes = 0
    peak_subscribers = slow_cutoffs = skipped = source_pauses = resumes = takeovers = replayed = 0
    source_paused = False
    paused_seconds = 0.0

    def __init__(self, key, fields, subscribers):
        get = lambda name: text(fields.get(name.encode()))     # noqa: E731
        self.code = get("code") or key
        self.state = get("state") or WAITING
        self.named = get("named") == "1"
        self.source_id = get("owner")
        self.source_node = self.source_id.split("/")[0]
        self.peer = get("peer")
        self.source = self.source_id or None
        self.presence = "online" if self.source else "offline"
        self.opened_at = float(get("opened_at") or 0)
        self.messages = int(get("messages") or 0)
        self.bytes = int(get("bytes") or 0)
        self.subscribers = range(subscribers)
        self.relay_subscribers = subscribers

    def paused_for(self, now=None):
        return 0.0

    def lag_max(self):
        return 0


class Listing:
    """The relay-wide room listing (see the module docstring); ``clock`` gives wall time (the
    leases in the index are wall-clock milliseconds)."""

    def __init__(self, model, link, clock=time.time):
        self.model = model
        self.link = link
        self.clock = clock

    def rooms(self):
        """Every room of the relay: this node's, and the others' read from Redis;
        RelayUnavailable when Redis cannot be reached."""
        link = self.link
        if not link.up:
            raise RelayUnavailable()
        model = self.model
        try:
            now_ms = int(self.clock() * 1000)
            indexes = link.redis.pipeline(transaction=False)
            for index in link.keys.indexes:      # one, or one per bucket in a Redis Cluster
                indexes.zrangebyscore(index, now_ms, "+inf")
            keys = [text(k) for found in indexes.execute() for k in found]
            keys = sorted(set(keys) | set(room.key for room in model.rooms()))
            pipe = link.redis.pipeline(transaction=False)
            for key in keys:
                room_keys = link.keys.room(key)
                pipe.hgetall(room_keys[1])
                pipe.hvals(room_keys[2])
            answers = pipe.execute()
        except link.errors as exc:
            link.failed(exc)
            raise RelayUnavailable()
        out = []
        for i, key in enumerate(keys):
            fields, counts = answers[2 * i], answers[2 * i + 1]
            total = sum(int(c) for c in counts)
            room = model.known(key)
            if room is not None:
                room.relay_subscribers = max(total, len(room.subscribers))
                out.append(room)
            elif fields:
                out.append(RemoteRoom(key, fields, total))
        return out
