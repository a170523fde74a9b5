"""The ``--rooms-file`` format: named rooms, one per line (pure; no I/O but :func:`load`).

::

    # NAME    TOKEN                       [key=value ...]
    scene     s3cr3t-token-for-obs        replay=1
    scores    another-long-secret-token   replay=10 max-subscribers=500

``#`` starts a comment (at the start of a line or after white space); blank
lines are ignored. NAME: 3–32 characters from ``A-Z a-z 0-9 _ -``,
case-insensitive and unique. TOKEN: the secret a source presents with
``AUTH <TOKEN>``; at least 8 characters, no white space, unique. Options:

``replay=N``           the last N messages go to each subscriber that joins (default: ``--replay``)
``max-subscribers=N``  most subscribers at once (default: ``--max-subscribers-per-room``)
``slow-policy=cut|skip``  as ``--slow-policy``, for this room only
``write=KEY``          writers (``/ws?room=NAME&key=KEY``) reach the source; KEY: 16+ URL-safe
                       characters (``A-Z a-z 0-9 _ -``); default: a key made at start-up with
                       ``--write-back on``, no writers otherwise
``sessions=on|off``    ``on``: a session room (``connect --sessions --token TOKEN``: one TCP
                       connection to the agent's service per client, even with ``--sessions off``);
                       default ``off``: a broadcast room

A bad line raises :class:`~sphincter_lib.errors.ConfigError` naming the file
and line number.
"""

import re

from ..errors import ConfigError
from .roomcode import is_name

#: shortest token accepted in a rooms file
MIN_TOKEN = 8
#: largest replay=N
MAX_REPLAY = 100000


class RoomSpec:
    """One named room as configured: ``name`` (as written), ``key``, ``token`` (bytes), options."""

    __slots__ = ("name", "key", "token", "replay", "max_subscribers", "slow_policy", "write", "sessions",
                 "line")

    def __init__(self, name, token, replay=None, max_subscribers=None, slow_policy=None, write=None,
                 line=0, sessions=None):
        self.name = name
        self.key = name.upper()
        self.token = token
        self.replay = replay                    # None: the relay's --replay
        self.max_subscribers = max_subscribers  # None: --max-subscribers-per-room
        self.slow_policy = slow_policy          # None: --slow-policy
        self.write = write                      # the write key, or None
        self.sessions = sessions                # True: a session room (None, False: broadcast)
        self.line = line

    def __eq__(self, other):
        return isinstance(other, RoomSpec) and all(
            getattr(self, a) == getattr(other, a) for a in self.__slots__ if a != "line")

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "RoomSpec(%r, replay=%r)" % (self.name, self.replay)


def _number(value, lo, hi):
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise ValueError("must be a whole number from %d to %d" % (lo, hi))
    return int(value)


def _policy(value):
    if value not in ("cut", "skip"):
        raise ValueError("must be cut or skip")
    return value


_WRITE_KEY = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def _write_key(value):
    if not _WRITE_KEY.match(value):
        raise ValueError("must be 16-128 characters from A-Z a-z 0-9 _ -")
    return value


def _on_off(value):
    if value not in ("on", "off"):
        raise ValueError("must be on or off")
    return value == "on"


_OPTIONS = {
    "sessions": ("sessions", _on_off),
    "replay": ("replay", lambda v: _number(v, 0, MAX_REPLAY)),
    "max-subscribers": ("max_subscribers", lambda v: _number(v, 1, 10 ** 9)),
    "slow-policy": ("slow_policy", _policy),
    "write": ("write", _write_key),
}


def parse(text, filename="rooms file"):
    """The rooms in ``text``, in file order (a list of :class:`RoomSpec`)."""
    rooms, names, tokens = [], {}, {}
    for number, raw in enumerate(text.splitlines(), 1):
        where = "%s:%d" % (filename, number)
        fields = []
        for field in raw.split():
            if field.startswith("#"):          # a comment runs to the end of the line
                break
            fields.append(field)
        if not fields:
            continue
        if len(fields) < 2:
            raise ConfigError("%s: expected 'NAME TOKEN [key=value ...]'" % where)
        name, token = fields[0], fields[1]
        if not is_name(name):
            raise ConfigError("%s: invalid room name %r (3-32 characters from A-Z a-z 0-9 _ -)"
                              % (where, name))
        if len(token) < MIN_TOKEN:
            raise ConfigError("%s: token of room %s too short (at least %d characters)"
                              % (where, name, MIN_TOKEN))
        if name.upper() in names:
            raise ConfigError("%s: room %s already defined on line %d" % (where, name, names[name.upper()]))
        if token in tokens:
            raise ConfigError("%s: room %s has the same token as room %s (tokens must be unique)"
                              % (where, name, tokens[token]))
        spec = RoomSpec(name, token.encode("utf-8"), line=number)
        for item in fields[2:]:
            key, eq, value = item.partition("=")
            if not eq or key not in _OPTIONS:
                raise ConfigError("%s: unknown option %r (known: %s)"
                                  % (where, item, ", ".join(k + "=" for k in sorted(_OPTIONS))))
            attr, convert = _OPTIONS[key]
            try:
                setattr(spec, attr, convert(value))
            except ValueError as exc:
                raise ConfigError("%s: %s=%s: %s" % (where, key, value, exc))
        names[spec.key] = number
        tokens[token] = name
        rooms.append(spec)
    return rooms


def load(path):
    """Read and parse a rooms file; ConfigError (naming the file) if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read rooms file %s: %s" % (path, getattr(exc, "strerror", None) or exc))
    return parse(text, path)
