"""Every WebSocket close code Sphincter sends, in one place (docs/PROTOCOL.md has the table).

Codes below 4000 are RFC 6455's (section 7.4.1); the 4xxx codes are Sphincter's
own, each an HTTP status with the same meaning plus 4000. A client's close
code is echoed back as it came (any code a peer may send, see
:func:`sphincter_lib.proto.frames.valid_close_code`), so the codes on the wire are
these and whatever clients choose.
"""

from enum import IntEnum


class CloseCode(IntEnum):
    """A close code. ``str()`` gives the number on every Python (as on 3.11+)."""

    #: 1000: a normal closure (sent as the echo of a client's own 1000)
    NORMAL = 1000
    #: 1001: the server is shutting down; queued messages were delivered first
    GOING_AWAY = 1001
    #: 1002: the client broke the protocol (unmasked frame, reserved bits, bad opcode, ...)
    PROTOCOL_ERROR = 1002
    #: 1007: the client sent text that is not valid UTF-8 (a message or a close reason)
    INVALID_DATA = 1007
    #: 1009: the client sent a message bigger than the endpoint's limit
    MESSAGE_TOO_BIG = 1009
    #: 1011: the connection cannot go on; sent when a client leaves a ping unanswered
    #: for ``--ping-timeout`` seconds (reason ``ping timeout``)
    INTERNAL_ERROR = 1011
    #: 1013 (Try Again Later): Redis mode, the node cannot reach Redis now, so it cannot admit
    #: a subscriber (reason ``relay unavailable``); another node, or a retry, may
    TRY_AGAIN_LATER = 1013
    #: 4403: the ``Origin`` header is not in ``--allowed-origins``; or a wrong write key, or
    #: a write key for a room that takes no writers (the reason says which)
    FORBIDDEN = 4403
    #: 4404: no room has this code (never had, or it closed)
    ROOM_NOT_FOUND = 4404
    #: 4408: the subscriber is too slow: more than its buffer behind (reason ``too slow``),
    #: or it had data waiting and made no progress for ``--stall-timeout`` (``stalled``);
    #: Redis mode: its node lost messages of the room (``missed messages``) — never a gap
    TOO_SLOW = 4408
    #: 4410: the room's source closed (after everything queued was delivered)
    SOURCE_CLOSED = 4410
    #: 4429: the room already has ``--max-subscribers-per-room`` subscribers; a session room
    #: already has ``--max-sessions-per-room`` sessions (``too many sessions``), or the client's
    #: address opened sessions faster than ``--session-open-rate`` (``too many session opens``)
    ROOM_FULL = 4429
    #: 4502: a session room's agent could not reach its local service (the reason is the
    #: agent's, e.g. ``service unreachable: connection refused``), or has no control link
    SERVICE_UNREACHABLE = 4502
    #: 4503: the relay already has ``--max-sessions`` sessions open (``too many sessions``)
    RELAY_FULL = 4503
    #: 4504: a session room's agent did not open the session within ``--session-open-timeout``
    AGENT_TIMEOUT = 4504

    # Python < 3.11 would print "CloseCode.ROOM_FULL" (log lines, metric labels)
    __str__ = int.__repr__
    __format__ = int.__format__
