"""TESTING ONLY: an echo WebSocket endpoint on Sphincter's own WebSocket layer.

Mounted at :data:`ECHO_PATH` only with the hidden ``--test-echo-endpoint on``
(never in production); it exists so an independent conformance suite
(Autobahn|Testsuite's fuzzingclient, ``tests/test_autobahn.py``) exercises
exactly the code subscribers meet: ``ws.Handler``'s handshake,
``ws.Connection`` and ``wsproto.FrameParser``/encoders.

One greenlet per connection is both the reader and the only writer.
"""

import logging

from . import wsproto

logger = logging.getLogger(__name__)

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
            conn.abort()
        return []

    def run(self, conn):
        parser = wsproto.FrameParser(max_message_bytes=self.max_message_bytes)
        while True:
            data = conn.recv()
            if not data:
                return
            events, error = parser.feed_partial(data)
            out = []
            for opcode, payload in events:
                if opcode == wsproto.TEXT or opcode == wsproto.BINARY:
                    frame = wsproto.encode_message(payload, opcode == wsproto.TEXT)
                    if frame.__class__ is tuple:          # a big frame: (header, payload)
                        out.extend(frame)
                    else:
                        out.append(frame)
                elif opcode == wsproto.PING:
                    out.append(wsproto.encode_pong(payload))
                elif opcode == wsproto.CLOSE:
                    code, _reason = wsproto.parse_close(payload)
                    conn.close_received = True
                    try:
                        if out:
                            conn.sendall(b"".join(out))
                        conn.send_close(code)
                    except OSError:
                        pass
                    return
            if out:
                try:
                    conn.sendall(b"".join(out))
                except OSError:
                    return
            if error is not None:
                logger.debug("echo: protocol error %d %s", error.code, error.reason)
                conn.close_received = parser.close_seen   # then there is no close to wait for
                conn.close_with(error.code, error.reason, self.close_timeout, failed=True)
                return
