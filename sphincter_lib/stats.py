"""Process-wide counters, read at scrape time (``/healthz``, later ``/metrics``).

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
        self.slow_cutoffs = 0          # subscribers closed with 4408
        self.messages_in = 0           # messages published by sources
        self.bytes_in = 0              # payload bytes published by sources
        self.messages_out = 0          # deliveries (message x subscriber)
        self.bytes_out = 0             # frame bytes written to subscribers
        self.rejected = Counter()      # (kind, reason) -> connections refused
        self.close_codes = Counter()   # close code -> close frames sent
