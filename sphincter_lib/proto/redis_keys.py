"""Redis mode: key and channel names, and the Lua scripts of the room lifecycle (text, no I/O).

A room ``K`` (its code or name, upper case) has, under the prefix ``P``
(``--redis-prefix``), keys that share the hash tag ``{K}``:

======================  =====================================================================
``P:lease:{K}``         ``"<node> <epoch>"`` while a source feeds it; ``PX --redis-lease``,
                        renewed by the owner: the source lease *and* the fence
``P:room:{K}``          hash: ``epoch state named owner peer resume write opened_at until
                        outbytes messages bytes``; what a joining node needs
``P:subs:{K}``          hash node → subscribers there (relay-wide ``--max-subscribers-per-room``)
``P:log:{K}``           stream of batches, ids ``<epoch>-<seq>`` (rooms with ``--replay`` only)
``P:out:{K}``           list of whole write-back messages toward the source
``P:m:{K}``             channel: message batches (nodes with subscribers in the room)
``P:e:{K}``             channel: room events ``live E NODE LAST``, ``waiting E LAST``,
                        ``closed E LAST``, ``writable``; LAST is the room's last batch
                        ``E:S`` when the script knows it (the owner said: it left, or
                        re-created the room after a Redis restart), else ``-``
``P:w:{K}``             channel: ``w`` when write-back messages arrived (the owner only)
``P:n:<node>``          channel: to one node, ``fc K EPOCH OFFSET[:UNREAD] NODE`` / ``fc K EPOCH - NODE``
                        (flow control: how far a node's fastest subscriber got; gone)
``P:rooms``             zset of ephemeral rooms by expiry (ms): relay-wide ``--max-rooms``
``P:node:<name>``       a node's heartbeat (``PX --redis-lease``)
======================  =====================================================================

**Redis Cluster** (``Keys(prefix, cluster=True)``): a script may only touch keys of one slot, and
``P:rooms`` spans every room. So a room's keys and channels share the hash tag of its *bucket*
(``{rNN}``, ``NN = CRC16(K) mod`` :data:`CLUSTER_BUCKETS`) instead of ``{K}`` — ``P:lease:{rNN}K``,
``P:m:{rNN}K`` ... — and the index is one zset per bucket, ``P:rooms:{rNN}``, in the same slot:
every script above still runs on one slot, unchanged but for ``SPUBLISH`` (sharded pub/sub: a
room's batches and events go through its shard only). Relay-wide facts are per bucket, summed by
the reader: the room listing and ``--max-rooms`` read every bucket's index (the limit is then
checked atomically for the new room's bucket against what the others hold: concurrent opens on
other buckets may overshoot it by the opens in flight); node liveness is one zset in one slot,
``P:{nodes}`` (node → heartbeat expiry, ms), and ``ADMIT`` is given the nodes seen dead there
instead of looking up ``P:node:<name>`` keys (another slot).

Every state change is one script over the room's keys; it publishes its event
on ``P:e:{K}`` itself, so the event is ordered with the room's batches on every
node's connection. ``KEYS`` are always :func:`room_keys`; ``ARGV[1]`` is the
event channel.
"""

from .slots import crc16

__all__ = ["Keys", "CLUSTER_BUCKETS", "script", "encode_batch", "decode_batch", "OPEN", "CLAIM", "RESUME", "LEAVE", "CHECK", "REFRESH", "ADMIT", "WPUT", "WDONE", "NODE_BEAT",
           "ENSURE_NAMED"]


#: Redis Cluster: the buckets rooms are spread over (see the module docstring). Every node of a
#: relay must agree on it: it is part of the key names.
CLUSTER_BUCKETS = 64


class Keys:
    """Key and channel names under one prefix (``cluster``: Redis Cluster's, by bucket)."""

    def __init__(self, prefix, cluster=False):
        self.prefix = prefix
        self.cluster = cluster
        self.rooms = "%s:rooms" % prefix
        self.node_prefix = "%s:node:" % prefix
        #: the zset of nodes' heartbeats (Redis Cluster: one slot)
        self.nodes = "%s:{nodes}" % prefix
        #: the publish command of the room channels: sharded pub/sub in a Cluster
        self.publish = "SPUBLISH" if cluster else "PUBLISH"
        #: every room index (one per bucket in a Cluster)
        self.indexes = ([self.index_of("%02d" % b) for b in range(CLUSTER_BUCKETS)] if cluster
                        else [self.rooms])

    def index_of(self, bucket):
        return "%s:rooms:{r%s}" % (self.prefix, bucket)

    def tag(self, key):
        """What a room's names carry: ``{K}``, or ``{rNN}K`` in a Cluster."""
        if not self.cluster:
            return "{%s}" % key
        return "{r%02d}%s" % (crc16(key.encode("utf-8")) % CLUSTER_BUCKETS, key)

    def node(self, name):
        return self.node_prefix + name

    def room(self, key):
        """The six keys every room script takes, in order."""
        p, t = self.prefix, self.tag(key)
        index = self.rooms if not self.cluster else "%s:rooms:%s" % (p, t[:t.index("}") + 1])
        return ["%s:lease:%s" % (p, t), "%s:room:%s" % (p, t), "%s:subs:%s" % (p, t),
                "%s:log:%s" % (p, t), "%s:out:%s" % (p, t), index]

    def messages(self, key):
        return "%s:m:%s" % (self.prefix, self.tag(key))

    def events(self, key):
        return "%s:e:%s" % (self.prefix, self.tag(key))

    def writes(self, key):
        return "%s:w:%s" % (self.prefix, self.tag(key))

    def to_node(self, name):
        """A node's own channel (flow-control reports for the rooms it owns)."""
        return "%s:n:%s" % (self.prefix, name)

    def channel_room(self, channel):
        """The room key in a channel name (``P:m:{K}`` → ``K``; ``P:m:{rNN}K`` → ``K``)."""
        if self.cluster:
            return channel[channel.index("}") + 1:]
        return channel[channel.index("{") + 1:-1]


_HELPERS = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function close(ep, key, last)
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  redis.call('ZREM', KEYS[6], key)
  redis.call('PUBLISH', ARGV[1], 'closed ' .. ep .. ' ' .. last)
end
local function gone(ep, grace, key, last)
  local h = redis.call('HMGET', KEYS[2], 'named', 'resume')
  if h[1] == '1' then
    redis.call('HSET', KEYS[2], 'state', 'waiting', 'owner', '', 'peer', '')
    redis.call('PUBLISH', ARGV[1], 'waiting ' .. ep .. ' ' .. last)
    return 1
  end
  if grace > 0 and h[2] and h[2] ~= '' then
    local t = now()
    redis.call('HSET', KEYS[2], 'state', 'waiting', 'owner', '', 'peer', '', 'until', t + grace)
    redis.call('PEXPIRE', KEYS[2], grace + 10000)
    redis.call('ZADD', KEYS[6], t + grace, key)
    redis.call('PUBLISH', ARGV[1], 'waiting ' .. ep .. ' ' .. last)
    return 1
  end
  close(ep, key, last)
  return 2
end
local function ensure_named(key)
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[2], 'epoch', 0, 'state', 'waiting', 'named', 1, 'owner', '', 'peer', '',
               'code', key, 'outbytes', 0, 'opened_at', now() / 1000)
  end
end
"""

#: a new ephemeral room. ARGV: chan node lease_ms key peer resume_hash write max_rooms opened_at
#: grace_ms → 1 opened, 0 the code is taken, -1 --max-rooms reached relay-wide
OPEN = _HELPERS + """
local t = now()
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', t)
local max = tonumber(ARGV[8])
if max > 0 and redis.call('ZCARD', KEYS[6]) >= max then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
local lease = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2] .. ' 1', 'PX', lease)
redis.call('HSET', KEYS[2], 'epoch', 1, 'state', 'live', 'named', 0, 'owner', ARGV[2], 'peer', ARGV[5],
           'resume', ARGV[6], 'write', ARGV[7], 'opened_at', ARGV[9], 'outbytes', 0, 'code', ARGV[4])
redis.call('PEXPIRE', KEYS[2], lease + tonumber(ARGV[10]) + 10000)
redis.call('ZADD', KEYS[6], t + lease, ARGV[4])
return 1
"""

#: a source claims a named room (AUTH); the previous owner, anywhere, is fenced out.
#: ARGV: chan node lease_ms key(as written) peer write_if_new → {epoch, write}
CLAIM = _HELPERS + """
ensure_named(ARGV[4])
local ep = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. ep, 'PX', ARGV[3])
redis.call('HSET', KEYS[2], 'state', 'live', 'named', 1, 'owner', ARGV[2], 'peer', ARGV[5])
redis.call('HSETNX', KEYS[2], 'write', ARGV[6])
redis.call('PUBLISH', ARGV[1], 'live ' .. ep .. ' ' .. ARGV[2] .. ' -')
return {ep, redis.call('HGET', KEYS[2], 'write')}
"""

#: RESUME with the key whose SHA-256 is ARGV[6]; ARGV: chan node lease_ms key peer hash new_hash
#: grace_ms → {epoch, write, opened_at} or nil (wrong key, unknown or expired room, named room)
RESUME = _HELPERS + """
local h = redis.call('HMGET', KEYS[2], 'resume', 'named', 'write', 'opened_at', 'state')
if not h[1] or h[2] == '1' or h[1] ~= ARGV[6] or h[5] == 'closed' then return false end
local ep = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
local lease = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. ep, 'PX', lease)
redis.call('HSET', KEYS[2], 'state', 'live', 'owner', ARGV[2], 'peer', ARGV[5], 'resume', ARGV[7])
redis.call('HDEL', KEYS[2], 'until')
redis.call('PEXPIRE', KEYS[2], lease + tonumber(ARGV[8]) + 10000)
redis.call('ZADD', KEYS[6], now() + lease, ARGV[4])
redis.call('PUBLISH', ARGV[1], 'live ' .. ep .. ' ' .. ARGV[2] .. ' -')
return {ep, h[3] or '', h[4] or ''}
"""

#: the owner's source left. ARGV: chan node epoch grace_ms key last("E:S") → 0 not ours,
#: 1 waiting, 2 closed
LEAVE = _HELPERS + """
if redis.call('GET', KEYS[1]) ~= ARGV[2] .. ' ' .. ARGV[3] then return 0 end
redis.call('DEL', KEYS[1])
return gone(ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6])
"""

#: a watching node's check: a live room whose lease expired (its node died) goes waiting or
#: closes; a waiting room past its grace closes; a named room is recreated if Redis lost it.
#: ARGV: chan grace_ms key named → 0 nothing to do, 1 now waiting, 2 closed, 3 unknown
CHECK = _HELPERS + """
local h = redis.call('HMGET', KEYS[2], 'state', 'epoch', 'until')
if not h[1] then
  if ARGV[4] == '1' then ensure_named(ARGV[3]); return 0 end
  redis.call('PUBLISH', ARGV[1], 'closed 0 -')
  return 3
end
if h[1] == 'live' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  return gone(h[2], tonumber(ARGV[2]), ARGV[3], '-')
end
if h[3] and tonumber(h[3]) <= now() then
  close(h[2], ARGV[3], '-')
  return 2
end
return 0
"""

#: the owner renews its lease, or re-creates what Redis lost (a restart; a failover to a replica
#: that missed the last writes: a lease of an older epoch there is stale, ours fenced it), or takes
#: its room back live after its lease lapsed (the node was cut off or stopped) and the room went
#: waiting: the same epoch means no other source attached meanwhile (each attach increments it).
#: ARGV: chan node epoch lease_ms grace_ms key named peer resume_hash write opened_at messages
#: bytes last("E:S") → 1 held, 0 someone else holds the room (hang up the source)
REFRESH = _HELPERS + """
local mine = ARGV[2] .. ' ' .. ARGV[3]
local v = redis.call('GET', KEYS[1])
local lease = tonumber(ARGV[4])
if v == mine then
  redis.call('PEXPIRE', KEYS[1], lease)
elseif not v or (tonumber(string.match(v, ' (%d+)$')) or 0) < tonumber(ARGV[3]) then
  local h = redis.call('HMGET', KEYS[2], 'epoch', 'state')
  if h[1] and tonumber(h[1]) > tonumber(ARGV[3]) then
    return 0
  end
  redis.call('SET', KEYS[1], mine, 'PX', lease)
  redis.call('HSET', KEYS[2], 'epoch', ARGV[3], 'state', 'live', 'named', ARGV[7], 'owner', ARGV[2],
             'peer', ARGV[8], 'resume', ARGV[9], 'write', ARGV[10], 'opened_at', ARGV[11], 'code', ARGV[6])
  redis.call('HSETNX', KEYS[2], 'outbytes', 0)
  redis.call('HDEL', KEYS[2], 'until')
  redis.call('PUBLISH', ARGV[1], 'live ' .. ARGV[3] .. ' ' .. ARGV[2] .. ' ' .. ARGV[14])
else
  return 0
end
redis.call('HSET', KEYS[2], 'messages', ARGV[12], 'bytes', ARGV[13])
if ARGV[7] ~= '1' then
  local ttl = lease + tonumber(ARGV[5]) + 10000
  redis.call('PEXPIRE', KEYS[2], ttl)
  for i = 3, 5 do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
  redis.call('ZADD', KEYS[6], now() + lease, ARGV[6])
end
return 1
"""

#: a subscriber joins on this node. ARGV: chan node max node_key_prefix named key [dead...]
#: → subscribers relay-wide, -1 unknown room, -2 full. In a Cluster node_key_prefix is empty and
#: the nodes seen dead (``P:{nodes}``, another slot) follow: their counts go.
ADMIT = _HELPERS + """
if ARGV[5] == '1' then ensure_named(ARGV[6]) end
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local total = 0
local all = redis.call('HGETALL', KEYS[3])
local dead = {}
for i = 7, #ARGV do dead[ARGV[i]] = true end
for i = 1, #all, 2 do
  local gone
  if ARGV[4] == '' then gone = dead[all[i]] else gone = redis.call('EXISTS', ARGV[4] .. all[i]) == 0 end
  if all[i] ~= ARGV[2] and gone then
    redis.call('HDEL', KEYS[3], all[i])
  else
    total = total + tonumber(all[i + 1])
  end
end
if total >= tonumber(ARGV[3]) then return -2 end
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
return total + 1
"""

#: a writer's message toward the source. ARGV: chan data wchan → bytes queued now, -1 no room
WPUT = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
redis.call('RPUSH', KEYS[5], ARGV[2])
local b = redis.call('HINCRBY', KEYS[2], 'outbytes', string.len(ARGV[2]))
redis.call('PUBLISH', ARGV[3], 'w')
return b
"""

#: the owner wrote the first ARGV[2] messages (ARGV[3] bytes) to its source. ARGV: chan n bytes
#: limit → bytes still queued
WDONE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('LTRIM', KEYS[5], tonumber(ARGV[2]), -1)
local b = redis.call('HINCRBY', KEYS[2], 'outbytes', -tonumber(ARGV[3]))
if b < 0 then redis.call('HSET', KEYS[2], 'outbytes', 0); b = 0 end
local half = tonumber(ARGV[4]) / 2
if b < half and b + tonumber(ARGV[3]) >= half then redis.call('PUBLISH', ARGV[1], 'writable') end
return b
"""

#: a named room exists in Redis (start-up, after a Redis restart). ARGV: chan key
ENSURE_NAMED = _HELPERS + """
ensure_named(ARGV[2])
return redis.call('HGETALL', KEYS[2])
"""


def script(name, cluster=False):
    """The text of script ``name``; in a Cluster its events go by ``SPUBLISH``."""
    text = globals()[name]
    return text.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'") if cluster else text


# -- the batch: what crosses Redis per source read ---------------------------------------
import struct  # noqa: E402

_HEAD = struct.Struct(">QIQI")


def encode_batch(epoch, seq, end, frames):
    """One room's frames (already WebSocket-encoded) as one pub/sub message: ``epoch, seq``,
    ``end`` (the owner's byte offset after these frames: flow control), the frame count, the
    frame lengths, then the frames."""
    flat = [f if f.__class__ is not tuple else f[0] + f[1] for f in frames]
    n = len(flat)
    return _HEAD.pack(epoch, seq, end, n) + struct.pack(">%dI" % n, *[len(f) for f in flat]) + b"".join(flat)


def decode_batch(data):
    """``(epoch, seq, end, frames)``; ValueError for bytes that are not a batch."""
    try:
        epoch, seq, end, n = _HEAD.unpack_from(data)
        lens = struct.unpack_from(">%dI" % n, data, _HEAD.size)
    except struct.error as exc:
        raise ValueError("not a batch: %s" % exc)
    pos = _HEAD.size + 4 * n
    frames = []
    for size in lens:
        frames.append(data[pos:pos + size])
        pos += size
    if pos != len(data):
        raise ValueError("not a batch: %d bytes for %d" % (len(data), pos))
    return epoch, seq, end, frames


#: Redis Cluster: a node's heartbeat in ``P:{nodes}`` (``KEYS[1]``, one slot), by Redis' clock.
#: ARGV: node lease_ms (0: it leaves) → the nodes whose heartbeat ran out (forgotten after a day)
NODE_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
"""
