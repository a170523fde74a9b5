"""Process-wide counters, read at scrape time (``/healthz``, ``/metrics``).

Plain integer attributes and :class:`collections.Counter` objects, bumped on
the paths that already do the work (per message, per batch, per connection),
so keeping them costs no extra call on the hot path.
"""

import time
from collections import Counter


class Stats:
    def __init__(self, clock=time.time):
        self.started_at = clock()
        self.rooms_opened = 0
        self.rooms_closed = 0
        self.subscribers_joined = 0
        self.subscribers_left = 0
        self.slow_cutoffs = 0          # subscribers closed with 4408 (too far behind, or stalled)
        self.stall_cutoffs = 0         # of those, cut for making no progress (--stall-timeout)
        self.skipped_messages = 0      # messages 'skip' subscribers jumped over
        self.source_pauses = 0         # times a source's reader waited for its room's subscribers
        self.source_paused_seconds = 0.0   # time spent so, finished pauses
        self.resumes = 0               # sources that came back to their room (RESUME, named AUTH)
        self.takeovers = 0             # sources replaced by a newer one of the same room
        self.replayed_messages = 0     # messages replayed to subscribers as they joined
        self.writes_in = 0             # write-back messages from writers
        self.write_bytes = 0           # their bytes (lines framing: newline included)
        self.writes_out = 0            # write-back messages written to sources
        self.writer_pauses = 0         # writers paused because the queue toward the source was full
        self.messages_in = 0           # messages published by sources
        self.bytes_in = 0              # payload bytes published by sources
        self.messages_out = 0          # deliveries (message x subscriber)
        self.bytes_out = 0             # frame bytes written to subscribers
        # Redis mode (--redis-url)
        self.redis_batches_out = 0     # batches of messages published to Redis
        self.redis_batches_in = 0      # batches received from Redis for rooms whose source is elsewhere
        self.redis_messages_in = 0     # messages in those
        self.redis_gaps = 0            # batches found missing (subscribers closed 4408, or skipped)
        self.redis_reconnects = 0      # times this node found Redis unreachable
        # session rooms (--sessions)
        self.sessions_opened = 0       # sessions whose data link arrived
        self.sessions_ended = Counter()   # outcome -> sessions ended (or refused) so
        self.session_bytes_to_clients = 0
        self.session_bytes_from_clients = 0
        self.rejected = Counter()      # (kind, reason) -> connections refused
        self.close_codes = Counter()   # close code -> close frames sent
