"""The API's JSON answers: every response, errors included, is JSON encoded by msgspec.

Errors are ``{"message": "..."}`` (:class:`~pm.schemas.ErrorBody`). Shared by the app and its
route modules so that each answer is built one way.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from quart_trio.wrappers import TrioResponse

from ..schemas import ErrorBody

JSON = "application/json"
# Seconds a client refused for a passing condition (a full job table, a store that cannot
# commit, a job's watcher slots taken) is told to wait (Retry-After).
RETRY_AFTER = 1

_encoder = msgspec.json.Encoder()


def encode_json(body: object) -> bytes:
    """``body`` as JSON bytes, for answers built once (the OpenAPI document)."""
    return _encoder.encode(body)


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> TrioResponse:
    return TrioResponse(_encoder.encode(body), status, dict(headers or {}), content_type=JSON)


def error_body(message: str) -> bytes:
    """``{"message": ...}``, the body of every error answer."""
    return _encoder.encode(ErrorBody(message))


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> TrioResponse:
    return TrioResponse(error_body(message), status, dict(headers or {}), content_type=JSON)
