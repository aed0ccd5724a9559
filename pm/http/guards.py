"""The checks every request passes before its handler: the browser origin and the token.

Pure logic, no I/O: quart's ``before_request``/``before_websocket`` hooks
(:mod:`pm.http.app`) and the ASGI-level watch route (:mod:`pm.http.watch_route`) ask the
same :class:`RequestGuards` with the headers they read, and answer a :class:`Refusal` each in
their own way, so a refusal says and counts the same whichever path served it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .auth import CHALLENGE, BearerTokens
from .metrics import HttpCounters
from .origins import AllowedOrigins


@dataclass(frozen=True)
class Refusal:
    """A request refused before its handler ran: answered as a JSON error."""

    status: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


class RequestGuards:
    """Origin and token checks, counting their refusals for ``/metrics``.

    Args:
      origins: ``http.allowed_origins``.
      tokens: ``api.tokens``.
      counters: where refusals are counted (``rejected["cross_origin"]``, ``unauthorized``).
    """

    def __init__(
        self, origins: AllowedOrigins, tokens: BearerTokens, counters: HttpCounters
    ) -> None:
        self.origins = origins
        self.tokens = tokens
        self._counters = counters

    def check_origin(self, origin: str | None, host: str | None) -> Refusal | None:
        """A 403 (counted) for a browser page of another site, None if the request may pass."""
        if self.origins.allows(origin, host):
            return None
        self._counters.rejected["cross_origin"] += 1
        return Refusal(
            403,
            f"cross-origin request from {origin or ''!r} refused: only the gateway's own pages "
            "and the origins in http.allowed_origins may use the API from a browser",
        )

    def check_token(
        self, authorization: str | None, query_token: str | None = None
    ) -> Refusal | None:
        """A 401 (counted) without an accepted token, None if the request may pass."""
        if self.tokens.allows(authorization, query_token):
            return None
        self._counters.unauthorized += 1
        # Nothing of what was presented goes into the answer or a log line.
        return Refusal(
            401,
            "missing or invalid bearer token: send `Authorization: Bearer <token>`",
            {"WWW-Authenticate": CHALLENGE},
        )

    def check_websocket(
        self,
        origin: str | None,
        host: str | None,
        authorization: str | None,
        query_token: str | None,
    ) -> Refusal | None:
        """A WebSocket handshake: origin first, then the token.

        Browsers apply no same-origin rule to WebSockets: the origin check is the only thing
        keeping another site's page out. They cannot set headers on a handshake either:
        ``?token=`` stands in for ``Authorization``.
        """
        return self.check_origin(origin, host) or self.check_token(authorization, query_token)
