"""A small synchronous client for the gateway's REST API, with errors translated for people.

Error handling: every httpx failure and every 4xx/5xx answer becomes a :class:`CliError`
whose message is the gateway's own ``message`` (which names the offending field), so no
command ever shows a traceback for a refused or unreachable gateway.
"""

from __future__ import annotations

import ssl
from http import HTTPStatus
from types import TracebackType
from typing import Any

import httpx

from ._arguments import authorization
from ._errors import CliError, unreachable

# Seconds a single request may take; the API answers at once, so this only catches hangs.
REQUEST_TIMEOUT = 10.0


def server_message(response: httpx.Response) -> str:
    """The ``message`` of a JSON error body, else the raw text (a proxy's HTML page, say)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return response.text.strip() or _status_text(response.status_code)


def client_settings(
    url: str, timeout: float, token: str | None, ssl_context: ssl.SSLContext | None
) -> dict[str, Any]:
    """The httpx client options every command uses for the gateway."""
    return {
        "base_url": url,
        "timeout": timeout,
        "headers": authorization(token),
        "verify": ssl_context if ssl_context is not None else True,
    }


class GatewayClient:
    """``with GatewayClient(url) as gateway: gateway.request("GET", "/jobs")``."""

    def __init__(
        self,
        url: str,
        timeout: float = REQUEST_TIMEOUT,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._client = httpx.Client(**client_settings(url, timeout, token, ssl_context))

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._client.close()

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """Send one request; returns only successful (2xx/3xx) responses.

        Error handling: raises :class:`CliError` when the gateway cannot be reached, does not
        answer within the timeout, or answers with an error status (its message included).
        """
        try:
            response = self._client.request(method, path, **options)
        except httpx.HTTPError as error:
            raise _failure(self.url, self._timeout, error) from None
        return _successful(method, path, response)


class AsyncGatewayClient:
    """:class:`GatewayClient` for commands that run on trio (``pm bench``): ``async with
    AsyncGatewayClient(url) as gateway: await gateway.request("GET", "/jobs")``, the same
    errors."""

    def __init__(
        self,
        url: str,
        timeout: float = REQUEST_TIMEOUT,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._client = httpx.AsyncClient(**client_settings(url, timeout, token, ssl_context))

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """As :meth:`GatewayClient.request`."""
        try:
            response = await self._client.request(method, path, **options)
        except httpx.HTTPError as error:
            raise _failure(self.url, self._timeout, error) from None
        return _successful(method, path, response)


def _failure(url: str, timeout: float, error: httpx.HTTPError) -> CliError:
    """The one-line error for a request that got no answer."""
    if isinstance(error, httpx.ConnectError):
        return unreachable(url)
    if isinstance(error, httpx.TimeoutException):
        return CliError(f"the gateway at {url} did not answer within {timeout:g} s")
    return CliError(f"request to the gateway at {url} failed: {error}")


def _successful(method: str, path: str, response: httpx.Response) -> httpx.Response:
    """``response`` if it is not an error; else the error, with the gateway's message."""
    if response.is_error:
        raise CliError(
            f"the gateway refused {method} {path} "
            f"({_status_text(response.status_code)}): {server_message(response)}"
        )
    return response


def _status_text(code: int) -> str:
    # HTTP/1.1 servers may send no reason phrase (hypercorn does not): use the standard one.
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)
