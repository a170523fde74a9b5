"""A TCP source's connection before its data: TLS, the PROXY header, the preamble lines.

:class:`Greeter` holds the settings of that phase (``--source-tls-cert``,
``--handshake-timeout``, ``--source-proxy-protocol``, ``--source-tokens``) and reads, within
them, a TLS handshake, a PROXY protocol header (:mod:`..proto.proxyproto`: from a trusted proxy
it must come, from any other peer it must not) and the preamble lines (``AUTH``, ``RESUME``,
``SESSIONS``, ``SESSION``: :mod:`..proto.preamble`); a connection that fails gets one ``ERROR``
line and one log line. :class:`TcpSource` is a source connection as its room sees it.
"""

import logging
import socket
import time

import gevent
from gevent.exceptions import ConcurrentObjectUseError

from ..logformat import log_crash
from ..proto.preamble import Preamble
from ..proto.proxyproto import HeaderReader
from ..rooms.interface import Source

logger = logging.getLogger("sphincter.relay.ingest")
_crashed = log_crash(logger, "source greenlet")

__all__ = ["Greeter", "TcpSource"]


class TcpSource(Source):
    """A source connection as its room sees it: an address, and a way to write to it."""

    def __init__(self, sock, peer, write_timeout=5.0):
        Source.__init__(self, peer)
        self.sock = sock
        self.write_timeout = write_timeout
        self._hanging = None                 # the greenlet writing its ERROR line (hang_up)

    def send(self, data):
        """Write ``data`` within ``write_timeout`` seconds; False if it could not be written."""
        with gevent.Timeout(self.write_timeout, False):
            try:
                self.sock.sendall(data)
                return True
            except (OSError, ConcurrentObjectUseError):   # (the write-back greenlet is writing)
                pass
        return False

    def hang_up(self, reason):
        """In a greenlet of its own: ``ERROR <reason>``, then end the connection (wakes its reader)."""
        self._hanging = gevent.spawn(self._hang_up, b"ERROR %s\n" % reason.encode())
        self._hanging.link_exception(_crashed)

    def hung_up(self):
        """Wait (at most ``write_timeout``) until the ERROR line of :meth:`hang_up` is written: its
        reader, woken in the same loop turn, must not close the socket first."""
        if self._hanging is not None:
            self._hanging.join(self.write_timeout)

    def _hang_up(self, line):
        self.send(line)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Greeter(object):
    """The opening of a source's connection (see the module docstring)."""

    #: longest AUTH or RESUME line accepted (bytes, newline included)
    max_auth_line = 1024
    #: seconds to wait for an AUTH or RESUME line that may or may not come (named rooms, grace
    #: period) before a silent source gets a new room; lines sent right after connecting are
    #: there long before
    preamble_wait = 1.0
    #: seconds allowed for writing an ERROR line
    write_timeout = 5.0

    def __init__(self, registry, tokens=(), handshake_timeout=10.0, tls=False,
                 proxy_protocol=False):
        self.registry = registry
        self.stats = registry.stats
        self.tokens = tuple(tokens)         # non-empty: sources must send 'AUTH <token>' first
        self.handshake_timeout = handshake_timeout
        self.tls = tls
        self.proxy_protocol = proxy_protocol
        #: session rooms are served (``--sessions on`` or a named session room): every source's
        #: first line is read
        self.sessions = False
        #: named session rooms are served: an ``AUTH`` line is read even when no broadcast room is named
        self.named_sessions = False

    def greet(self, sock, peer, first=None):
        """TLS handshake, no PROXY header from a direct peer (``--source-proxy-protocol``; ``first``
        is None), and the preamble lines (``AUTH``, ``RESUME``), within ``handshake_timeout``.
        ``first``: what followed a trusted proxy's header.

        Returns a :class:`~sphincter_lib.proto.preamble.Result` (its ``rest`` is the
        start of the source's data), or None if the source is to be dropped."""
        timer = gevent.Timeout.start_new(self.handshake_timeout) if self.handshake_timeout else None
        secured = not self.tls
        try:
            if self.tls:
                sock.do_handshake()
                secured = True
        except gevent.Timeout as t:
            if t is not timer:
                raise
            return self.refuse(sock, peer, "handshake timeout", secured)
        except OSError as exc:       # includes ssl.SSLError
            logger.info("source %s: handshake failed: %s", peer, exc)
            return None
        finally:
            if timer is not None:
                timer.close()
        started = time.monotonic()
        preamble = Preamble(require_auth=bool(self.tokens), accept_auth=self.registry.named_count > 0 or self.named_sessions,
                            accept_resume=self.registry.limits.grace > 0, max_line=self.max_auth_line,
                            accept_sessions=True)
        try:
            if first is None and self.proxy_protocol:     # a direct peer: its bytes are its own
                direct = self.read_start(sock, HeaderReader(expect=False), started)
                if direct.error:
                    return self.refuse(sock, peer, direct.error, detail=direct.detail)
                first = direct.rest
            if not (preamble.require_auth or preamble.accept_auth or preamble.accept_resume
                    or self.sessions):
                return (first and preamble.feed(first)) or preamble.timeout()   # all of it is data
            result = self.read_start(sock, preamble, started, first)
        except OSError as exc:
            logger.info("source %s: connection failed before its data: %s", peer, exc)
            return None
        if result.error:
            return self.refuse(sock, peer, result.error, secured)
        return result

    def read_start(self, sock, parser, since, first=b""):
        """Feed ``parser`` (a :class:`Preamble`, a PROXY header's :class:`HeaderReader`) the
        connection's first bytes, ``first`` then what arrives, until it decides: what may or may
        not come is waited for until ``preamble_wait`` after ``since``, what must come
        (``parser.required_pending``) up to ``handshake_timeout`` after it."""
        if first:
            result = parser.feed(first)
            if result is not None:
                return result
        deadline = since + (self.handshake_timeout or 3600.0)
        soft = since + self.preamble_wait
        try:
            while True:
                now = time.monotonic()
                if parser.required_pending:
                    soft = now + self.preamble_wait     # optional lines may follow the AUTH line
                    limit = deadline
                else:
                    limit = min(deadline, soft)
                if limit <= now:
                    return parser.timeout()
                sock.settimeout(limit - now)
                try:
                    data = sock.recv(getattr(parser, "wanted", self.max_auth_line))
                except socket.timeout:
                    return parser.timeout()
                result = parser.feed(data)
                if result is not None:
                    return result
        finally:
            sock.settimeout(None)

    def refuse(self, sock, peer, why, secured=True, detail=""):
        self.stats.rejected["source", why] += 1
        logger.warning("source %s refused: %s%s", peer, why, " (%s)" % detail if detail else "")
        if secured:                  # no ERROR line into a half-done TLS handshake
            self.send_line(sock, b"ERROR %s\n" % why.encode())
        return None

    def send_line(self, sock, data):
        """An ``ERROR`` line to a connection that has no room (yet)."""
        TcpSource(sock, "", self.write_timeout).send(data)
