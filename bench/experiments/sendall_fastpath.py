#!/usr/bin/env python3
"""Sphincter with one candidate change applied at run time (profile finding #1), for measuring it.

``ws.Connection.sendall`` -> try one ``socket.send`` first; fall back to ``sendall`` on the rest.
gevent's ``sendall`` calls ``getsockopt(SO_SNDBUF)`` (a syscall) and builds a memoryview and a
timeout on every call; a subscriber socket usually takes the whole batch in one ``send``.
Run exactly like sphincter.py:  python bench/experiments/sendall_fastpath.py --tcp-port ...
(bench: ``python bench/run.py --targets sphincter,sphincter@bench/experiments/sendall_fastpath.py``)
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from sphincter_lib import cli, ws  # noqa: E402


def sendall(self, data):
    self.writing = True
    try:
        sock = self.socket
        sent = sock.send(data)
        if sent < len(data):
            sock.sendall(memoryview(data)[sent:])
    finally:
        self.writing = False


ws.Connection.sendall = sendall

if __name__ == "__main__":
    sys.exit(cli.main())
