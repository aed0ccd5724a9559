"""``GET /devices/{id}`` and ``GET /devices`` on clustered gateways (issue 16): a device's task
in flight shows through any gateway, the one serving its shard (its shard fleet) and the others
(the stored ``sent`` task), and so does its job's ``eta`` (from the job-wide settle times).
Real clustered gateways in this process (the fixtures of
test_cluster_control.py) on one mosquitto and one throwaway PostgreSQL, slow simulated devices
on real MQTT connections; about 5 s (most of it the two gateways splitting the shards).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import trio

from pm.gateway import Gateway
from tests.integration.brokers import MosquittoBroker
from tests.integration.test_cluster_control import (
    GUARD,
    ClusterFactory,
    client,
    served_by,
    start_cluster,
    start_devices,
)
from tests.job_api import entry, wait_final

__all__ = ["start_cluster"]  # the fixture, for pytest

# Long enough that a commit window (20 ms) lands well inside each task's turn.
LATENCY = 0.6


async def device_view(gateway: Gateway, device: str) -> dict[str, Any]:
    async with client(gateway) as http:
        response = await http.get(f"/devices/{device}")
    assert response.status_code == 200, response.text
    return response.json()


async def listed_view(gateway: Gateway, device: str) -> dict[str, Any]:
    async with client(gateway) as http:
        response = await http.get("/devices", params={"q": device})
    assert response.status_code == 200, response.text
    return next(view for view in response.json() if view["id"] == device)


async def test_a_devices_task_in_flight_and_its_jobs_eta_show_through_any_gateway(
    start_cluster: ClusterFactory, mosquitto: MosquittoBroker, nursery: trio.Nursery
) -> None:
    with trio.fail_after(GUARD):
        cluster = await start_cluster(2)
        device = "slow-000"
        serving, other = cluster if served_by(cluster[0], device) else cluster[::-1]
        assert not served_by(other, device)
        await start_devices(nursery, mosquitto, [device], latency=LATENCY)
        async with client(other) as poster:
            # Three tasks: the job's eta needs two settled and one to go.
            batch = [entry([device], f"/step/{step}") for step in range(3)]
            created = await poster.post("/jobs", json={"batch": batch})
            assert created.status_code == 200, created.text
            job_id = created.json()["id"]
            # While the device works on its tasks, read its view through both gateways
            # until the job ends; keep the first reads that name a task in flight (the other
            # gateway's once the serving one has committed the task as sent).
            first: dict[str, dict[str, Any]] = {}
            etas: list[str] = []
            stored_etas: list[str] = []
            while (job := (await poster.get(f"/jobs/{job_id}")).json())["finishAt"] is None:
                if job["eta"] is not None:
                    etas.append(job["eta"])
                # GET /jobs shows the stored row's eta, which each commit recounts.
                rows = (await poster.get("/jobs")).json()
                if (eta := next(row["eta"] for row in rows if row["id"] == job_id)) is not None:
                    stored_etas.append(eta)
                for name, gateway in (("serving", serving), ("other", other)):
                    view = await device_view(gateway, device)
                    if view["inFlight"] is not None:
                        first.setdefault(name, view)
                if "other" in first and "listed" not in first:
                    view = await listed_view(other, device)
                    if view["inFlight"] is not None:
                        first["listed"] = view
                await trio.sleep(0.02)
            final = await wait_final(poster, job_id)

        task_ids = [task["id"] for task in final["collection"]]
        assert final["status"] == "resolved", final
        assert set(first) == {"serving", "other", "listed"}, first
        for view in first.values():
            assert view["inFlight"] in task_ids, first
        # One task sent at a time: the others pending or already answered.
        other_view = first["other"]
        assert other_view["counts"].get("sent") == 1, other_view
        assert other_view["pending"] + other_view["counts"].get("resolved", 0) == 2, other_view
        # The job's eta, read through the gateway that does not serve the device: once two
        # tasks settled, the last one's settle at their rate (about one latency later).
        assert etas, "no eta while the job ran"
        finished = datetime.fromisoformat(final["finishAt"])
        estimated = datetime.fromisoformat(etas[-1])
        assert abs((finished - estimated).total_seconds()) < LATENCY * 2, (etas, final)
        assert stored_etas, "no eta in the job's row while it ran"
        stored = datetime.fromisoformat(stored_etas[-1])
        assert abs((finished - stored).total_seconds()) < LATENCY * 2, (stored_etas, final)
        # Latencies are the serving shard fleet's, kept in memory there.
        after = [await device_view(gateway, device) for gateway in (serving, other)]
    assert [view["inFlight"] for view in after] == [None, None], after
    assert after[0]["latencyP50"] is not None and after[0]["latencyP50"] >= LATENCY * 0.5, after
    assert after[1]["latencyP50"] is None, after
