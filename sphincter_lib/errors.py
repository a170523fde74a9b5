"""The exception tree of Sphincter: its root and the errors the relay's sides share.

::

    SphincterError
    ├── ConfigError          a bad option value; cli exits 2 with one line
    ├── BindError            a listening address could not be bound; exit 1
    ├── RoomError            a room could not be opened or joined
    │   ├── RoomLimitError   --max-rooms reached
    │   ├── RoomFullError    --max-subscribers-per-room reached (close 4429)
    │   ├── RoomNotFound     unknown or closed code (close 4404)
    │   ├── CannotResume     a RESUME line with a wrong key, an unknown or expired code
    │   ├── ShuttingDown     the server is stopping
    │   └── RelayUnavailable Redis mode: Redis cannot be reached now (close 1013)
    ├── ProtocolError        a peer broke the WebSocket protocol; carries the close code
    │
    │   defined next to the one module that raises them:
    ├── ObsError             proto/obsws.py: OBS said something that makes the session useless
    ├── ProxyError           proto/httpconnect.py: an HTTP proxy gave no CONNECT tunnel
    ├── HandshakeError       agent/wsclient.py: a WebSocket server refused the upgrade
    ├── ConnectionClosed     agent/wsclient.py: the WebSocket connection is closed
    ├── RelayRefused         agent/relay_link.py: the relay refused the source (``ERROR``)
    ├── RetryNow             agent/connect.py: open again at once (the relay forgot the room)
    └── Fatal                agent/local.py: retrying cannot help: stop with an exit status

Outside the tree: ``proto.resp.RespError`` (Redis sent bytes that are not RESP; the
Redis link drops the connection), so no ``except SphincterError`` catches it.
"""


class SphincterError(Exception):
    """Base of every error Sphincter raises on purpose."""


class ConfigError(SphincterError):
    """A configuration value is invalid. The message names the option."""


class BindError(SphincterError):
    """A listener could not bind. The message names the address."""


class RoomError(SphincterError):
    """A room could not be opened or joined."""

    #: the short reason sent to a source in ``ERROR <reason>``
    reason = "room error"

    def __init__(self, reason=None):
        super().__init__(reason or self.reason)
        if reason:
            self.reason = reason


class RoomLimitError(RoomError):
    reason = "too many rooms"


class RoomFullError(RoomError):
    reason = "room full"


class RoomNotFound(RoomError):
    reason = "unknown room"


class CannotResume(RoomError):
    reason = "cannot resume"


class ShuttingDown(RoomError):
    reason = "server shutting down"


class RelayUnavailable(RoomError):
    reason = "relay unavailable"


class ProtocolError(SphincterError):
    """A WebSocket peer violated the protocol; ``code`` is the close code to send."""

    def __init__(self, code, reason):
        super().__init__("%d %s" % (code, reason))
        self.code = code
        self.reason = reason
