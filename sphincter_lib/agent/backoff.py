"""Capped exponential backoff with jitter, for the agent's reconnecting links."""

import random


class Backoff:
    """Capped exponential backoff with jitter: ``next()`` is the next delay in seconds."""

    def __init__(self, minimum=0.5, maximum=30.0, rng=None):
        self.minimum, self.maximum = minimum, max(minimum, maximum)
        self.rng = rng or random.Random()
        self.failures = 0

    def next(self):
        ceiling = min(self.maximum, self.minimum * (2 ** min(self.failures, 30)))
        self.failures += 1
        return ceiling * self.rng.uniform(0.5, 1.0)

    def reset(self):
        self.failures = 0
