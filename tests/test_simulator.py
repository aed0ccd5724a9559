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
