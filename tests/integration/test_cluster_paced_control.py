"""Issue 16's flagship use, end to end: a rollout paced by a window (and its ramp) that an
abort criterion stops, and that is paused and resumed through other gateways, across a
cluster. Real clustered gateways in this process (the fixtures of test_cluster_control.py:
each its own MQTT client, engine, shard dispatcher and HTTP server) on one mosquitto and one
throwaway PostgreSQL, simulated devices on real MQTT connections that take a while to answer,
so what is in flight shows. The simulator counts the most requests its devices worked on at
once (``max_working``): the job-wide figure the window bounds.

Job-wide pacing (pm/shard_pacing.py, coordinator grants) and job-wide control
(pm/shard_control.py, the job row's control columns) were each tested alone; here they act
on one job at once: a trip written to ``rollout_state`` while the coordinator writes ramp
steps into the same column, a pause that sends a paced part's tasks back to it, a resume
that must still respect the grants. Each test takes 2-4 s, mostly the gateways splitting the
shards and a few rounds of sends at the devices' latency.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio

from pm.rollout import RolloutState
from tests.integration.brokers import MosquittoBroker
from tests.integration.test_any_gateway import watch, ws_url
from tests.integration.test_cluster_control import (
    GUARD,
    ClusterFactory,
    client,
    devices_on,
    gateways_that_sent,
    paused_everywhere,
    start_cluster,
    start_devices,
    stored_tasks,
    turns,
)
from tests.job_api import entry, wait_final
from tests.stores import read
from tests.waiting import poll_until

__all__ = ["start_cluster"]  # the fixture, for pytest


def stored_rollout_state(url: str, job_id: int) -> RolloutState:
    ((text,),) = read(url, f"SELECT rollout_state FROM jobs WHERE id = {job_id}")
    assert text is not None
    return msgspec.json.decode(text, type=RolloutState)


async def test_a_paced_job_aborts_job_wide_and_its_window_held_across_three_gateways(
    start_cluster: ClusterFactory,
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    """``maxInFlight: 2`` ramped to 4 after 3 resolved, and an abort criterion (errors at 25%
    of at least 12 outcomes) over 12 devices, 4 on each of three gateways, half of whose
    answers are errors: the ramp steps, the criterion trips on the job-wide counts, the job
    ends ``aborted`` with most of its tasks never sent, and the devices never worked on more
    than 2 of its requests before the step nor on more than 4 at any time. The trip's write
    and the coordinator's ramp step both land in ``rollout_state``: both are kept."""
    url = migrated_postgres_url
    steps = 8
    window, ramped_window = 2, 4
    min_settled = 12
    with trio.fail_after(GUARD):
        cluster = await start_cluster(3)
        devices = devices_on(cluster, 4, "a")
        simulator = await start_devices(
            nursery, mosquitto, devices, latency=0.15, error_rate=0.5, error_code=500, seed=3
        )
        body = {
            "batch": [entry(devices, f"/step/{step}") for step in range(steps)],
            "rollout": {
                "maxInFlight": window,
                "ramp": {"factor": 2, "afterSucceeded": 3, "maxInFlight": ramped_window},
            },
            "abort": [{"on": "error", "thresholdPercent": 25, "minSettled": min_settled}],
        }
        snapshots: list[dict[str, Any]] = []
        closes: list[int] = []
        async with client(cluster[0]) as poster, client(cluster[1]) as reader:
            created = await poster.post("/jobs", json=body)
            assert created.status_code == 200, created.text
            job_id = created.json()["id"]
            # A watcher on a third gateway: its snapshots come from the job's row.
            watcher = ws_url(cluster[2].http_url, job_id, "tasks=none")
            nursery.start_soon(watch, watcher, snapshots, closes)
            # Fewer than 3 answers: fewer than 3 resolved, no ramp step can have been taken.
            await poll_until(lambda: simulator.stats.answered >= 2)
            before_step = simulator.stats.max_working
            final = await wait_final(reader, job_id)
            await poll_until(lambda: bool(closes))
    total = len(devices) * steps
    rows = stored_tasks(url, job_id)
    sent = sum(status in {"resolved", "error"} for _, status, _ in rows)
    cancelled = sum(status == "cancelled" for _, status, _ in rows)
    state = stored_rollout_state(url, job_id)
    print(
        f"\naborted job-wide after {sent} of {total} tasks sent; devices held at most"
        f" {before_step} requests before the step, {simulator.stats.max_working} in all;"
        f" stored rollout state {state}"
    )
    assert final["status"] == "aborted" and final["stoppedBy"] == 0, final
    # The job-wide figures, in GET /jobs/{id} (the job read with its tasks) and in the last
    # snapshot of a watcher elsewhere (the job's row alone): the criterion tripped, on the
    # counts it tripped on (every final task, the cancelled ones too), and the ramp's step.
    last = snapshots[-1]["job"]
    assert closes == [1000] and last["status"] == "aborted", (closes, last)
    for view in (final, last):
        ((criterion,),) = [view["abort"]]
        assert criterion["tripped"] is True and criterion["settled"] == total, criterion
        assert criterion["matching"] == final["outcomes"]["error"]["500"], criterion
        assert view["rollout"]["rampSteps"] == 1 and view["rollout"]["maxInFlight"] == 4, view
    assert [view["retriedCount"] for view in (final, last)] == [0, 0]
    assert sent + cancelled == total, rows
    # Tripped at 12 outcomes or soon after (the error share is ~50%, the threshold 25%):
    # what was in flight then, and what each gateway sent before it applied the trip (about
    # three commit windows: at most a window's worth here), settle; the rest is cancelled.
    assert min_settled <= sent <= total // 2, sent
    assert state.tripped == [0] and state.stopped_by == 0, state
    assert state.ramp_steps == 1, state  # the coordinator's step, kept beside the trip
    assert before_step <= window, before_step
    assert simulator.stats.max_working <= ramped_window, simulator.stats
    assert simulator.stats.overlaps == 0
    assert gateways_that_sent(simulator, devices) == {"gw-0", "gw-1", "gw-2"}


async def test_a_paced_job_paused_and_resumed_through_other_gateways_keeps_its_window(
    start_cluster: ClusterFactory,
    mosquitto: MosquittoBroker,
    migrated_postgres_url: str,
    nursery: trio.Nursery,
) -> None:
    """A job with ``maxInFlight: 3`` over 12 devices on three gateways, posted to gw-0,
    paused through gw-1 mid-job: every gateway stops sending (nothing leaves while each polls
    five more times, though the coordinator keeps granting); resumed through gw-2: it
    resolves, and the devices never worked on more than 3 of its requests at once, before
    the pause or after the resume, and did on 3."""
    window = 3
    steps = 3
    with trio.fail_after(GUARD):
        cluster = await start_cluster(3)
        posted_to, pauser, resumer = cluster
        devices = devices_on(cluster, 4, "q")
        simulator = await start_devices(nursery, mosquitto, devices, latency=0.15)
        body = {
            "batch": [entry(devices, f"/step/{step}") for step in range(steps)],
            "rollout": {"maxInFlight": window},
        }
        total = len(devices) * steps
        async with client(posted_to) as poster, client(pauser) as a, client(resumer) as b:
            created = await poster.post("/jobs", json=body)
            assert created.status_code == 200, created.text
            job_id = created.json()["id"]
            await poll_until(lambda: simulator.stats.answered >= 2 * window)
            paused = await a.post(f"/jobs/{job_id}/pause", json={})
            assert paused.status_code == 200, paused.text
            await poll_until(lambda: paused_everywhere(cluster, job_id))
            received = simulator.stats.received
            await turns(cluster, 5)
            assert simulator.stats.received == received, "a request left a paused job"
            view = (await b.get(f"/jobs/{job_id}")).json()
            assert view["status"] == "paused" and view["sentCount"] == 0, view
            assert 0 < view["doneCount"] < total, view
            assert view["rollout"]["inFlight"] == 0, view
            max_before_resume = simulator.stats.max_working
            per_device = {device: len(simulator.received_by(device)) for device in devices}

            resumed = await b.post(f"/jobs/{job_id}/resume", json={})
            assert resumed.status_code == 200, resumed.text
            final = await wait_final(poster, job_id)
    print(
        f"\npaused after {received} requests; devices held at most {max_before_resume}"
        f" before the resume, {simulator.stats.max_working} in all"
    )
    assert (final["status"], final["finishCount"]) == ("resolved", total), final
    assert max_before_resume <= window
    assert simulator.stats.max_working == window, simulator.stats
    assert simulator.stats.overlaps == 0
    assert gateways_that_sent(simulator, devices, per_device), "nothing sent after the resume"
    # Per-device order held through the pause: each device got its steps in job order.
    for device in devices:
        resources = [request["resource"] for request in simulator.received_by(device)]
        assert resources == [f"/step/{step}" for step in range(steps)], (device, resources)
