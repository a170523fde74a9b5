"""Security policy helpers: TLS contexts, source tokens, Origin allowlist,
per-IP connection caps and per-IP rate limiting.

Pure policy objects (no sockets, no gevent); ingest.py and web.py ask them
questions.  Every limit is a constructor parameter; clocks are injectable.

Brute-forcing room codes: a code is 6 symbols from a 31-symbol alphabet, so
31**6 = 887,503,681 codes.  With ``R`` live rooms a uniformly random guess hits
one with probability R / 31**6.  Unknown-room attempts are limited per client
address (IPv6: per /64) by a token bucket of ``rate`` attempts per second with a
burst of ``burst``; past that the upgrade is refused with HTTP 429 and no room
lookup happens (README "Security" has the arithmetic).
"""
import collections
import hmac
import ssl
import threading
import time

from ..proto.addresses import ip_key

CODE_SPACE = 31 ** 6


def server_ssl_context(certfile, keyfile, cafile=None):
    """A server-side TLS context (TLS 1.2+) from PEM files.

    Raises OSError / ssl.SSLError if the files are missing or do not match;
    config validation turns that into a one-line error."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if hasattr(ssl, "TLSVersion"):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    else:   # CPython 3.6: no minimum_version; PROTOCOL_TLS_SERVER already excludes SSLv2/3
        ctx.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    ctx.load_cert_chain(certfile, keyfile)
    if cafile:
        ctx.load_verify_locations(cafile)
    ctx.options |= getattr(ssl, "OP_NO_COMPRESSION", 0)
    return ctx


# ----------------------------------------------------------------- tokens

def parse_tokens(values):
    """Normalise configured tokens: a list/str of comma-separated tokens, or
    ``@path`` entries naming a file with one token per line.  Returns a tuple
    of bytes (empty: authentication off)."""
    if not values:
        return ()
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values:
        for item in str(value).split(","):
            item = item.strip()
            if not item:
                continue
            if item.startswith("@"):
                with open(item[1:], encoding="utf-8") as f:
                    out.extend(line.strip() for line in f
                               if line.strip() and not line.startswith("#"))
            else:
                out.append(item)
    for t in out:
        if any(c.isspace() for c in t):
            raise ValueError("source token must not contain whitespace")
    return tuple(t.encode("utf-8") for t in out)


def check_auth_line(line, tokens):
    """True if *line* (bytes, with or without the newline) is ``AUTH <token>``
    for one of *tokens*.  Compares against every token in constant time per
    token, with no early exit, so timing does not tell which prefix matched."""
    line = line.rstrip(b"\r\n")
    if not line.startswith(b"AUTH "):
        given = b""
        ok = False
    else:
        given = line[5:]
        ok = True
    match = False
    for token in tokens:
        match |= hmac.compare_digest(given, token)
    return ok and match


# ----------------------------------------------------------------- origins

def _norm_origin(origin):
    return origin.strip().rstrip("/").lower()


class OriginPolicy:
    """Origin allowlist.  Entries are exact origins (``https://example.com``,
    ``http://localhost:8080``), ``*.`` wildcards for subdomains
    (``https://*.example.com``) or ``*`` (anything, the default when empty).
    A missing Origin header (non-browser clients) is allowed unless
    *require_origin*."""

    def __init__(self, allowed=(), require_origin=False):
        self.allow_all = not allowed or "*" in allowed
        self.exact = set()
        self.suffixes = []
        for entry in allowed or ():
            e = _norm_origin(entry)
            if e == "*":
                continue
            scheme, sep, host = e.partition("://")
            if sep and host.startswith("*."):
                self.suffixes.append((scheme + "://", host[1:]))
            else:
                self.exact.add(e)
        self.require_origin = require_origin

    def allowed(self, origin):
        if not origin:
            return not self.require_origin or self.allow_all
        if self.allow_all:
            return True
        o = _norm_origin(origin)
        if o in self.exact:
            return True
        for scheme, suffix in self.suffixes:
            if o.startswith(scheme):
                host = o[len(scheme):]
                hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
                if hostname.endswith(suffix) and len(hostname) > len(suffix):
                    return True
        return False


# --------------------------------------------------------------- per-IP limits

#: the slot ``ConnectionCaps.acquire`` gives an unknown client (nothing counted)
UNCOUNTED = object()

class ConnectionCaps:
    """Concurrent connections per client key, at most *limit* (0 = unlimited).

    ``acquire(addr)`` returns a key to pass to ``release`` or None when the cap
    is reached.  An unknown client (*addr* None: a trusted proxy did not say
    who it is) is not counted and never refused: its key is :data:`UNCOUNTED`."""

    def __init__(self, limit):
        self.limit = limit
        self.counts = collections.Counter()
        self._lock = threading.Lock()

    def full(self, addr):
        """True if *addr* is at its cap (without taking a slot)."""
        key = ip_key(addr)
        return bool(self.limit) and key is not None and self.counts.get(key, 0) >= self.limit

    def acquire(self, addr, force=False):
        key = ip_key(addr)
        if key is None:
            return UNCOUNTED
        with self._lock:
            if self.limit and self.counts[key] >= self.limit and not force:
                return None
            self.counts[key] += 1
        return key

    def release(self, key):
        if key is None or key is UNCOUNTED:
            return
        with self._lock:
            self.counts[key] -= 1
            if self.counts[key] <= 0:
                del self.counts[key]

    def __len__(self):
        return len(self.counts)


class RateLimiter:
    """Token bucket per client key: *rate* events per second, bursts of
    *burst*; at most *max_keys* buckets (least recently used evicted, so an
    attacker with many addresses cannot grow memory).  rate <= 0: unlimited.
    An unknown client (*addr* None) is not limited."""

    def __init__(self, rate, burst, max_keys=65536, clock=time.monotonic):
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self.max_keys = max_keys
        self.clock = clock
        self.buckets = collections.OrderedDict()  # key -> (tokens, stamp)
        self._lock = threading.Lock()

    def allow(self, addr, cost=1.0):
        """Take *cost* tokens for *addr*; False if not enough are left."""
        key = ip_key(addr)
        if self.rate <= 0 or key is None:
            return True
        now = self.clock()
        with self._lock:
            tokens, stamp = self.buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - stamp) * self.rate)
            ok = tokens >= cost
            if ok:
                tokens -= cost
            self.buckets[key] = (tokens, now)
            while len(self.buckets) > self.max_keys:
                self.buckets.popitem(last=False)
        return ok

    def blocked(self, addr):
        """True if *addr* has no token left (without taking one)."""
        key = ip_key(addr)
        if self.rate <= 0 or key is None:
            return False
        now = self.clock()
        with self._lock:
            tokens, stamp = self.buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - stamp) * self.rate) < 1.0


def guess_time_seconds(live_rooms, rate_per_ip, addresses=1):
    """Expected seconds until a guesser at *rate_per_ip* from *addresses*
    clients hits any of *live_rooms* live codes (geometric: 1/p guesses)."""
    p = float(live_rooms) / CODE_SPACE
    return (1.0 / p) / (rate_per_ip * addresses)
