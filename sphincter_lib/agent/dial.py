"""Open a connection to a ``ws://`` or ``wss://`` URL's server, ready for the WebSocket upgrade.

TCP to the URL's host, or to an HTTP proxy that opens a ``CONNECT`` tunnel to it (the
request and the answer: :mod:`..proto.httpconnect`); then, for ``wss://``, TLS with the
host name checked (the system's CAs, or ``--tls-ca``). Every failure is a :class:`DialError`
whose text is one line naming what failed: the name lookup, the TCP connection (to the host
or to the proxy), the proxy's answer or the TLS handshake. ``sphincter pipe`` uses it, and
``sphincter connect`` can for a relay reached on 443 only.
"""

import logging
import re
import socket
import ssl

from ..errors import SphincterError
from ..proto.httpconnect import ConnectResponse, ProxyError, connect_request
from .wsclient import parse_url

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
