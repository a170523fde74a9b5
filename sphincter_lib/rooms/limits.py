"""A room's limits and policies (:class:`RoomLimits`), given to it when it is made."""

from .interface import CUT, SKIP


class RoomLimits:
    """A room's limits and policies, given to it when it is made (one shared instance)."""

    __slots__ = ("buffer_bytes", "max_subscribers", "flow_control", "high_water", "low_water",
                 "slow_policy", "replay", "grace", "write_queue_bytes")

    def __init__(self, buffer_bytes=4 << 20, max_subscribers=10000, flow_control=True,
                 high_water=None, slow_policy=CUT, replay=0, grace=0.0, write_queue_bytes=1 << 20):
        if slow_policy not in (CUT, SKIP):
            raise ValueError("slow_policy must be %r or %r" % (CUT, SKIP))
        #: how far a subscriber may fall behind the head (bytes) before it is cut or skips
        self.buffer_bytes = buffer_bytes
        #: most subscribers at once (more: RoomFullError, close 4429)
        self.max_subscribers = max_subscribers
        #: make the source wait while the fastest subscriber is ``high_water`` bytes behind
        self.flow_control = flow_control
        self.high_water = high_water if high_water else buffer_bytes // 2
        #: the source reads again once the fastest subscriber is back under this
        self.low_water = self.high_water // 2
        self.slow_policy = slow_policy
        #: a subscriber that joins first gets up to this many of the newest messages
        self.replay = replay
        #: seconds a room waits for its source to come back (``RESUME``); None: forever (named)
        self.grace = grace
        #: bytes of write-back messages queued toward the source before writers are paused
        self.write_queue_bytes = write_queue_bytes

    def but(self, **changes):
        """A copy with some limits changed (a named room's own options)."""
        copy = RoomLimits.__new__(RoomLimits)
        for name in self.__slots__:
            setattr(copy, name, changes[name] if changes.get(name) is not None else getattr(self, name))
        if "high_water" not in changes:
            copy.low_water = copy.high_water // 2
        return copy
