"""The gateway's HTTP API (REST + WebSocket), served by hypercorn's trio worker."""

from .app import create_app as create_app
from .openapi import build_openapi as build_openapi

__all__ = ["build_openapi", "create_app"]
