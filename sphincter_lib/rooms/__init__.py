"""Rooms: the declared room interface and the in-memory registry (registry.py), the room
with its shared backlog and a cursor per subscriber (room.py), the outbox, the counters."""
