"""obs-websocket 5 (OBS Studio's remote control protocol), the client side, sans-IO.

Written from obs-websocket's protocol document (``docs/generated/protocol.md``):
messages are JSON objects ``{"op": N, "d": {...}}`` over text frames with the
``obswebsocket.json`` subprotocol. The server greets with ``Hello`` (op 0),
optionally carrying an ``authentication`` challenge; the client answers with
``Identify`` (op 1: ``rpcVersion``, ``authentication``, ``eventSubscriptions``);
the server confirms with ``Identified`` (op 2). Then it sends events (op 5),
and answers requests (op 6) with responses (op 7), request batches (op 8)
with batch responses (op 9).

:class:`ObsSession` is fed each text message from OBS and each line a writer
sent through the relay, and says what to do with it: send a message to OBS,
relay a line into the room, or drop it (with the reason to log). It never
touches a socket.
"""

import base64
import hashlib
import json

from ..errors import SphincterError

SUBPROTOCOL = "obswebsocket.json"
RPC_VERSION = 1

HELLO, IDENTIFY, IDENTIFIED, REIDENTIFY = 0, 1, 2, 3
EVENT, REQUEST, REQUEST_RESPONSE, REQUEST_BATCH, REQUEST_BATCH_RESPONSE = 5, 6, 7, 8, 9

#: EventSubscription::All: every category that is not high-volume
#: (General | Config | Scenes | Inputs | Transitions | Filters | Outputs | SceneItems |
#: MediaInputs | Vendors | Ui)
EVENTS_ALL = (1 << 11) - 1

#: obs-websocket's close codes (WebSocketCloseCode) and what they mean to a user
CLOSE_CODES = {
    4000: "unknown reason",
    4002: "obs could not decode a message",
    4003: "a data field is missing",
    4004: "a data field has the wrong type",
    4005: "a data field has an invalid value",
    4006: "unknown op code",
    4007: "not identified",
    4008: "already identified",
    4009: "authentication failed: wrong obs-websocket password",
    4010: "unsupported rpc version",
    4011: "session invalidated (kicked from obs)",
    4012: "unsupported feature",
}
AUTHENTICATION_FAILED = 4009
#: OBS says: a client that gets this must not reconnect by itself
SESSION_INVALIDATED = 4011


class ObsError(SphincterError):
    """OBS said something that makes this session useless (one-line reason)."""


def describe_close(code):
    """A short phrase for an obs-websocket close code."""
    if code is None:
        return "connection ended"
    return "%d %s" % (code, CLOSE_CODES.get(code, "closed"))


def auth_string(password, salt, challenge):
    """``base64(sha256(base64(sha256(password + salt)) + challenge))`` (all UTF-8)."""
    secret = base64.b64encode(hashlib.sha256((password + salt).encode("utf-8")).digest())
    digest = hashlib.sha256(secret + challenge.encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def _decode(text):
    """A message as a dict with an int ``op`` and a dict ``d``; None if it is not one."""
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), int) or isinstance(msg.get("op"), bool):
        return None
    if not isinstance(msg.get("d", {}), dict):
        return None
    return msg


class ObsSession:
    """One connection to obs-websocket, from Hello to closed.

    ``password``: the obs-websocket password (None or "" when OBS has none);
    ``event_subscriptions``: the bitmask sent in Identify; ``allow_requests``:
    forward writers' requests (op 6 and 8) to OBS (otherwise they are dropped).

    Feed methods return a list of actions, each ``(kind, value)``:
    ``("send", text)`` a message to send to OBS, ``("relay", text)`` a line for
    the room, ``("drop", reason)`` something ignored (log it), ``("identified",
    rpc_version)`` the session is ready. :class:`ObsError` ends the session.
    """

    def __init__(self, password=None, event_subscriptions=EVENTS_ALL, allow_requests=False,
                 initial_requests=()):
        self.password = password or None
        self.event_subscriptions = event_subscriptions
        self.allow_requests = allow_requests
        #: request types (no data) sent right after Identified; their responses go to the room,
        #: so the room's last value is current from the start (e.g. GetCurrentProgramScene)
        self.initial_requests = tuple(initial_requests)
        self.state = "hello"          # -> "identifying" -> "identified"
        self.obs_version = None
        self.rpc_version = None

    @property
    def identified(self):
        return self.state == "identified"

    def from_obs(self, text):
        """A text message OBS sent."""
        msg = _decode(text)
        if msg is None:
            return [("drop", "obs sent a message that is not an obs-websocket object")]
        op, d = msg["op"], msg.get("d", {})
        if self.state == "hello":
            if op != HELLO:
                raise ObsError("obs sent op %d before hello" % op)
            return [("send", self._identify(d))]
        if self.state == "identifying":
            if op != IDENTIFIED:
                raise ObsError("obs sent op %d instead of identified" % op)
            self.state = "identified"
            self.rpc_version = d.get("negotiatedRpcVersion", RPC_VERSION)
            return [("identified", self.rpc_version)] + [
                ("send", json.dumps({"op": REQUEST, "d": {"requestType": kind, "requestId": "sphincter-%s" % kind}},
                                    separators=(",", ":")))
                for kind in self.initial_requests]
        if op in (EVENT, REQUEST_RESPONSE, REQUEST_BATCH_RESPONSE):
            return [("relay", text)]     # unchanged: one JSON text line
        if op == IDENTIFIED:
            return []                    # the answer to a Reidentify
        return [("drop", "obs sent op %d" % op)]

    def _identify(self, d):
        self.obs_version = d.get("obsWebSocketVersion")
        server_rpc = d.get("rpcVersion", RPC_VERSION)
        data = {"rpcVersion": min(RPC_VERSION, server_rpc) if isinstance(server_rpc, int) else RPC_VERSION,
                "eventSubscriptions": self.event_subscriptions}
        auth = d.get("authentication")
        if auth is not None:
            if not isinstance(auth, dict) or not isinstance(auth.get("salt"), str) \
                    or not isinstance(auth.get("challenge"), str):
                raise ObsError("obs sent a malformed authentication challenge")
            if self.password is None:
                raise ObsError("obs requires a password: set --obs-password or SPHINCTER_OBS_PASSWORD")
            data["authentication"] = auth_string(self.password, auth["salt"], auth["challenge"])
        self.state = "identifying"
        return json.dumps({"op": IDENTIFY, "d": data}, separators=(",", ":"))

    def from_room(self, line):
        """A line (bytes or str, without its newline) a writer sent through the relay."""
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                return [("drop", "write-back line is not utf-8")]
        line = line.strip()
        if not line:
            return []
        msg = _decode(line)
        if msg is None:
            return [("drop", "write-back line is not an obs-websocket message")]
        op = msg["op"]
        if op not in (REQUEST, REQUEST_BATCH):
            return [("drop", "writers may only send requests (op 6/8), not op %d" % op)]
        if not self.allow_requests:
            return [("drop", "obs request from a writer dropped (start with --obs-allow-requests)")]
        if not self.identified:
            return [("drop", "obs request dropped: not connected to obs")]
        return [("send", line)]
