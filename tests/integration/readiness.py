"""Reading a gateway's ``GET /readyz``, and waiting for it to say something."""

from __future__ import annotations

from typing import Any

import httpx
import trio


async def readiness(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    """The status code and the body of ``GET /readyz``."""
    response = await client.get("/readyz")
    return response.status_code, response.json()


async def wait_for_readiness(client: httpx.AsyncClient, status: int) -> dict[str, Any]:
    """Poll until ``/readyz`` answers ``status``; returns its body. Callers bound it with
    their test's hang guard."""
    while True:
        code, body = await readiness(client)
        if code == status:
            return body
        await trio.sleep(0.05)
