#!/usr/bin/env python3
"""Sphincter with "direct send on publish" applied at run time (profile finding #2), to measure it.

Today every publish wakes each parked (caught-up) subscriber's writer greenlet: one Event.set,
one switch in, ``take``, ``sendall``, one switch out, per subscriber per batch.  Here
``Room.publish`` instead schedules one loop callback per room; the callback walks the parked
subscribers and writes their new frames with a non-blocking ``send`` on the OS socket, without
waking their greenlets.  A subscriber whose send would block or is partial gets the remainder
queued ahead of everything else (``conn.control``, which the writer sends first) and its writer
woken as before; subscribers that are writing, closing or have control frames pending are
simply woken.  Ordering, the byte budget and the cut-off are unchanged.  Also applies the
sendall fast path (finding #1).
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402
import weakref  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import gevent  # noqa: E402

from sphincter_lib import cli, rooms, web  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sendall_fastpath  # noqa: E402,F401  (applies finding #1)

CONN = weakref.WeakKeyDictionary()      # Subscriber -> ws.Connection
_orig_run = web.Session.run


def _run(self):
    CONN[self.sub] = self.conn
    return _orig_run(self)


def _publish(self, payload, text):
    if self.state is not rooms.LIVE:
        return
    frame = self._encode(payload, text)
    self.messages += 1
    self.bytes += len(payload)
    stats = self.stats
    stats.messages_in += 1
    stats.bytes_in += len(payload)
    self.head_seq += 1
    self.head_pos += len(frame)
    if not self.subscribers:
        self._base_seq, self._base_pos = self.head_seq, self.head_pos
        return
    self._frames.append(frame)
    self._ends.append(self.head_pos)
    if self.head_pos > self._reclaim_at:
        self._reclaim()
    if self._parked and not getattr(self, "_flush_pending", False):
        self._flush_pending = True
        gevent.get_hub().loop.run_callback(_flush, self)


def _flush(room):
    room._flush_pending = False
    parked, room._parked = room._parked, []
    batch = web.Session.batch_bytes
    for sub in parked:
        conn = CONN.get(sub)
        if (conn is None or conn.writing or conn.control or conn.closed or sub.closing
                or not sub.active):
            sub._parked = False
            sub._event.set()
            continue
        data = sub.take(batch)
        if data is None:                      # nothing new for this one: stays parked
            room._parked.append(sub)
            continue
        if data.__class__ is tuple:           # a large (header, payload) frame: the writer's job
            sub._parked = False
            sub._event.set()
            continue
        try:
            sent = conn.socket._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sub._parked = False
            sub._event.set()
            continue
        sub.commit()
        if sent == len(data):
            room._parked.append(sub)          # still parked, its greenlet never woke
        else:
            conn.control.append(bytes(memoryview(data)[sent:]))   # writer sends this first
            sub._parked = False
            sub._event.set()


web.Session.run = _run
rooms.Room.publish = _publish

if __name__ == "__main__":
    sys.exit(cli.main())
