"""Rooms shared by several relay processes through Redis: the room model (``model``) and what
it holds (``node``, ``admission``, ``liveness``, ``listing``), the Redis room (``room``) and what
it holds (``mirror``, ``flow``, ``outbox``), the link to Redis (``link``)."""
