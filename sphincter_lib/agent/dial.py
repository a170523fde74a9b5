"""Open a connection to a ``ws://`` or ``wss://`` URL's server, ready for the WebSocket upgrade.

TCP to the URL's host, or to an HTTP proxy that opens a ``CONNECT`` tunnel to it (the
request and the answer: :mod:`..proto.httpconnect`); then, for ``wss://``, TLS with the
host name checked (the system's CAs, or ``--tls-ca``). Every failure is a :class:`DialError`
whose text is one line naming what failed: the name lookup, the TCP connection (to the host
or to the proxy), the proxy's answer or the TLS handshake. ``sphincter pipe`` uses it, and
``sphincter connect`` for a relay reached on its WebSocket port (``--relay wss://...``):
:func:`relay_socket` gives it its relay link, TCP or a :class:`WsStream`.
"""

import logging
import re
import socket
import ssl

from ..closecodes import CloseCode
from ..errors import SphincterError
from ..proto.frames import BINARY
from ..proto.httpconnect import ConnectResponse, ProxyError, connect_request
from ..tcp import keepalive
from .local import Fatal
from .wsclient import ClientConnection, ConnectionClosed, HandshakeError, parse_url

logger = logging.getLogger("sphincter.agent.dial")


class DialError(SphincterError):
    """The connection could not be made (one line: what failed and why)."""


def tls_context(ca_file=""):
    """A client context that verifies certificates and host names: against ``ca_file`` when
    given (a PEM file of CA certificates), else the system's CAs."""
    return ssl.create_default_context(cafile=ca_file or None)


def _reason(exc):
    """The short text of an OS, DNS or TLS error: no ``[Errno N]``, no ``(_ssl.c:NNN)``."""
    if getattr(exc, "verify_message", None):        # ssl.SSLCertVerificationError (3.7+)
        return "certificate verify failed: %s" % exc.verify_message
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror
    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, ssl.SSLError):
        text = re.sub(r"^\[[A-Z0-9_: ]+\]\s*", "", text)
        text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)
    return text.splitlines()[0] if text.strip() else exc.__class__.__name__


def _hostport(host, port):
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def _tcp(host, port, timeout, what):
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise DialError("cannot resolve %s%s: %s" % (what, host, _reason(exc)))
    except (OSError, socket.timeout) as exc:
        raise DialError("cannot connect to %s%s: %s" % (what, _hostport(host, port), _reason(exc)))


def _tunnel(sock, proxy, host, port):
    """Ask ``proxy`` (already connected: ``sock``) for a tunnel to ``host:port``."""
    where = "proxy %s" % proxy.url
    try:
        sock.sendall(connect_request(host, port, proxy.auth))
        answer = ConnectResponse()
        while not answer.feed(sock.recv(4096)):
            pass
    except ProxyError as exc:
        raise DialError("%s: %s" % (where, exc))
    except (OSError, socket.timeout) as exc:
        raise DialError("%s: %s" % (where, _reason(exc)))
    if answer.rest:          # the server speaks after us (TLS, the WebSocket upgrade)
        raise DialError("%s: data before the tunnel was used (%d bytes)" % (where, len(answer.rest)))
    logger.debug("%s: tunnel to %s open", where, _hostport(host, port))


def dial(url, proxy=None, ssl_context=None, timeout=10.0):
    """A connected socket for ``url`` (TLS done for ``wss://``), each step bounded by
    ``timeout`` seconds (left set on the socket); ``proxy``: a
    :class:`~sphincter_lib.proto.httpconnect.Proxy` to tunnel through, or None."""
    tls, host, port, _resource = parse_url(url)
    if proxy is None:
        sock = _tcp(host, port, timeout, "")
    else:
        sock = _tcp(proxy.host, proxy.port, timeout, "the proxy ")
    try:
        if proxy is not None:
            _tunnel(sock, proxy, host, port)
        if tls:
            context = ssl_context or tls_context()
            try:
                sock = context.wrap_socket(sock, server_hostname=host)
            except (ssl.SSLError, ssl.CertificateError, OSError, socket.timeout) as exc:
                raise DialError("TLS with %s failed: %s" % (_hostport(host, port), _reason(exc)))
    except BaseException:
        sock.close()
        raise
    return sock


# --- the relay link of ``sphincter connect``: TCP, or a WebSocket on the relay's HTTP port ----

class LinkRefused(Fatal, OSError):
    """The relay closed a source link over WebSocket with 4403 before anything else: it does
    not take source links there (``--ws-sources off``), or forbids this one; or with 4404: it
    took the link for a subscriber's (a relay without source links). Retrying cannot help."""


class WsStream:
    """A source link over WebSocket (``--relay ws://...``/``wss://...``) as the socket the relay
    link's code reads and writes: the TCP source port's byte stream in binary messages, an empty
    binary message for the end of one direction (``shutdown(SHUT_WR)``), the close frame for the
    end of the link (docs/PROTOCOL.md, "Source links over WebSocket")."""

    #: largest message sent (the relay takes at least 1 MiB)
    max_send = 64 * 1024

    def __init__(self, conn):
        self.conn = conn
        self._buf = b""
        self._eof = False            # the relay's FIN, close frame or end of connection
        self._heard = False          # the relay sent something already
        self._fin_sent = False

    def recv(self, size):
        """Up to ``size`` bytes; ``b""`` at the relay's end; ``socket.timeout`` after
        :meth:`settimeout`'s seconds. :class:`LinkRefused` for a refused link."""
        while not self._buf:
            if self._eof:
                return b""
            try:
                opcode, payload = self.conn.recv()
            except ConnectionClosed as exc:
                self._eof = True
                if exc.code == CloseCode.FORBIDDEN and not self._heard:
                    hint = ": it needs --ws-sources on" if exc.reason == "source links are off" else ""
                    raise LinkRefused("the relay refused the source link over WebSocket (close %d "
                                      "%s)%s" % (exc.code, exc.reason, hint))
                if exc.code == CloseCode.ROOM_NOT_FOUND and not self._heard:
                    raise LinkRefused("the relay took the source link for a subscriber (close %d %s): "
                                      "a relay older than source links over WebSocket?" % (
                                          exc.code, exc.reason))
                return b""
            self._heard = True
            if not payload and opcode == BINARY:
                self._eof = True             # the relay's FIN
                return b""
            self._buf = payload
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def sendall(self, data):
        view = memoryview(data)
        for start in range(0, len(view), self.max_send):
            if self.conn.sock is None or self.conn.session.closed or self._fin_sent:
                raise BrokenPipeError(32, "the source link is closed")
            self.conn.send(bytes(view[start:start + self.max_send]), text=False)

    def shutdown(self, how):
        """``SHUT_WR``: our FIN (an empty message), reading goes on; else end the link now."""
        if how == socket.SHUT_WR:
            if not self._fin_sent:
                self.conn.send(b"", text=False)
                self._fin_sent = True
            return
        self._eof = True
        if self.conn.sock is not None:
            self.conn.sock.shutdown(how)      # wakes a reader (OSError if already gone)

    def settimeout(self, seconds):
        if self.conn.sock is not None:
            self.conn.sock.settimeout(seconds)

    def setsockopt(self, *args):
        if self.conn.sock is not None:
            self.conn.sock.setsockopt(*args)

    def close(self):
        self.conn.close()


_contexts = {}


def _context(ca_file):
    """One TLS client context per CA file (loading CAs for every session would cost)."""
    ctx = _contexts.get(ca_file)
    if ctx is None:
        ctx = _contexts[ca_file] = tls_context(ca_file)
    return ctx


def relay_socket(opts):
    """A connected link to the relay, ready for the source's first line, within
    ``--connect-timeout`` per step: TCP to its source port (TLS with ``--tls``), or, for
    ``--relay ws[s]://``, a :class:`WsStream` (through ``--proxy``/``HTTPS_PROXY``, TLS for wss)."""
    host, port = opts.relay
    url = getattr(opts, "relay_url", None)
    if url is None:
        sock = socket.create_connection((host, port), timeout=opts.connect_timeout)
        try:
            keepalive(sock, idle=20, interval=5, probes=4, nodelay=True)   # a vanished relay: ~40 s
            if opts.tls:
                ctx = ssl.create_default_context(cafile=opts.tls_ca or None)
                sock = ctx.wrap_socket(sock, server_hostname=opts.tls_server_name or host)
            return sock
        except BaseException:
            sock.close()
            raise
    ctx = _context(opts.tls_ca) if url.startswith("wss://") else None
    try:
        sock = dial(url, opts.proxy, ctx, opts.connect_timeout)
        keepalive(sock, idle=20, interval=5, probes=4, nodelay=True)
        conn = ClientConnection(url, timeout=opts.connect_timeout)
        conn.open(sock)                 # (closes the socket if the upgrade fails)
    except (DialError, HandshakeError) as exc:      # one line, an OSError as a TCP failure is
        raise ConnectionError(str(exc))
    return WsStream(conn)
