"""Rooms shared by several relay processes through Redis: the room model, the Redis room,
the link to Redis."""
