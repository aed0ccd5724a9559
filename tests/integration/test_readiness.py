"""``/readyz`` as an orchestrator uses it: 503 with the reason while the gateway cannot reach
its broker, 200 again once it can; ``/healthz`` (liveness) answers 200 throughout. A real
gateway on a real external mosquitto that is stopped and started again.

(Readiness while the store cannot commit: ``test_storage_faults``.)
"""

from __future__ import annotations

from typing import Any

import trio

from tests.integration.brokers import MosquittoBroker
from tests.integration.gateways import GatewayFactory
from tests.integration.readiness import readiness, wait_for_readiness


async def test_readyz_follows_the_broker_connection(
    start_gateway: GatewayFactory, http: Any, mosquitto: MosquittoBroker
) -> None:
    with trio.fail_after(40):
        gateway = await start_gateway(
            broker={"embedded": False}, mqtt={"host": mosquitto.host, "port": mosquitto.port}
        )
        client = http(gateway)
        assert await readiness(client) == (200, {"ready": True, "reasons": []})

        await trio.to_thread.run_sync(mosquitto.stop)
        body = await wait_for_readiness(client, 503)
        assert body["ready"] is False
        assert len(body["reasons"]) == 1 and body["reasons"][0].startswith("broker: "), body
        # Liveness is not readiness: the process still serves.
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["brokerConnected"] is False

        await trio.to_thread.run_sync(mosquitto.start)
        assert await wait_for_readiness(client, 200) == {"ready": True, "reasons": []}
