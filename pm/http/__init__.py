"""The gateway's HTTP API (REST + WebSocket), served by hypercorn's trio worker."""

from .app import create_app as create_app
from .metrics import HttpCounters as HttpCounters
from .openapi import build_openapi as build_openapi
from .server import serve as serve
from .watch_connection import watch_connections as watch_connections
from .websocket_compression import set_websocket_compression as set_websocket_compression

__all__ = [
    "HttpCounters",
    "build_openapi",
    "create_app",
    "serve",
    "set_websocket_compression",
    "watch_connections",
]
