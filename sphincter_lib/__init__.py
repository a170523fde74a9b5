"""Sphincter: a TCP-to-WebSocket relay on gevent."""

__version__ = "0.1.0"
