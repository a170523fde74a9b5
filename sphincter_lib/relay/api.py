"""Admin API: ``GET /api/rooms`` and ``GET /api/rooms/CODE`` (JSON).

Off by default: without ``--admin-token`` both paths answer 404 exactly like any unknown path,
so a public relay neither lists its room codes nor reveals that the API exists. With a token,
a request must carry ``Authorization: Bearer <token>`` (compared in constant time); anything
else gets 401 with ``WWW-Authenticate: Bearer``, logged at INFO with the client's address
(behind a trusted proxy, the one it forwards: the web app's ``client``). Responses are
``no-store``.

A room is ``{"code", "opened_at" (ISO 8601 UTC), "opened_at_unix", "source" (peer address),
"subscribers", "peak_subscribers", "messages", "bytes", "backlog_bytes", "slow_cutoffs",
"skipped_messages", "source_paused" (its reader waits for the fastest subscriber now),
"source_pauses", "source_paused_seconds", "state" (live, waiting), "named", "source_present",
"resumes", "takeovers", "replayed_messages"}``. A session room (``--sessions``) is
``{"code", "kind": "sessions", "opened_at", "opened_at_unix", "source", "sessions" (open now),
"sessions_opened", "bytes_to_clients", "bytes_from_clients"}``; broadcast rooms have
``"kind": "broadcast"``.
"""

import hmac
import json
import logging
from datetime import datetime, timezone

from ..proto.addresses import client_address, peer_name
from ..errors import RelayUnavailable, RoomNotFound, ShuttingDown

logger = logging.getLogger("sphincter.relay.api")

__all__ = ["AdminApi", "routes", "room_info", "session_room_info"]

PREFIX = "/api/rooms"


def _iso(unix):
    """``2026-12-04T12:00:00Z``: a Unix time as the API shows it (UTC, whole seconds)."""
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def room_info(room):
    info = {
        "code": room.code,
        "kind": "broadcast",
        "state": room.state,
        "named": room.named,
        "source_present": room.source is not None,
        "opened_at": _iso(room.opened_at),
        "opened_at_unix": round(room.opened_at, 3),
        "source": room.peer,
        "subscribers": len(room.subscribers),
        "peak_subscribers": room.peak_subscribers,
        "messages": room.messages,
        "bytes": room.bytes,
        "backlog_bytes": room.backlog_bytes,
        "slow_cutoffs": room.slow_cutoffs,
        "skipped_messages": room.skipped,
        "source_paused": room.source_paused,
        "source_pauses": room.source_pauses,
        "source_paused_seconds": round(room.paused_for(), 3),
        "resumes": room.resumes,
        "takeovers": room.takeovers,
        "replayed_messages": room.replayed,
    }
    node = room.source_node
    if node is not None:                      # Redis mode: where its source is, every node's subscribers
        info["source_node"] = node or None
        relay = room.relay_subscribers
        info["relay_subscribers"] = relay if relay is not None else info["subscribers"]
    return info


def session_room_info(sroom):
    return {
        "code": sroom.code,
        "kind": "sessions",
        "opened_at": _iso(sroom.opened_at),
        "opened_at_unix": round(sroom.opened_at, 3),
        "source": sroom.peer,
        "sessions": len(sroom.sessions),
        "sessions_opened": sroom.opened,
        "bytes_to_clients": sroom.bytes_to_clients,
        "bytes_from_clients": sroom.bytes_from_clients,
    }


class AdminApi:
    """The two routes, guarded by ``token`` (str; empty or None: the API is off).

    ``client(environ)`` is the client's address (see ``addresses.client_address``; None when a
    trusted proxy did not say); the default believes no proxy."""

    def __init__(self, registry, token, client=None, tunnels=None):
        self.registry = registry
        #: a callable returning the session rooms' hub (None with --sessions off)
        self.tunnels = tunnels or (lambda: None)
        self.stats = registry.stats
        self._token = token.encode("utf-8") if token else None
        self.client = client or (lambda environ: client_address(environ, ()))

    @property
    def enabled(self):
        return self._token is not None

    def routes(self):
        # "/api/rooms/*" is a one-segment wildcard in the web app's route table
        return {PREFIX: self, PREFIX + "/*": self}

    def __call__(self, environ, start_response):
        if not self.enabled:
            return _respond(start_response, "404 Not Found", "not found\n", "text/plain; charset=utf-8")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed", {"error": "method not allowed"},
                            extra=[("Allow", "GET, HEAD")])
        if not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            self.stats.rejected["api", "unauthorized"] += 1
            logger.info("api: unauthorized request from %s",
                        peer_name(environ, self.client(environ)) or "?")
            return _respond(start_response, "401 Unauthorized", {"error": "unauthorized"},
                            extra=[("WWW-Authenticate", 'Bearer realm="sphincter"')])
        path = (environ.get("PATH_INFO") or "").rstrip("/")
        if path == PREFIX:
            try:
                rooms = sorted(self.registry.listing(), key=lambda r: r.opened_at)
            except RelayUnavailable:
                return _respond(start_response, "503 Service Unavailable", {"error": "relay unavailable",
                                                                             "node": self.registry.node})
            listed = [room_info(r) for r in rooms] + [session_room_info(r) for r in self._session_rooms()]
            body = {"count": len(listed), "rooms": listed}
            if self.registry.node is not None:
                body["node"] = self.registry.node
            return _respond(start_response, "200 OK", body, head=_is_head(environ))
        code = path[len(PREFIX) + 1:]
        hub = self.tunnels()
        sroom = hub.rooms.find(code) if hub is not None else None
        if sroom is not None:
            return _respond(start_response, "200 OK", session_room_info(sroom), head=_is_head(environ))
        try:
            room = self.registry.get(code)
        except RoomNotFound:
            return _respond(start_response, "404 Not Found", {"error": "unknown room"})
        except ShuttingDown:
            return _respond(start_response, "503 Service Unavailable", {"error": "shutting down"})
        except RelayUnavailable:
            return _respond(start_response, "503 Service Unavailable", {"error": "relay unavailable"})
        info = room_info(room)
        if self.registry.node is not None:
            info["node"] = self.registry.node
        return _respond(start_response, "200 OK", info, head=_is_head(environ))

    def _session_rooms(self):
        hub = self.tunnels()
        return sorted(hub.rooms.rooms.values(), key=lambda r: r.opened_at) if hub is not None else []

    def _authorized(self, header):
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8"), self._token)


def _is_head(environ):
    return environ.get("REQUEST_METHOD") == "HEAD"


def _respond(start_response, status, body, ctype="application/json", extra=(), head=False):
    data = (body if isinstance(body, str) else json.dumps(body, indent=1) + "\n").encode("utf-8")
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store"), *extra])
    return [b""] if head else [data]


def routes(registry, token, client=None, tunnels=None):
    return AdminApi(registry, token, client, tunnels).routes()
