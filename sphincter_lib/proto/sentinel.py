"""Redis Sentinel, sans-IO: the sentinels' addresses, their answers, which to ask next.

A node started with ``--redis-sentinels`` finds its Redis primary the way the Sentinel client
guidelines say (https://redis.io/docs/reference/sentinel-clients/): ask each sentinel in turn
``SENTINEL get-master-addr-by-name NAME`` (:func:`master_query`, :func:`master_address`), take
the first address one gives, move that sentinel to the front of the list (:class:`Sentinels`),
then connect to the address and check with ``ROLE`` that it is a primary (:func:`role`) before
using it: a sentinel may still name a primary that was demoted. On a lost connection or a
``-READONLY`` answer (:func:`is_readonly`) the node asks again. The I/O is ``cluster.link``'s.
"""

from . import resp

__all__ = ["DEFAULT_PORT", "SentinelError", "parse_sentinels", "Sentinels", "master_query",
           "master_address", "role", "is_readonly", "SWITCH_CHANNEL", "switch_query", "switched"]

#: a sentinel's port when HOST is given alone
DEFAULT_PORT = 26379


class SentinelError(ValueError):
    """A sentinel's answer that names no primary (one line, for the log)."""


def _address(item):
    """``HOST[:PORT]`` or ``[IPV6][:PORT]`` → (host, port); ValueError."""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise ValueError("invalid sentinel address %r (expected HOST:PORT or [IPV6]:PORT)" % item)
        port = rest[1:]
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host or ":" in host or any(c.isspace() or c in "/@" for c in host):
            raise ValueError("invalid sentinel address %r (expected HOST:PORT or [IPV6]:PORT)" % item)
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError("invalid sentinel port in %r (1-65535)" % item)
    return host, int(port)


def parse_sentinels(text):
    """``HOST:PORT[,HOST:PORT...]`` (PORT defaults to 26379) → a tuple of (host, port), in the
    given order, without repeats; () for an empty text; ValueError with one line."""
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        address = _address(item)
        if address not in out:
            out.append(address)
    return tuple(out)


class Sentinels:
    """The sentinels, in the order to ask them: the last one that named a primary first."""

    def __init__(self, addresses):
        if not addresses:
            raise ValueError("no sentinel")
        self.addresses = list(addresses)

    def __iter__(self):
        """A snapshot of the current order (the list may be reordered while it is walked)."""
        return iter(list(self.addresses))

    def answered(self, address):
        """``address`` named the primary: ask it first next time."""
        if address in self.addresses and self.addresses[0] != address:
            self.addresses.remove(address)
            self.addresses.insert(0, address)

    def __str__(self):
        return ",".join(("[%s]:%d" if ":" in h else "%s:%d") % (h, p) for h, p in self.addresses)


def master_query(name):
    """The command asking a sentinel where primary ``name`` is."""
    return resp.command("SENTINEL", "get-master-addr-by-name", name)


def master_address(reply):
    """A sentinel's answer to :func:`master_query` → (host, port); SentinelError when it names
    none (it does not monitor that name: a nil; an error reply; anything else)."""
    if reply is None:
        raise SentinelError("it does not know that primary")
    if isinstance(reply, resp.Error):
        raise SentinelError("it answered: %s" % reply.message)
    if not isinstance(reply, list) or len(reply) != 2 or not all(isinstance(x, bytes) for x in reply):
        raise SentinelError("unexpected answer %r" % (reply,))
    host, port = reply[0].decode("ascii", "replace"), reply[1]
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise SentinelError("unexpected address %r" % (reply,))
    return host, int(port)


def role(reply):
    """The role in an answer to ``ROLE``: ``"master"``, ``"slave"``, ``"sentinel"``; ``""`` for
    an answer that is not one (an error: an old server, or a refused command)."""
    if isinstance(reply, list) and reply and isinstance(reply[0], bytes):
        return reply[0].decode("ascii", "replace")
    return ""


def is_readonly(reply):
    """An error reply meaning "this server is a replica now" (the primary was demoted)."""
    return isinstance(reply, resp.Error) and reply.message.startswith("READONLY")


#: the sentinels' channel announcing a failover's end: ``NAME OLD_IP OLD_PORT NEW_IP NEW_PORT``
SWITCH_CHANNEL = "+switch-master"


def switch_query():
    """The command that makes a sentinel connection announce every failover (pub/sub)."""
    return resp.command("SUBSCRIBE", SWITCH_CHANNEL)


def switched(push, name):
    """A pub/sub push from a sentinel → (host, port) of primary ``name``'s new address when it is
    a ``+switch-master`` for that name; None for anything else (another primary, a confirmation)."""
    if not isinstance(push, list) or len(push) != 3 or push[0] != b"message":
        return None
    if push[1] != SWITCH_CHANNEL.encode() or not isinstance(push[2], bytes):
        return None
    parts = push[2].decode("utf-8", "replace").split()
    if len(parts) != 5 or parts[0] != name or not parts[4].isdigit() or not 0 < int(parts[4]) <= 65535:
        return None
    return parts[3], int(parts[4])
