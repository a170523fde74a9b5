"""Redis Cluster, sans-IO: key slots, hash tags, the slot map, and routing pre-encoded commands.

A node given ``--redis-url`` of a Redis Cluster node (it answers ``INFO cluster`` with
``cluster_enabled:1``: :func:`cluster_enabled`) learns which primary serves which slots with
``CLUSTER SLOTS`` (:func:`parse_slots`, :class:`SlotMap`), and sends each command to the primary
of its key's slot (:func:`key_slot`: CRC16/XMODEM of the key, or of its hash tag ``{...}``, modulo
16384). Commands the node pre-encodes (``resp.command``) are routed by :func:`command_key`. A
``-MOVED``/``-ASK`` answer names another owner (:func:`redirection`). The I/O is ``cluster.shards``'.
"""

from . import resp

__all__ = ["SLOTS", "crc16", "key_slot", "cluster_enabled", "parse_slots", "SlotMap", "command_key",
           "redirection"]

#: slots of a Redis Cluster
SLOTS = 16384


def _table():
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _table()


def crc16(data):
    """CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster hashes keys with."""
    crc = 0
    table = _TABLE
    for byte in bytearray(data):
        crc = ((crc << 8) & 0xFF00) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def _bytes(key):
    return key if isinstance(key, bytes) else str(key).encode("utf-8")


def key_slot(key):
    """The slot of ``key`` (str or bytes): only the hash tag is hashed when the key has a
    non-empty ``{...}`` (the first ``{`` and the first ``}`` after it)."""
    key = _bytes(key)
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key) % SLOTS


def cluster_enabled(info):
    """The answer to ``INFO cluster`` (bytes or str) says the server is a Cluster node."""
    if isinstance(info, bytes):
        info = info.decode("ascii", "replace")
    for line in info.splitlines():
        name, _, value = line.strip().partition(":")
        if name == "cluster_enabled":
            return value.strip() == "1"
    return False


def parse_slots(reply):
    """The answer to ``CLUSTER SLOTS`` → sorted ``[(first, last, (host, port)), ...]`` (the
    primary of each range); ValueError for anything else (an error, no slot served)."""
    if isinstance(reply, resp.Error):
        raise ValueError("CLUSTER SLOTS refused: %s" % reply.message)
    if not isinstance(reply, list) or not reply:
        raise ValueError("CLUSTER SLOTS: no slot is served")
    out = []
    for item in reply:
        try:
            first, last, primary = int(item[0]), int(item[1]), item[2]
            host = primary[0].decode("ascii", "replace") if isinstance(primary[0], bytes) else str(primary[0])
            port = int(primary[1])
        except (TypeError, ValueError, IndexError, AttributeError):
            raise ValueError("CLUSTER SLOTS: unexpected entry %r" % (item,))
        if not 0 <= first <= last < SLOTS:
            raise ValueError("CLUSTER SLOTS: bad range %d-%d" % (first, last))
        out.append((first, last, (host or "127.0.0.1", port)))
    out.sort()
    return out


class SlotMap:
    """Which primary serves which slot. A *shard* is named by the first slot it served when the map
    was first read (its representative): a failover gives a shard another primary, never another
    name, so what a node holds per shard (connections, in-flight commands) follows it."""

    def __init__(self, ranges):
        self.ranges = list(ranges)
        self._owner = [None] * SLOTS
        self._shard = [None] * SLOTS
        by_address = {}
        for first, last, address in self.ranges:
            rep = by_address.setdefault(address, first)
            for slot in range(first, last + 1):
                self._owner[slot] = address
                self._shard[slot] = rep
        #: representative slot → the primary's (host, port)
        self.shards = dict((rep, address) for address, rep in by_address.items())

    def owner(self, slot):
        """(host, port) of the primary serving ``slot`` (None: nobody serves it)."""
        return self._owner[slot]

    def shard(self, slot):
        """The representative slot of the shard serving ``slot`` (None: nobody serves it)."""
        return self._shard[slot]

    def complete(self):
        return None not in self._owner

    def addresses(self):
        return sorted(set(address for _, _, address in self.ranges))


def _bulk_at(data, pos):
    """The bulk string at ``data[pos:]`` → (value, next position)."""
    if data[pos:pos + 1] != b"$":
        raise ValueError("not a bulk string")
    end = data.index(b"\r\n", pos)
    size = int(data[pos + 1:end])
    start = end + 2
    return data[start:start + size], start + size + 2


def command_key(data):
    """The key a pre-encoded command (``resp.command`` bytes) is routed by: its first argument,
    or for ``EVAL``/``EVALSHA`` its first key; None for a command without one. Only the first
    few bulk headers are read (a message batch is not scanned)."""
    if data[:1] != b"*":
        raise ValueError("not a RESP command")
    pos = data.index(b"\r\n") + 2
    name, pos = _bulk_at(data, pos)
    if name.upper() in (b"EVAL", b"EVALSHA"):
        _, pos = _bulk_at(data, pos)
        numkeys, pos = _bulk_at(data, pos)
        if int(numkeys) < 1:
            return None
    if pos >= len(data):
        return None
    return _bulk_at(data, pos)[0]


def redirection(reply):
    """``-MOVED SLOT HOST:PORT`` / ``-ASK SLOT HOST:PORT`` → (kind, slot, (host, port)); None for
    any other reply."""
    if not isinstance(reply, resp.Error):
        return None
    parts = reply.message.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return parts[0], int(parts[1]), (host or "127.0.0.1", int(port))
    except ValueError:
        return None
