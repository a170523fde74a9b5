#!/usr/bin/env python3
"""Bench-only candidate (issue 13), not a fix: Sphincter with one change applied at start-up, to
measure it side by side (bench/cluster.py --configs two-nodes,two-nodes@bench/candidates/...).

The change: a room's owner hands its batch to Redis *before* serving its own subscribers. As
written, ``RedisRoom.publish`` appends the frame first (``Backlog.append`` schedules ``flush``,
the local fan-out) and schedules ``send_batch`` after it; ``send_batch`` only queues the
PUBLISH and sets the pipe's Event, whose waiter runs after the callbacks already queued. So a
node with 500 local subscribers writes all 500 before the other nodes hear of the message, and
their subscribers wait for that on top of the hop. Here the backlog ``flush`` of an owned room
steps aside (at most twice per flush) while its batch or the pipe's queue is still pending.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main():
    from gevent import config as gevent_config
    from gevent import monkey

    monkey.patch_all()
    gevent_config.track_greenlet_tree = False
    from sphincter_lib import cli
    from sphincter_lib.rooms.backlog import Backlog

    flush = Backlog.flush

    def _flush(self):                              # (Backlog has __slots__: the count is the room's)
        room = self.room
        deferred = getattr(room, "_bench_deferred", 0)
        pipe = getattr(getattr(room, "model", None), "pipe", None)
        if deferred < 2 and getattr(room, "owned", False) and (
                room.publisher.scheduled or (pipe is not None and pipe.pending)):
            room._bench_deferred = deferred + 1
            room.call_soon(self.flush)                 # _flush_scheduled stays True meanwhile
            return
        room._bench_deferred = 0
        flush(self)

    Backlog.flush = _flush
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
