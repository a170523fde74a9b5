"""TCP socket options shared by the source listener and ``sphincter connect``'s relay link."""

import socket


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
