"""Pure protocol code (sans-IO): fed bytes or events, it returns bytes or events; no
gevent, no sockets, no sleeping."""
