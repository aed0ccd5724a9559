"""The dashboard: ``/`` redirects to ``/ui/``, whose static files ship inside the package
(``pm/ui/static``, package data) and are served from memory.

The pages are plain JavaScript modules that use only the public API (REST and WebSocket):
no build step, nothing loaded from another site. Every UI answer carries a strict
Content-Security-Policy: scripts, styles and images only from the gateway, no inline script
or style, connections only to the gateway (its ``ws://``/``wss://`` origin included), no
framing, no plugins. Data from devices is only ever put into the page as text (the pages use
``textContent``, never ``innerHTML``), and the policy stops any script that slipped through.

The UI files are public (no token needed to load them, like ``/healthz``): they hold no data,
and a browser's page navigation cannot send a bearer token. The API calls they make need one.

Error handling: an unknown file under ``/ui/`` is the app's JSON 404.
"""

from __future__ import annotations

import re
from importlib import resources

from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import NotFound

UI_PREFIX = "/ui/"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# A Host header fit to be written into the policy; anything else gets 'self' alone.
_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")


# The handlers below, by name: what routing matched, never a path prefix, decides that a
# request needs no token (a prefix test would let "/ui/../jobs" through if anything in front
# of the app resolved the dots after it).
UI_ENDPOINTS = frozenset(
    {"dashboard_root", "dashboard_without_slash", "dashboard_index", "dashboard_file"}
)


def load_ui_files() -> dict[str, tuple[bytes, str]]:
    """Every file of ``pm/ui/static`` by name, with its content type."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("pm.ui").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), _CONTENT_TYPES[suffix])
    return files


def content_security_policy(host: str | None, secure: bool) -> str:
    """The policy of a UI answer to a request sent to ``host`` (its Host header).

    ``connect-src 'self'`` alone does not cover WebSockets in every browser, so the gateway's
    own ws:// (wss:// over TLS) origin is named too.
    """
    connect = "'self'"
    if host is not None and _HOST.match(host):
        connect += f" {'wss' if secure else 'ws'}://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def ui_headers(host: str | None, secure: bool) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(host, secure),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        # Always revalidated: a gateway upgrade must not leave an old page talking to a new API.
        "Cache-Control": "no-cache",
    }


def add_ui_routes(app: QuartTrio) -> None:
    """Register ``/``, ``/ui`` and ``/ui/<file>`` on ``app``."""
    files = load_ui_files()

    def serve_file(name: str) -> TrioResponse:
        found = files.get(name)
        if found is None:
            raise NotFound()
        body, content_type = found
        headers = ui_headers(request.headers.get("Host"), request.scheme == "https")
        return TrioResponse(body, 200, headers, content_type=content_type)

    @app.get("/")
    async def dashboard_root() -> TrioResponse:
        return TrioResponse(b"", 302, {"Location": UI_PREFIX})

    @app.get("/ui")
    async def dashboard_without_slash() -> TrioResponse:
        return TrioResponse(b"", 302, {"Location": UI_PREFIX})

    @app.get(UI_PREFIX)
    async def dashboard_index() -> TrioResponse:
        return serve_file("index.html")

    @app.get(UI_PREFIX + "<name>")
    async def dashboard_file(name: str) -> TrioResponse:
        return serve_file(name)
