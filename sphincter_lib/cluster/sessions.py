"""Session rooms across nodes (Redis mode): what a node keeps in Redis and says to other nodes
about session rooms (issue 20). Redis carries this signalling only, never a session's bytes.

:class:`ClusterSessions` is held by the relay's session hub (``relay/tunnel.py``). It

- draws this node's *tag* (``proto.sessionsignal``: session ids drawn here end with it) and,
  every ``--redis-lease``/3 s, writes where other nodes reach this node's source port
  (``P:snode:<tag>``, ``--node-address``) and the records of the session rooms whose agent's
  control link is here (``P:sroom:{CODE}``: this node's tag, the SHA-256 of the room's key), each
  ``PX --redis-lease``: a node that dies takes its rooms with it within the lease;
- looks up a session room held by another node (:meth:`find`) and the address of a node
  (:meth:`node_address`);
- listens on its own channel (``P:sn:<tag>``, its own pub/sub connection, so that nothing here
  depends on how the broadcast rooms' channels are dispatched) and hands each message, parsed,
  to ``on_message(event)``; :meth:`ask` and :meth:`tell` send to another node's channel. On a
  Redis Cluster this is sharded pub/sub (``SSUBSCRIBE`` on the channel's shard, ``SPUBLISH``,
  whose answer counts that shard's listeners); every key here is a single-key command.
"""

import logging
import secrets

import gevent

from ..errors import RelayUnavailable, RoomNotFound
from ..proto import resp
from ..proto.roomcode import room_key
from ..proto import sessionsignal as sig
from ..rooms.sessions import RemoteSessionRoom
from .link import Listener
from .node import text
from .shards import ShardedListener

logger = logging.getLogger("sphincter.cluster.sessions")

__all__ = ["ClusterSessions"]

_UNREGISTER = ("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
               "return 0")
#: renew a room's record unless another node took it (then 0: this node lost the room)
_RENEW = ("local v = redis.call('GET', KEYS[1]) if (not v) or v == ARGV[1] then "
          "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end return 0")
#: take a (named) room's record: the previous one
_TAKE = "local v = redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return v"


class ClusterSessions:
    """This node's part in the session rooms of the relay (see the module docstring)."""

    #: seconds a node's address, once looked up, is used without asking Redis again
    address_ttl = 5.0

    def __init__(self, model, proxy=False, clock=None, monotonic=None):
        import time
        self.link = model.link
        self.prefix = model.keys.prefix
        self.node = model.node
        self.proxy = proxy
        self.clock = clock or time.time
        self.monotonic = monotonic or time.monotonic
        self.tag = secrets.token_hex(4)
        #: (host, port) where other nodes reach this node's source port (set by :meth:`start`)
        self.address = None
        #: called with each parsed message (``sessionsignal.parse_message``) from another node
        self.on_message = lambda event: None
        #: called after each heartbeat with the codes of the rooms another node took from this one
        self.on_beat = lambda lost: None
        self.owned = {}                     # code -> the room's record (text)
        topology = getattr(self.link, "topology", None)
        #: Redis Cluster: sharded pub/sub (a node's channel lives on its slot's shard, and SPUBLISH
        #: counts that shard's listeners; a plain PUBLISH counts only the server it was sent to)
        self.publish = model.keys.publish
        if topology is not None:
            self.listener = ShardedListener(self.link.endpoint.url, topology, self._on_push)
        else:
            self.listener = Listener(self.link.endpoint, self._on_push)
        if self.link.endpoint.sentinels is not None:          # a failover: follow the new primary
            self.link.endpoint.sentinels.on_switch.append(self.listener.drop_unless)
        self._addresses = {}                # tag -> (until, (host, port, proxy, node))
        self._unregister = self.link.redis.register_script(_UNREGISTER)
        self._renew = self.link.redis.register_script(_RENEW)
        self._take = self.link.redis.register_script(_TAKE)
        self._beat = None

    # -- start and stop ----------------------------------------------------------------------
    def start(self, address):
        self.address = address
        self.listener.subscribe(sig.channel(self.prefix, self.tag))
        self.listener.start()
        self._beat = gevent.spawn(self._heartbeat)
        self._beat.link_exception(lambda g: logger.error("session rooms' heartbeat crashed",
                                                         exc_info=g.exc_info))
        logger.info("session rooms: node %s has tag %s, reached at %s:%d", self.node, self.tag,
                    address[0], address[1])

    def stop(self):
        if self._beat is not None:
            self._beat.kill(block=False)
        try:
            pipe = self.link.redis.pipeline(transaction=False)
            pipe.delete(sig.node_key(self.prefix, self.tag))
            for code, record in self.owned.items():
                self._unregister(keys=[sig.room_key(self.prefix, code)], args=[record], client=pipe)
            pipe.execute()
        except self.link.errors:
            pass
        self.owned.clear()
        self.listener.stop()

    def _heartbeat(self):
        while True:
            try:
                self.beat()
            except Exception:                # a bug: logged, and the next beat is tried all the same
                logger.error("session rooms' heartbeat failed", exc_info=True)
            gevent.sleep(max(0.1, self.link.lease / 3.0))

    def beat(self):
        """Renew this node's address and its session rooms' records (re-created if Redis lost them)."""
        lease = self.link.lease_ms
        pipe = self.link.redis.pipeline(transaction=False)
        pipe.set(sig.node_key(self.prefix, self.tag),
                 sig.node_record(self.address[0], self.address[1], self.proxy, self.node), px=lease)
        owned = list(self.owned.items())
        for code, record in owned:
            self._renew(keys=[sig.room_key(self.prefix, code)], args=[record, lease], client=pipe)
        try:
            answers = pipe.execute()[1:]
        except self.link.errors as exc:
            logger.debug("session rooms' heartbeat: %s", exc)
            return
        lost = [code for (code, record), kept in zip(owned, answers) if not kept and self.owned.get(code) == record]
        for code in lost:
            del self.owned[code]
        self.on_beat(lost)

    def gone(self, tags):
        """Those of the nodes ``tags`` whose address lapsed in Redis (they died or left); an
        empty set when Redis cannot say."""
        tags = sorted(tags)
        if not tags:
            return set()
        pipe = self.link.redis.pipeline(transaction=False)
        for tag in tags:
            pipe.exists(sig.node_key(self.prefix, tag))
        try:
            return {tag for tag, there in zip(tags, pipe.execute()) if not there}
        except self.link.errors:
            return set()

    # -- session rooms ------------------------------------------------------------------------
    def register(self, sroom):
        """Record ``sroom`` (its agent is here) for the other nodes: False if its code is another
        node's session room; RelayUnavailable."""
        record = sig.room_record(self.tag, sig.key_digest(sroom.write_key), self.node)
        done = self.link.ask(self.link.redis.set, sig.room_key(self.prefix, sroom.code), record,
                             nx=True, px=self.link.lease_ms)
        if done:
            self.owned[sroom.code] = record
        return bool(done)

    def take(self, sroom):
        """A named room's agent connected here: its record names this node from now on; the node
        that had it is told (``replaced``). Without Redis the heartbeat records it later."""
        record = sig.room_record(self.tag, sig.key_digest(sroom.write_key), self.node)
        self.owned[sroom.code] = record
        try:
            old = sig.parse_room_record(text(self.link.ask(
                self._take, keys=[sig.room_key(self.prefix, sroom.code)], args=[record, self.link.lease_ms])))
        except RelayUnavailable:
            return
        if old is not None and old[0] != self.tag:
            self.tell(old[0], sig.replaced_message(sroom.code))

    def disown(self, code):
        """Another node has the room ``code`` now: no longer renewed (nor deleted) here."""
        self.owned.pop(code, None)

    def unregister(self, sroom):
        record = self.owned.pop(sroom.code, None)
        if record is not None:
            try:
                self.link.ask(self._unregister, keys=[sig.room_key(self.prefix, sroom.code)], args=[record])
            except RelayUnavailable:
                pass                        # the record's lease ends it

    def taken(self, code):
        """A session room of any node has ``code`` (RelayUnavailable)."""
        return bool(self.link.ask(self.link.redis.exists, sig.room_key(self.prefix, code)))

    def find(self, code):
        """The session room ``code`` of another node (a ``RemoteSessionRoom``), or None;
        RelayUnavailable."""
        try:
            code = room_key(code)
        except RoomNotFound:
            return None
        record = sig.parse_room_record(text(self.link.ask(self.link.redis.get, sig.room_key(self.prefix, code))))
        if record is None or record[0] == self.tag:
            return None
        return RemoteSessionRoom(code, record[0], record[1], record[2], self.clock())

    def node_address(self, tag):
        """``(host, port, proxy, node)`` of the node ``tag``'s source port, or None."""
        now = self.monotonic()
        cached = self._addresses.get(tag)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = sig.parse_node_record(text(self.link.ask(self.link.redis.get, sig.node_key(self.prefix, tag))))
        if found is not None:
            if len(self._addresses) > 1024:
                self._addresses.clear()
            self._addresses[tag] = (now + self.address_ttl, found)
        return found

    # -- messages ------------------------------------------------------------------------------
    def ask(self, tag, message):
        """Send ``message`` to the node ``tag`` and wait for Redis: False if no node listens there
        (it is gone); RelayUnavailable."""
        return bool(self.link.ask(self.link.redis.execute_command, self.publish, sig.channel(self.prefix, tag),
                                  message))

    def tell(self, tag, message):
        """Send ``message`` to the node ``tag`` without waiting (lost if Redis is down)."""
        self.link.pipe.send(resp.command(self.publish, sig.channel(self.prefix, tag), message), droppable=True)

    def _on_push(self, channel, data):
        event = sig.parse_message(text(data))
        if event is None:
            logger.debug("session rooms: unexpected message %r", data[:80])
            return
        self.on_message(event)
