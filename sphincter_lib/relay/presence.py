"""Presence: ``GET /status?room=CODE`` says whether a room's source is there (JSON).

The data stream stays exactly the source's bytes; a page that wants to tell
"the source is away" from "no data lately" asks this route instead::

    GET /status?room=scene
    200 {"room": "scene", "state": "waiting", "source": "offline", "named": true}

``state`` is ``live`` (a source feeds it) or ``waiting`` (named room without a
source, or an ephemeral room in its grace period); ``source`` is ``online`` or
``offline``. Long-poll: with ``&wait=SECONDS`` (at most :data:`MAX_WAIT`) and
``&source=online|offline`` (what the page knows), the answer comes as soon as
the source's presence differs from that, or when the wait is over. Each
waiting request holds a connection and a greenlet: at most ``max_waiting``
(``--max-presence-waits``) wait at once, further ones are answered at once
(``"waited": false``; clients then poll again a few seconds later). An unknown
or closed room is ``404 {"room": ..., "state": "unknown"}`` and counts as an
unknown-room attempt (the same per-address rate limit as ``/ws``, so the route
cannot be used to guess codes faster). Answers are ``no-store`` and allow any
origin (``Access-Control-Allow-Origin: *``): overlays are often served from
elsewhere.
"""

import json
from urllib.parse import parse_qs

from ..errors import RelayUnavailable, RoomNotFound, ShuttingDown

#: longest long-poll (seconds)
MAX_WAIT = 30.0
PATH = "/status"


def status(room):
    return {"room": room.code, "state": room.state, "source": room.presence, "named": room.named}


class PresenceRoute:
    """``/status``. ``refuse(environ)``: (status, body, headers) to refuse a request before anything
    (per-address limits), else None; ``unknown(environ)``: count an unknown-room attempt."""

    def __init__(self, registry, refuse=None, unknown=None, max_waiting=1000):
        self.registry = registry
        self.refuse = refuse
        self.unknown = unknown
        #: most long-polls waiting at once (each holds a connection and a greenlet)
        self.max_waiting = max_waiting
        self.waiting = 0

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed", {"error": "method not allowed"},
                            [("Allow", "GET, HEAD")])
        refusal = self.refuse(environ) if self.refuse is not None else None
        if refusal:
            status_line, text, headers = (tuple(refusal) + ((),))[:3]
            return _respond(start_response, status_line, {"error": text.strip()}, list(headers))
        query = parse_qs(environ.get("QUERY_STRING", ""))
        code = (query.get("room") or [""])[0]
        try:
            room = self.registry.get(code)
        except RoomNotFound:
            if self.unknown is not None:
                self.unknown(environ)
            return _respond(start_response, "404 Not Found", {"room": code, "state": "unknown"})
        except ShuttingDown:
            return _respond(start_response, "503 Service Unavailable", {"room": code, "state": "stopping"})
        except RelayUnavailable:
            return _respond(start_response, "503 Service Unavailable", {"room": code, "state": "unavailable"},
                            [("Retry-After", "2")])
        known = (query.get("source") or [""])[0]
        wait = _seconds((query.get("wait") or ["0"])[0])
        body = status(room)
        if wait and known == room.presence and room.state != "closed":
            if self.waiting >= self.max_waiting:
                body["waited"] = False
                return _respond(start_response, "200 OK", body)
            self.waiting += 1
            try:
                room.presence_changed().wait(wait)
            finally:
                self.waiting -= 1
            if room.state == "closed":
                return _respond(start_response, "404 Not Found", {"room": code, "state": "unknown"})
            body = status(room)
        return _respond(start_response, "200 OK", body)


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        return 0.0
    if value != value:
        return 0.0
    return max(0.0, min(MAX_WAIT, value))


def _respond(start_response, status_line, body, extra=()):
    data = (json.dumps(body) + "\n").encode("utf-8")
    start_response(status_line, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                 ("Cache-Control", "no-store"), ("Access-Control-Allow-Origin", "*")]
                   + list(extra))
    return [data]


def routes(registry, refuse=None, unknown=None, max_waiting=1000):
    return {PATH: PresenceRoute(registry, refuse, unknown, max_waiting)}
