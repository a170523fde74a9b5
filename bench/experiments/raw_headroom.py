#!/usr/bin/env python3
"""Sphincter with a zero-copy raw (tunnel) path applied at run time (profile finding #3).

In raw framing the profile shows ``wsproto.encode_frame`` (``header + payload``: a copy of every
chunk) at ~19 % of the server's CPU.  Here the source is read with ``recv_into`` a fresh
buffer that keeps 10 bytes of headroom; the frame header is written into the headroom and the
frame published as a memoryview of that buffer (never reused, so never mutated): no copy
between the kernel and the subscriber's ``send``.  Only the raw path changes; lines framing
is untouched.  Also applies the sendall fast path (finding #1).
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from sphincter_lib import cli, ingest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sendall_fastpath  # noqa: E402,F401  (applies finding #1)

_H2 = struct.Struct("!BBH").pack_into
_H8 = struct.Struct("!BBQ").pack_into
_orig_pump = ingest.SourceHandler._pump


def _pump(self, sock, room):
    if self.framing != "raw":
        return _orig_pump(self, sock, room)
    size = min(self.read_size, self.max_message_bytes)
    room._encode = lambda frame, text: frame          # frames arrive already encoded
    publish = room.publish
    recv_into = sock.recv_into
    while True:
        buf = bytearray(size + 10)
        view = memoryview(buf)
        n = recv_into(view[10:])
        if not n:
            return
        if n < 126:
            start = 8
            buf[8], buf[9] = 0x82, n
        elif n < 65536:
            start = 6
            _H2(buf, 6, 0x82, 126, n)
        else:
            start = 0
            _H8(buf, 0, 0x82, 127, n)
        publish(view[start:10 + n], False)


ingest.SourceHandler._pump = _pump

if __name__ == "__main__":
    sys.exit(cli.main())
