"""The local ends of ``sphincter pipe``'s sessions: what a :class:`~.pipe.Session` reads its
input from and writes the relay's messages to. Each has ``name``, ``read(size)`` (``b""`` at
the end of the input), ``write(data)`` (all of it; OSError when the output is gone),
``end_output()`` (the relay closed normally: every byte is out) and ``close()``.
"""

import errno
import fcntl
import socket

import gevent.os

from ..proto.addresses import format_peer


class StdioEnd:
    """stdin and stdout, read and written cooperatively (pipes, files, terminals): the file
    descriptors are made non-blocking for the session and restored by :meth:`close`."""

    name = "stdin/stdout"

    def __init__(self, fd_in=0, fd_out=1):
        self.fd_in, self.fd_out = fd_in, fd_out
        self._flags = {}
        for fd in (fd_in, fd_out):
            try:
                self._flags[fd] = fcntl.fcntl(fd, fcntl.F_GETFL)
                gevent.os.make_nonblocking(fd)
            except OSError:
                pass                   # closed, or a file that cannot be: plain blocking I/O

    def read(self, size):
        try:
            return gevent.os.nb_read(self.fd_in, size)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return b""             # no stdin at all: an empty input
            raise

    def write(self, data):
        view = memoryview(data)
        while view:
            view = view[gevent.os.nb_write(self.fd_out, view):]

    def end_output(self):
        """Every byte is out: nothing to do for a file descriptor we do not own."""

    def close(self):
        for fd, flags in self._flags.items():
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            except OSError:
                pass


class SocketEnd:
    """A local TCP connection accepted by ``--listen``; :meth:`close` closes it."""

    def __init__(self, sock, peer):
        self.sock = sock
        self.name = format_peer(peer)

    def read(self, size):
        return self.sock.recv(size)

    def write(self, data):
        self.sock.sendall(data)

    def end_output(self):
        """Every byte is out: our FIN tells the local client (the session is over)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.sock.close()
