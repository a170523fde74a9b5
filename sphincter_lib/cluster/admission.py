"""Redis mode: who comes in, relay-wide — sources into rooms, subscribers into rooms.

Each admission is one Lua script (``proto.redis_keys``), so the relay-wide counts hold
whatever the other nodes do at the same moment:

- ``OPEN``: a new room's code is reserved in Redis, unique across nodes, and ``--max-rooms``
  counts every node's rooms (:class:`~sphincter_lib.errors.RoomLimitError`);
- ``CLAIM``: a named room has one source relay-wide; a new one fences the previous one,
  wherever it is, with the room's epoch;
- ``RESUME``: a source may resume its room on any node, with its resume key (Redis keeps its
  SHA-256);
- ``ADMIT``: a subscriber counts against the room's relay-wide limit (4429), per node, so a
  node's count goes when the node does;

and the counts going down again: a subscriber leaving, a source leaving (``LEAVE``, sent down
the pipe after the room's last batch). An :class:`Admission` holds the model (to make, find
and add rooms, through its public methods) and the node's link (``cluster.node``).
"""

import time

from ..errors import CannotResume, RoomFullError, RoomLimitError, RoomNotFound, ShuttingDown
from ..proto import resp
from ..proto.roomcode import resume_key, room_key
from ..rooms.interface import CLOSED
from .node import digest, text

__all__ = ["Admission"]


class Admission:
    """The model's ``open``, ``claim``, ``resume`` and ``subscribe``, relay-wide (see the module
    docstring)."""

    def __init__(self, model, link):
        self.model = model
        self.link = link

    def open(self, source):
        model, link = self.model, self.link
        if model.shutting_down:
            raise ShuttingDown()
        resume = resume_key() if model.limits.grace else None
        write = resume_key() if model.write_back else None
        for _ in range(20):
            room = model.new_room(model.new_code(), source)
            done = link.call("OPEN", room, link.keys.events(room.code), link.node_id, link.lease_ms,
                             room.code, source.peer, digest(resume) if resume else "", write or "",
                             self._max_rooms(room), "%.3f" % room.opened_at, model.grace_ms)
            if done == -1:
                raise RoomLimitError()
            if done == 1:
                break
        else:
            raise RoomLimitError("no free room code")
        room.epoch = 1
        room.resume_key, room.write_key = resume, write
        model.add(room)
        model.stats.rooms_opened += 1
        model.source_attached(room, source)
        return room

    def _max_rooms(self, room):
        """``--max-rooms`` for ``OPEN``, which counts the rooms of the new room's index. In a Redis
        Cluster there is one index per bucket (``proto.redis_keys``): the other buckets' rooms,
        counted first, are taken off (concurrent opens elsewhere may overshoot it by the opens in
        flight)."""
        model, link = self.model, self.link
        if not link.keys.cluster or model.max_rooms <= 0:
            return model.max_rooms
        own = room.redis_keys[5]
        others = [index for index in link.keys.indexes if index != own]
        pipe = link.redis.pipeline(transaction=False)
        now_ms = "%d" % (time.time() * 1000)
        for index in others:
            pipe.zcount(index, now_ms, "+inf")
        held = sum(link.ask(pipe.execute))
        if held >= model.max_rooms:
            raise RoomLimitError()
        return model.max_rooms - held

    def claim(self, token, source):
        model, link = self.model, self.link
        if model.shutting_down:
            raise ShuttingDown()
        room = model.named_room(token)
        if room is None:
            return None
        epoch, write = link.call("CLAIM", room, room.chan_e, link.node_id, link.lease_ms, room.code,
                                 source.peer, room.write_key or "")
        room.write_key = text(write) or None
        room.await_own_live(int(epoch), model.confirm_timeout)
        return room, room.own(source, int(epoch))

    def resume(self, code, key, source):
        model, link = self.model, self.link
        if model.shutting_down:
            raise ShuttingDown()
        try:
            rkey = room_key(code)
        except RoomNotFound:
            raise CannotResume()
        if not key or model.is_named(rkey):
            raise CannotResume()
        new_key = resume_key()
        room = model.known(rkey) or model.new_room(rkey)
        answer = link.call("RESUME", room, room.chan_e, link.node_id, link.lease_ms, rkey, source.peer,
                           digest(key), digest(new_key), model.grace_ms)
        if not answer:
            raise CannotResume()
        epoch, write, opened_at = int(answer[0]), text(answer[1]), text(answer[2])
        if model.known(rkey) is not room:
            room.code = rkey
            room.opened_at = float(opened_at or room.opened_at)
            room.mark_fed()
            model.add(room)
        room.resume_key = new_key
        room.write_key = write or None
        room.await_own_live(epoch, model.confirm_timeout)
        return room, room.own(source, epoch)

    def leave(self, room):
        """The room's source (on this node) left: tell the relay, after its last batch."""
        link = self.link
        link.pipe.send(resp.command("EVAL", link.script_text("LEAVE"), 6, *(room.redis_keys + [
            room.chan_e, link.node_id, room.epoch, self.model.grace_ms, room.key, room.last_published])))

    def subscribe(self, code, peer):
        model, link = self.model, self.link
        room = model.get(code)
        if room.state is CLOSED:
            raise RoomNotFound()
        cluster = link.keys.cluster                # node liveness is in another slot: say who died
        n = link.call("ADMIT", room, room.chan_e, link.node_id, room.max_subscribers,
                      "" if cluster else link.keys.node_prefix, "1" if room.named else "0", room.code,
                      *(link.dead_nodes if cluster else ()))
        if n == -1:
            raise RoomNotFound()
        if n == -2:
            raise RoomFullError()
        try:
            room.ensure_feed(model.confirm_timeout)
            if not room.subscribers and room.source is None and room.flow_control:
                # the first subscriber here: until our first report the owner takes us to be
                # where its source is now, so it does not run ahead of us unbounded meanwhile
                model.report_flow(room, "%d ^" % room.epoch)
            return room.subscribe(peer)
        except Exception:
            self.subscriber_left(room)
            raise

    def subscriber_left(self, room):
        """One subscriber fewer on this node (``ADMIT`` counted it)."""
        self.link.pipe.send(resp.command("HINCRBY", room.redis_keys[2], self.link.node_id, -1))
