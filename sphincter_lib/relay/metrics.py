"""``GET /metrics``: Prometheus exposition through ``prometheus_client``.

Nothing here runs on the data path. :class:`RelayCollector` reads the process-wide
:class:`~sphincter_lib.rooms.stats.Stats` counters and walks the live rooms only when Prometheus
scrapes; the relay bumps plain integers as it already does. No room code appears in any label,
so the endpoint can be public without leaking codes.

Exposed, every name with the ``sphincter_`` prefix (a test checks this list and the README's
table against what a scrape yields):

- gauges: ``rooms_open``, ``rooms_waiting``, ``rooms_named``, ``subscribers``,
  ``websocket_connections``, ``backlog_bytes``, ``sources_paused``, ``subscriber_lag_bytes_max``,
  ``start_time_seconds``;
- counters: ``rooms_opened_total``, ``rooms_closed_total``, ``subscribers_joined_total``,
  ``subscribers_left_total``, ``messages_in_total``, ``bytes_in_total``, ``messages_out_total``,
  ``bytes_out_total``, ``slow_subscribers_cut_total``, ``stall_cutoffs_total``,
  ``skipped_messages_total``, ``source_pauses_total``, ``source_paused_seconds_total``,
  ``room_resumes_total``, ``room_takeovers_total``, ``replayed_messages_total``;
  write-back (``--write-back``): ``write_back_messages_received_total``,
  ``write_back_received_bytes_total``, ``write_back_messages_sent_total``,
  ``write_back_writer_pauses_total``;
  ``rejected_connections_total{kind,reason}``, ``close_codes_total{code}``;
  session rooms (``--sessions``): ``session_rooms``, ``sessions_open`` (gauges),
  ``sessions_opened_total``, ``sessions_ended_total{outcome}``, ``session_bytes_to_clients_total``,
  ``session_bytes_from_clients_total``;
- info: ``build_info{version,python,gevent}``;
- Redis mode only (``--redis-url``): ``node_info{node}``, ``redis_up`` (gauge),
  ``redis_batches_published_total``, ``redis_batches_received_total``,
  ``redis_messages_received_total``, ``redis_gaps_total``, ``redis_outages_total``;

plus the standard ``process_*`` and ``python_info`` collectors.
"""

import platform

import gevent
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .. import __version__

__all__ = ["RelayCollector", "make_registry", "routes"]

PREFIX = "sphincter_"

#: (Stats attribute, metric name without _total, help)
COUNTERS = (
    ("rooms_opened", "rooms_opened", "Rooms opened (sources that got a code)."),
    ("rooms_closed", "rooms_closed", "Rooms closed."),
    ("subscribers_joined", "subscribers_joined", "Subscribers that joined a room."),
    ("subscribers_left", "subscribers_left", "Subscribers that left or were closed."),
    ("messages_in", "messages_in", "Messages published by sources."),
    ("bytes_in", "bytes_in", "Payload bytes published by sources."),
    ("messages_out", "messages_out", "Messages delivered to subscribers (message x subscriber)."),
    ("bytes_out", "bytes_out", "WebSocket frame bytes written to subscribers."),
    ("slow_cutoffs", "slow_subscribers_cut", "Subscribers cut off as too slow (close 4408)."),
    ("stall_cutoffs", "stall_cutoffs", "Subscribers cut off for making no progress with data "
     "waiting (--stall-timeout; close 4408; also counted in slow_subscribers_cut)."),
    ("skipped_messages", "skipped_messages", "Messages 'skip' subscribers jumped over "
     "(--slow-policy skip)."),
    ("source_pauses", "source_pauses", "Times a source's reader waited for its room's fastest "
     "subscriber (flow control)."),
    ("resumes", "room_resumes", "Sources that came back to their room (RESUME, or a named room's "
     "AUTH after its source left)."),
    ("takeovers", "room_takeovers", "Sources replaced by a newer source of the same room."),
    ("replayed_messages", "replayed_messages", "Messages replayed to subscribers as they joined."),
    # write-back (--write-back): in Redis mode, received on the writer's node, sent on the source's
    ("writes_in", "write_back_messages_received", "Write-back messages received from writers."),
    ("write_bytes", "write_back_received_bytes", "Bytes of those (--framing lines: with the newline "
     "added for the source)."),
    ("writes_out", "write_back_messages_sent", "Write-back messages written to sources."),
    ("writer_pauses", "write_back_writer_pauses", "Times a writer was paused because the queue "
     "toward its source was full (--write-queue-bytes)."),
    # session rooms (--sessions)
    ("sessions_opened", "sessions_opened", "Sessions opened (the agent's data link arrived)."),
    ("session_bytes_to_clients", "session_bytes_to_clients", "Session bytes from services to clients."),
    ("session_bytes_from_clients", "session_bytes_from_clients", "Session bytes from clients to "
     "services."),
)

#: Redis mode only (--redis-url)
REDIS_COUNTERS = (
    ("redis_batches_out", "redis_batches_published", "Batches of messages this node published to Redis "
     "(one per source read)."),
    ("redis_batches_in", "redis_batches_received", "Batches received from Redis for rooms whose source "
     "is on another node."),
    ("redis_messages_in", "redis_messages_received", "Messages in those batches."),
    ("redis_gaps", "redis_gaps", "Times a room found batches missing from Redis (its subscribers here "
     "were closed 4408, or skipped)."),
    ("redis_reconnects", "redis_outages", "Times this node lost Redis."),
)


class RelayCollector:
    """Reads the relay's state at scrape time.

    ``registry`` is the :class:`~sphincter_lib.rooms.interface.RoomModel` (its ``stats`` are read too);
    ``connections`` (optional) returns the number of open WebSocket connections.
    """

    def __init__(self, registry, connections=None, tunnels=None):
        self.registry = registry
        #: session rooms (``tunnel.TunnelHub``), None with --sessions off
        self.tunnels = tunnels
        self.stats = registry.stats
        self.connections = connections

    def describe(self):
        # collect() is cheap and has no side effects, but describing lets the registry check
        # names at registration without a scrape.
        return list(self.collect())

    def collect(self):
        stats, registry = self.stats, self.registry
        rooms = registry.rooms()
        yield _gauge("rooms_open", "Rooms open now (live or waiting for their source; named ones "
                     "included).", len(rooms))
        yield _gauge("rooms_waiting", "Rooms waiting for their source now (named, or in their grace "
                     "period).", sum(1 for r in rooms if r.state == "waiting"))
        yield _gauge("rooms_named", "Named rooms configured (--rooms-file).",
                     getattr(registry, "named_count", 0))
        yield _gauge("subscribers", "Subscribers connected to a room now.", registry.subscriber_count)
        if self.connections is not None:
            yield _gauge("websocket_connections", "Open WebSocket connections (including ones "
                         "being refused or closed).", self.connections())
        backlog = 0
        lag_max = 0
        paused = 0
        paused_seconds = stats.source_paused_seconds
        for room in rooms:
            backlog += room.backlog_bytes
            if room.source_paused:
                paused += 1
                paused_seconds += room.paused_for() - room.paused_seconds
            lag_max = max(lag_max, room.lag_max())
        yield _gauge("backlog_bytes", "Bytes queued in room backlogs, not yet sent to every "
                     "subscriber.", backlog)
        yield _gauge("sources_paused", "Sources whose reader waits now for its room's fastest "
                     "subscriber (flow control).", paused)
        yield CounterMetricFamily(PREFIX + "source_paused_seconds", "Time sources' readers spent "
                                  "waiting for their rooms' fastest subscribers.", value=paused_seconds)
        yield _gauge("subscriber_lag_bytes_max", "Bytes the furthest-behind subscriber still has "
                     "to receive.", lag_max)
        for attr, name, help_text in COUNTERS:
            yield CounterMetricFamily(PREFIX + name, help_text, value=getattr(stats, attr))
        rejected = CounterMetricFamily(PREFIX + "rejected_connections",
                                       "Connections refused, by kind (source, subscriber, api) "
                                       "and reason.", labels=("kind", "reason"))
        for key, n in sorted(stats.rejected.items(), key=lambda kv: tuple(map(str, kv[0]))):
            kind, reason = key if isinstance(key, tuple) and len(key) == 2 else ("", key)
            rejected.add_metric((str(kind), str(reason)), n)
        yield rejected
        ended = CounterMetricFamily(PREFIX + "sessions_ended", "Sessions ended or refused, by outcome "
                                    "(client_closed, service_closed, refused, timeout, ...).",
                                    labels=("outcome",))
        for outcome, n in sorted(stats.sessions_ended.items()):
            ended.add_metric((str(outcome),), n)
        yield ended
        rooms_s = self.tunnels.rooms if self.tunnels is not None else None   # (a hub or a _Late)
        yield _gauge("session_rooms", "Session rooms open now (--sessions).",
                     len(rooms_s) if rooms_s is not None else 0)
        yield _gauge("sessions_open", "Sessions open now (--sessions).",
                     rooms_s.total if rooms_s is not None else 0)
        codes = CounterMetricFamily(PREFIX + "close_codes", "WebSocket close frames sent, by code.",
                                    labels=("code",))
        for code, n in sorted(stats.close_codes.items(), key=lambda kv: str(kv[0])):
            codes.add_metric((str(code),), n)
        yield codes
        if registry.node is not None:
            node = InfoMetricFamily(PREFIX + "node", "This node of a relay sharing rooms through Redis.")
            node.add_metric((), {"node": registry.node})
            yield node
            yield _gauge("redis_up", "1 while this node reaches Redis, 0 otherwise.",
                         1 if registry.redis_state == "ok" else 0)
            for attr, name, help_text in REDIS_COUNTERS:
                yield CounterMetricFamily(PREFIX + name, help_text, value=getattr(stats, attr))
        yield _gauge("start_time_seconds", "When the relay started (Unix time).", stats.started_at)
        info = InfoMetricFamily(PREFIX + "build", "Sphincter build information.")
        info.add_metric((), {"version": __version__, "python": platform.python_version(),
                             "gevent": gevent.__version__})
        yield info


class _Late:
    """The session rooms' hub, looked up at scrape time (it is wired after the routes)."""

    def __init__(self, get):
        self.get = get or (lambda: None)

    @property
    def rooms(self):
        hub = self.get()
        return hub.rooms if hub is not None else None


def _gauge(name, help_text, value):
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


def make_registry(registry, connections=None, process=True, tunnels=None):
    """A fresh :class:`prometheus_client.CollectorRegistry` (never the global one)."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(RelayCollector(registry, connections, tunnels))
    if process:
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
    return reg


def routes(registry, connections=None, tunnels=None):
    """``{"/metrics": wsgi_app}`` (prometheus_client's app: content negotiation, gzip).
    ``tunnels``: a callable returning the session rooms' hub (or None)."""
    app = make_wsgi_app(make_registry(registry, connections, tunnels=_Late(tunnels)))

    def metrics(environ, start_response):
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        return app(environ, start_response)

    return {"/metrics": metrics}
