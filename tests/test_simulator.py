"""The simulator's bookkeeping that needs no broker (its MQTT side is in tests/integration/)."""

from __future__ import annotations

import msgspec
import pytest
import trio

from pm.simulator import Simulator, SimulatorSettings


def _request(request_id: int) -> bytes:
    return msgspec.json.encode(
        {"id": request_id, "method": "get", "resource": "/x", "data": {}, "tunnel": "/t"}
    )


class _NoClient:
    def publish(self, topic: str, payload: bytes) -> bool:
        return True


@pytest.mark.parametrize("record", [False, True])
async def test_requests_are_kept_only_when_recording(record: bool) -> None:
    async with trio.open_nursery() as nursery:
        simulator = Simulator(SimulatorSettings(devices=["aa"], record_requests=record), nursery)
        for request_id in (1, 2):
            simulator._on_request(_NoClient(), "/remote/aa", _request(request_id), nursery)  # type: ignore[arg-type]
        assert simulator.stats.received == 2 and simulator.stats.answered == 2
        if record:
            assert [r["id"] for r in simulator.received_by("aa")] == [1, 2]
        else:
            assert simulator.requests == {}
            with pytest.raises(RuntimeError, match="record_requests"):
                simulator.received_by("aa")


@pytest.mark.parametrize("track", [False, True])
async def test_redeliveries_are_counted_when_request_ids_are_tracked(track: bool) -> None:
    async with trio.open_nursery() as nursery:
        settings = SimulatorSettings(devices=["aa"], track_request_ids=track)
        simulator = Simulator(settings, nursery)
        # 2 is the last answered (replayed: a duplicate), 1 an older one (done again).
        for request_id in (1, 2, 2, 1, 3):
            simulator._on_request(_NoClient(), "/remote/aa", _request(request_id), nursery)  # type: ignore[arg-type]
        assert simulator.stats.received == 5
        assert simulator.stats.duplicates == 1
        assert simulator.stats.redelivered == (2 if track else 0)


class _TimedClient:
    """Records when each answer is published, on trio's clock."""

    def __init__(self) -> None:
        self.published_at: list[float] = []

    def publish(self, topic: str, payload: bytes) -> bool:
        self.published_at.append(trio.current_time())
        return True


async def test_a_latency_range_spreads_the_answers_over_it(autojump_clock: trio.abc.Clock) -> None:
    devices = [f"d{number}" for number in range(200)]
    client = _TimedClient()
    async with trio.open_nursery() as nursery:
        settings = SimulatorSettings(devices=devices, latency=1.0, latency_max=3.0)
        simulator = Simulator(settings, nursery)
        start = trio.current_time()
        for request_id, device in enumerate(devices):
            simulator._on_request(client, f"/remote/{device}", _request(request_id), nursery)  # type: ignore[arg-type]
    delays = sorted(at - start for at in client.published_at)
    assert len(delays) == len(devices)
    assert 1.0 <= delays[0] and delays[-1] <= 3.0
    # Spread over the range, not bunched at one end: 200 uniform draws fill both halves.
    assert delays[len(delays) // 4] < 2.0 < delays[3 * len(delays) // 4]
