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
