"""The relay's server side: wiring and lifecycle, TCP ingest, HTTP and WebSocket (ws.py is the
only module that imports gevent-websocket), the API, presence, metrics, the viewer."""
