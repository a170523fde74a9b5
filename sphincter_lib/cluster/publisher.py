"""Redis mode: the owner's side of a room — its source's messages out to the other nodes.

When this node holds a room's source, every message is encoded once, appended to the local
backlog and queued; one loop turn's messages go out as one batch (``PUBLISH`` on ``P:m:{K}``,
plus ``XADD`` to the replay log in a replay room) carrying ``(epoch, seq, offset)``.

**Fencing** (the node's lease, :mod:`sphincter_lib.cluster.liveness`): while the node has not
renewed its lease, another node may hold the room by now. The source is then not read (TCP
backpressure) and nothing is published, here or through Redis: what was read is *held* until
Redis confirms the room is still ours (:meth:`Publisher.lease_renewed`) or another node took it
(:meth:`Publisher.drop_held`).

Runs in the event loop or the source's reader greenlet; never blocks.
"""

from ..proto import redis_keys
from ..rooms.room import LIVE

__all__ = ["Publisher"]


class Publisher(object):
    """The batches a :class:`~sphincter_lib.cluster.room.RedisRoom` publishes while it owns its
    source; it uses only the room's public names."""

    __slots__ = ("room", "feed", "model", "batch", "batch_epoch", "scheduled", "held")

    def __init__(self, room, feed, model):
        self.room = room
        self.feed = feed
        self.model = model
        self.batch = []               # this loop turn's frames
        self.batch_epoch = 0          # the epoch they were read in
        self.scheduled = False
        #: messages read while the node's lease was not renewed: published once Redis confirms
        #: the room is still ours, dropped if another node took it (None: not holding)
        self.held = None

    def reset(self):
        """A new source (or none): what the old one sent this turn is not sent."""
        self.batch = []

    def publish(self, payload, text):
        """A message from the room's source (on this node)."""
        room = self.room
        if room.state is not LIVE:
            return
        if self.held is not None or (not self.batch and not self.model.lease_held()):
            self.lease_lapsed()
            if self.held is not None:
                self.held.append((payload, text))  # the reader waits after this read
            return
        room.count_in(payload)
        frame = room.encode_frame(payload, text)
        if not self.batch:
            # scheduled before the local subscribers' flush: the batch leaves for the other
            # nodes first (the pipe writes at once), then this node's subscribers are served
            self.batch_epoch = self.feed.epoch
            if not self.scheduled:
                self.scheduled = True
                room.call_soon(self.send_batch)
        self.batch.append(frame)
        if room.subscribers or room.replay:
            room.append_frame(frame)
        else:                                  # offsets count frame bytes: other nodes use them
            room.pass_bytes(len(frame) if frame.__class__ is not tuple else len(frame[0]) + len(frame[1]))

    def send_batch(self):
        """Hand what the source sent this loop turn to Redis, as one batch (one PUBLISH)."""
        self.scheduled = False
        frames, self.batch = self.batch, []
        if not frames or self.batch_epoch != self.feed.epoch:
            return                            # replaced meanwhile: the new owner's batches count
        epoch, seq = self.feed.next_batch()
        room = self.room
        self.model.publish_batch(room, redis_keys.encode_batch(epoch, seq, room.head_pos, frames))

    # -- fencing ---------------------------------------------------------------------------
    @property
    def holding(self):
        """Its source's messages are held: the node's lease lapsed (see :meth:`lease_lapsed`)."""
        return self.held is not None

    def lease_lapsed(self):
        """The node has not renewed its lease for a lease: another node may hold the room by now.
        Its source is not read and nothing is published until :meth:`lease_renewed` or
        :meth:`drop_held`."""
        if self.held is None and self.room.source is not None:
            self.held = []
            self.room.pace.pause()

    def lease_renewed(self):
        """Redis confirmed the room is still ours: what was read meanwhile goes out, in order,
        and the source is read again."""
        held, self.held = self.held, None
        for payload, text in held or ():
            self.publish(payload, text)
        self.room.pace.resume()

    def drop_held(self):
        """The room may be another node's: what its source sent meanwhile is not published.
        Returns how many messages were dropped."""
        dropped = len(self.held) if self.held else 0
        self.held = None
        return dropped
