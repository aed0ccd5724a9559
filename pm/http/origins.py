"""Cross-site safety: which browser origins may use the API (``http.allowed_origins``).

Pure logic, no I/O: the app asks with the request's ``Origin`` and ``Host`` headers.

A browser sends ``Origin`` with every cross-origin request it makes on a page's behalf (and
with every WebSocket handshake); other clients (curl, the ``pm`` CLI, scripts) send none. So a
request is allowed when it has no ``Origin``, when its origin is the gateway itself (the
``Origin``'s host and port are the ``Host`` the request was sent to: a dashboard served by the
gateway), or when it is listed in ``http.allowed_origins``. Anything else is a page on another
site that the user's browser is being made to talk to the gateway: refused with 403.

Allowed cross-origin pages also get the CORS headers that let their browser read the answers
and send JSON bodies and tokens (a preflight ``OPTIONS`` is answered for them).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

# Seconds a browser may cache a preflight answer.
PREFLIGHT_MAX_AGE = 600


def preflight_headers(origin: str) -> dict[str, str]:
    """The answer to an allowed origin's CORS preflight: what its page may send."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST, DELETE",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        "Vary": "Origin",
    }


def cors_headers(origin: str) -> dict[str, str]:
    """Added to every answer to an allowed origin: its page may read it and these headers."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "Location, X-Total-Count, Retry-After",
        "Vary": "Origin",
    }


def _authority(origin: str) -> str | None:
    """``host[:port]`` of an ``http(s)://host[:port]`` origin, lowercase; None otherwise."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
        return None
    if parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return parts.netloc.lower()


class AllowedOrigins:
    """The origins allowed besides the gateway's own.

    Args:
      origins: ``http.allowed_origins``, e.g. ``["https://dashboard.example.com"]``;
        compared case-insensitively, without a trailing slash.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        self._origins = frozenset(origin.lower().rstrip("/") for origin in origins)

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a request with these ``Origin`` and ``Host`` headers may pass."""
        if origin is None:
            return True  # not a browser acting for a page
        if self.listed(origin):
            return True
        authority = _authority(origin)
        # "null" (sandboxed frames, file: pages) and malformed origins have no authority.
        return authority is not None and host is not None and authority == host.lower()

    def listed(self, origin: str) -> bool:
        """Whether ``origin`` is in ``http.allowed_origins`` (it then gets CORS headers)."""
        return origin.lower().rstrip("/") in self._origins
