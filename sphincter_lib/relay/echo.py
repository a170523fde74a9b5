"""TESTING ONLY: an echo WebSocket endpoint on Sphincter's own WebSocket layer.

Mounted at :data:`ECHO_PATH` only with the hidden ``--test-echo-endpoint on``
(never in production); it exists so an independent conformance suite
(Autobahn|Testsuite's fuzzingclient, ``tests/relay/test_autobahn.py``) exercises
exactly the code subscribers meet: ``ws.Handler``'s handshake,
``wsconn.ServerConnection``, ``wssession.ServerSession`` and the ``proto.frames`` parser and
encoders.

One greenlet per connection is both the reader and the only writer; the
session answers pings and closes, this module only echoes data messages.
"""

import logging

from ..proto import frames
from .wsconn import close_blocking
from ..proto.wssession import OPEN, ServerSession

logger = logging.getLogger("sphincter.relay.echo")

ECHO_PATH = "/_test/echo"


class EchoEndpoint:
    """WSGI callable for :data:`ECHO_PATH`: echo every data message, answer pings,
    answer a close with the peer's code, fail protocol errors with their code."""

    #: largest message echoed (Autobahn's biggest is 16 MiB); bigger: close 1009
    max_message_bytes = 32 << 20

    def __init__(self, close_timeout=5.0, max_message_bytes=None):
        self.close_timeout = close_timeout
        if max_message_bytes is not None:
            self.max_message_bytes = max_message_bytes

    def __call__(self, environ, start_response):
        conn = environ.get("wsgi.websocket")
        if conn is None:
            body = b"echo endpoint: WebSocket only\n"
            start_response("400 Bad Request", [("Content-Type", "text/plain"),
                                               ("Content-Length", str(len(body)))])
            return [body]
        try:
            self.run(conn)
        finally:
            conn.close()
        return []

    def run(self, conn):
        ws = ServerSession(max_message_bytes=self.max_message_bytes)

        def echo(opcode, payload):
            ws.send_message(payload, opcode == frames.TEXT)

        while ws.state is OPEN:
            data = conn.recv()
            if not data:
                ws.receive_eof()
                return
            ws.receive_data(data, echo)
            if ws.state is OPEN and ws.pending:
                try:
                    conn.sendall(ws.data_to_send())
                except OSError:
                    return
        if ws.failed:
            logger.debug("echo: protocol error %s %s", ws.close_code, ws.close_reason)
        close_blocking(conn, ws, self.close_timeout)    # the echoes, then the close frame
