"""The only module that touches gevent-websocket.

gevent-websocket does the HTTP upgrade plumbing (its ``WebSocketHandler`` runs
the WSGI application with ``environ['wsgi.websocket']`` set). Everything else
is ours: :class:`Handler` replaces its handshake checks (clean 400/426 answers
with bytes bodies, HTTP/1.0 refused, bad keys refused), and :class:`ServerConnection`
replaces its ``WebSocket`` class with socket I/O only: the protocol (parsing,
pongs, the closing handshake with explicit close codes, which gevent-websocket
0.10.1 drops) is a sans-IO :class:`~sphincter_lib.proto.wssession.ServerSession`
that the endpoints (``web.py``, ``echo.py``) drive over a ServerConnection
(``relay/wsconn.py``, which imports nothing of gevent-websocket).
"""

import logging
import socket

import gevent
from gevent.pywsgi import WSGIHandler
from geventwebsocket.handler import WebSocketHandler

from ..proto import frames
from ..proto.addresses import format_peer
from .wsconn import ServerConnection

logger = logging.getLogger("sphincter.relay.ws")

_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 12\r\n\r\nbad request\n")
#: the subprotocol answered when a client offers it (every message is binary anyway)
BINARY_SUBPROTOCOL = "binary"
#: longest reason quoted from a malformed request in its log line
_MAX_REASON = 200



class Handler(WebSocketHandler):
    """Strict RFC 6455 handshake on ``ws_paths``; plain WSGI for everything else."""

    #: paths where an upgrade is attempted; other paths go to the WSGI app as is
    ws_paths = frozenset(["/ws"])
    #: seconds a connection has to deliver each request head (TLS handshake
    #: included, and the idle time before a keep-alive request); None: no limit
    handshake_timeout = None
    #: SO_SNDBUF of each upgraded connection (bytes); None: the kernel's autotuning
    send_buffer = None

    @classmethod
    def configured(cls, **attrs):
        """A subclass with some class attributes replaced (one per server)."""
        return type(cls.__name__, (cls,), attrs)

    def handle_one_request(self):
        # gevent's pywsgi has no deadline for the request head: a slowloris
        # client trickling header lines would hold its greenlet forever.
        timer = None
        if self.handshake_timeout:
            timer = self._handshake_timer = gevent.Timeout.start_new(self.handshake_timeout)
        try:
            return super().handle_one_request()
        except gevent.Timeout as t:
            if t is not timer:
                raise
            logger.debug("http %s: no request head within %ss", format_peer(self.client_address),
                         self.handshake_timeout)
            return None                         # handle() closes the socket
        finally:
            if timer is not None:
                timer.close()

    def _handle_client_error(self, ex):
        """A malformed or hostile request head (pywsgi's hook): a 400 and one line at INFO
        with the address and the reason. pywsgi would log it at ERROR, and print a traceback
        for errors that are not ValueErrors (e.g. more than 100 header lines)."""
        reason = getattr(ex, "formatted_message", None) or str(ex) or ex.__class__.__name__
        logger.info("http %s: bad request: %s", format_peer(self.client_address), _one_line(reason))
        return ("400", _BAD_REQUEST)

    def run_application(self):
        timer = getattr(self, "_handshake_timer", None)
        if timer is not None:
            timer.close()                       # the head is in: the session has no deadline
        # gevent-websocket's run_application, except that the 101 response is not written
        # before the application runs: the connection writes it (ServerConnection.accept) when the
        # application first uses it, so a subscriber is in its room once its handshake is done
        # (a shared room model admits it with a round trip to Redis first)
        self.result = self.upgrade_websocket()
        if getattr(self, "websocket", None) is not None:
            self.run_websocket()
            return None
        if self.status:
            if not self.result:
                self.result = []
            self.process_result()
            return None
        return WSGIHandler.run_application(self)

    @property
    def logger(self):        # gevent-websocket installs its own stderr handler otherwise
        return logger

    def log_request(self):
        if "101" not in str(self.status):
            WSGIHandler.log_request(self)

    def run_websocket(self):
        """Run the app on the upgraded connection (without gevent-websocket's per-server
        ``clients`` registry, which Sphincter does not use)."""
        try:
            for _ in self.application(self.environ, lambda status, headers, exc_info=None: None):
                pass
        finally:
            ws, self.websocket = self.websocket, None
            if ws is not None:             # None once the connection was detached
                ws.close()

    def upgrade_websocket(self):
        env = self.environ
        if env.get("PATH_INFO") not in self.ws_paths:
            return None
        if "websocket" not in env.get("HTTP_UPGRADE", "").lower():
            return None                        # the app answers 400: not an upgrade
        if env.get("REQUEST_METHOD") != "GET":
            return self._refuse("405 Method Not Allowed", "WebSocket upgrades use GET\n",
                                [("Allow", "GET")])
        if self.request_version != "HTTP/1.1":
            return self._refuse("400 Bad Request", "WebSocket upgrades need HTTP/1.1\n")
        tokens = [t.strip() for t in env.get("HTTP_CONNECTION", "").lower().split(",")]
        if "upgrade" not in tokens:
            return self._refuse("400 Bad Request", "missing 'Connection: Upgrade'\n")
        if env.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
            return self._refuse("426 Upgrade Required", "only WebSocket version 13 is supported\n",
                                [("Sec-WebSocket-Version", "13")])
        key = env.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        if not frames.valid_key(key):
            return self._refuse("400 Bad Request", "invalid Sec-WebSocket-Key\n")
        precheck = getattr(self.application, "precheck", None)
        refusal = precheck(env) if precheck is not None else None
        if refusal:                             # (status, body[, headers]): refused before upgrading
            return self._refuse(*refusal)
        if self.send_buffer:
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
            except OSError as exc:               # not fatal: the kernel's own size stays
                logger.debug("http %s: SO_SNDBUF not set: %s", format_peer(self.client_address), exc)
        self.websocket = ServerConnection(self)
        env["wsgi.websocket_version"] = "13"
        env["wsgi.websocket"] = self.websocket
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Accept", frames.accept_key(key))]
        offered = [p.strip() for p in env.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",")]
        if BINARY_SUBPROTOCOL in offered:      # websockify's clients (noVNC <= 1.1) insist on it
            headers.append(("Sec-WebSocket-Protocol", BINARY_SUBPROTOCOL))
        self.start_response("101 Switching Protocols", headers)
        return None

    def _refuse(self, status, body, headers=()):
        data = body.encode("utf-8")
        self.close_connection = True
        self.start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", str(len(data))),
                                     ("Connection", "close")] + list(headers))
        return [data]


def _one_line(text, limit=_MAX_REASON):
    """*text* (which may quote a client's bytes) safe for one log line: control characters
    escaped, at most *limit* characters."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")
