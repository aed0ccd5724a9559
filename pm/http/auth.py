"""Bearer-token authentication of the HTTP API (``api.tokens``).

Pure logic, no I/O: the app asks :meth:`BearerTokens.allows` with what the client sent.

Tokens are compared in constant time: both sides are hashed with SHA-256 first, so
:func:`hmac.compare_digest` sees equal-length inputs and the time taken says nothing about a
token's content or length, and every configured token is compared (no early exit), so it says
nothing about which one matched either. Tokens are never logged or put in error messages.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable

from ..passwords import secret_digest

SCHEME = "bearer"
# What a 401 answers in WWW-Authenticate (RFC 6750 section 3).
CHALLENGE = 'Bearer realm="puppetmaster"'
# A browser cannot set headers on a WebSocket handshake, but it can offer subprotocols, which
# travel in the Sec-WebSocket-Protocol header (never in a URL, so never in an access log or the
# browser's history). The dashboard offers WATCH_SUBPROTOCOL and TOKEN_SUBPROTOCOL_PREFIX +
# base64url(token) without padding (a subprotocol must be an HTTP token: no "/" or "=");
# the gateway selects WATCH_SUBPROTOCOL, so the token is never echoed back.
WATCH_SUBPROTOCOL = "pm.watch"
TOKEN_SUBPROTOCOL_PREFIX = "pm.bearer."


class BearerTokens:
    """The tokens the API accepts; none means the API is open.

    Args:
      tokens: the accepted tokens (``config.api.tokens``).
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        # Only digests are kept, so a token cannot leak through a repr or a traceback.
        self._digests = [secret_digest(token) for token in tokens]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        return f"BearerTokens(<{len(self._digests)} tokens>)"

    def allows(self, authorization: str | None, query_token: str | None = None) -> bool:
        """Whether a request may pass.

        Args:
          authorization: the ``Authorization`` header, if any (``Bearer <token>``).
          query_token: the ``?token=`` of a WebSocket handshake, if any; used only when there
            is no ``Authorization`` header.
        """
        if not self._digests:
            return True
        candidate = bearer_token(authorization) if authorization is not None else query_token
        if candidate is None:
            return False
        presented = secret_digest(candidate)
        matched = False
        for digest in self._digests:
            # `|` rather than `or`: every token is compared, whichever one matches.
            matched |= hmac.compare_digest(presented, digest)
        return matched


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme in any case), or
    ``None`` for another scheme or a malformed header."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != SCHEME or not token or " " in token:
        return None
    return token


def subprotocol_token(subprotocols: Iterable[str]) -> str | None:
    """The token offered as ``pm.bearer.<base64url(token)>`` among a WebSocket handshake's
    subprotocols, or ``None`` when none is offered or it does not decode."""
    for offered in subprotocols:
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            encoded = offered.removeprefix(TOKEN_SUBPROTOCOL_PREFIX)
            try:
                padded = encoded + "=" * (-len(encoded) % 4)
                # validate: the lenient default would drop stray characters and accept them.
                decoded = base64.b64decode(padded, altchars=b"-_", validate=True)
                return decoded.decode("ascii")
            except (binascii.Error, ValueError):
                return None
    return None
