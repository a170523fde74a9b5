"""TCP socket helpers shared by the relay and the agent: keep-alive options (the source listener,
``sphincter connect``'s relay link) and the pipe of a zero-copy session path (``os.splice``)."""

import os
import socket
import ssl

#: ``os.splice`` (Linux, Python 3.10+), else None: the session paths then copy
SPLICE = getattr(os, "splice", None)
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def keepalive(sock, idle, interval, probes, nodelay=False):
    """Notice a peer that vanished without a FIN (after about idle + interval * probes seconds);
    with ``nodelay``, send small writes (a line at a time) at once. Best effort: a socket that
    cannot (not TCP, an old kernel) is left as it is."""
    try:
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    except (OSError, AttributeError):
        pass


def plain(sock):
    """True for a plain TCP socket (``os.splice`` can move its bytes): not TLS, not a wrapper."""
    return isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket)


class NoPipe(OSError):
    """No pipe could be had (no file descriptor left): the caller copies instead."""


class SplicePipe:
    """The pipe ``os.splice`` moves bytes through between two sockets, held only while they flow:
    :meth:`fill` opens it for a read and closes it while the source has nothing, so an idle
    session holds no file descriptor for it; :meth:`drain` empties it into the destination.
    The waits are the caller's (``wait_readable``/``wait_writable``: its event loop's)."""

    def __init__(self, size):
        self.want, self.size = size, size
        self.r = self.w = None

    def open(self):
        if self.r is None:
            self.r, self.w = os.pipe()
            try:
                import fcntl
                fcntl.fcntl(self.w, getattr(fcntl, "F_SETPIPE_SZ", 1031), self.want)
                self.size = self.want
            except OSError:
                self.size = 64 * 1024            # a pipe's default capacity
        return self

    def close(self):
        if self.r is not None:
            os.close(self.r)
            os.close(self.w)
            self.r = self.w = None

    def fill(self, src_fd, wait_readable):
        """Up to :attr:`size` bytes of ``src_fd`` into the pipe; returns their count (0: EOF).
        While nothing is there, the pipe is closed and ``wait_readable()`` called. Raises
        :class:`NoPipe` when no pipe can be had, OSError when the source broke."""
        while True:
            try:
                self.open()
            except OSError as exc:
                raise NoPipe(exc.errno, exc.strerror)
            try:
                return SPLICE(src_fd, self.w, self.size, flags=SPLICE_FLAGS)
            except BlockingIOError:
                self.close()
                wait_readable()

    def drain(self, n, dst_fd, wait_writable):
        """The ``n`` bytes in the pipe to ``dst_fd``, calling ``wait_writable()`` while it is full."""
        while n:
            try:
                n -= SPLICE(self.r, dst_fd, n, flags=SPLICE_FLAGS)
            except BlockingIOError:
                wait_writable()
