"""HTTPS: with ``http.certfile`` and ``http.keyfile`` set, the API (WebSockets included) is
served over TLS only. A self-signed certificate is made per test with ``openssl``."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from tests.integration.gateways import GatewayFactory, SimulatorFactory, pm
from tests.job_api import entry, post_job, wait_final


async def test_the_api_is_served_over_https(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    certificate: tuple[Path, Path],
) -> None:
    certfile, keyfile = certificate
    with trio.fail_after(20):
        gateway = await start_gateway(http={"certfile": str(certfile), "keyfile": str(keyfile)})
        assert gateway.http_url.startswith("https://127.0.0.1:")
        await start_simulator(gateway, ["tls-dev"])
        trusting = ssl.create_default_context(cafile=str(certfile))
        async with httpx.AsyncClient(base_url=gateway.http_url, verify=trusting) as client:
            assert (await client.get("/healthz")).status_code == 200
            created = await post_job(client, entry("tls-dev", "/secure"))
            job = await wait_final(client, created["id"])
            assert job["status"] == "resolved"
        host_port = gateway.http_url.removeprefix("https://")
        async with trio_websocket.open_websocket_url(
            f"wss://{host_port}/jobs/{created['id']}/ws", ssl_context=trusting
        ) as websocket:
            assert json.loads(await websocket.get_message())["type"] == "job"
        # A client that does not trust the certificate is refused at the handshake, and the
        # port speaks no plain HTTP.
        async with httpx.AsyncClient(base_url=gateway.http_url) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/healthz")
        async with httpx.AsyncClient(base_url=f"http://{host_port}") as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/healthz")


async def test_the_cli_trusts_a_self_signed_gateway_given_its_certificate(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    certificate: tuple[Path, Path],
) -> None:
    certfile, keyfile = certificate
    with trio.fail_after(60):
        gateway = await start_gateway(http={"certfile": str(certfile), "keyfile": str(keyfile)})
        await start_simulator(gateway, ["cli-tls"])
        url = ["--url", gateway.http_url]
        refused = await pm("jobs", *url)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        # --ca-file, or $PM_CA_FILE: submit, follow over wss://, list.
        submitted = await pm(
            "submit", "--resource", "/x", "--to", "cli-tls", "--watch", *url,
            "--ca-file", str(certfile),
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        listed = await pm("jobs", *url, env={"PM_CA_FILE": str(certfile)})
        assert listed.returncode == 0, listed.stderr
        assert submitted.stdout.split()[0] in listed.stdout
        unreadable = await pm("jobs", *url, "--ca-file", str(certfile.parent / "missing.pem"))
        assert unreadable.returncode != 0 and "--ca-file" in unreadable.stderr
