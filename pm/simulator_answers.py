"""How a simulated device answers a request (``docs/protocol.md``): the per-request path.

A mixin of :class:`pm.simulator.Simulator` (which owns the connections and the fleet's state):
the MQTT client of a connection calls :meth:`RequestAnswering._on_request` for every message on
a device's request topic. A request is answered at once (no latency, no progress steps: no
task per request) or by a task in the connection's nursery, so a device that goes offline
loses the work under way. Re-sent copies are recognized by id (``duplicates``), overlapping
requests counted (``overlaps``); see :mod:`pm.simulator`.

Error handling: a message that is not a request (empty, or not a valid request body) is
counted in ``malformed`` or ignored, never raised.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import trio

from .mqtt import MqttClient
from .protocol import PROGRESS_CODE, SanjiRequest
from .simulator_settings import SimulatorSettings

_decode_request = msgspec.json.Decoder(SanjiRequest).decode
_encode = msgspec.json.Encoder().encode


class DeviceStats(msgspec.Struct):
    received: int = 0
    answered: int = 0
    errors: int = 0
    silent: int = 0
    progress_messages: int = 0
    overlaps: int = 0
    duplicates: int = 0
    redelivered: int = 0
    malformed: int = 0
    # The most requests the fleet worked on at once (with a latency): what the gateway had in
    # flight, as the devices saw it (a rollout's window is checked against it).
    max_working: int = 0


class RequestAnswering:
    """The answering side of a simulated fleet. The attributes below are set by
    :class:`pm.simulator.Simulator`."""

    settings: SimulatorSettings
    stats: DeviceStats
    paused: bool
    requests: dict[str, list[dict[str, Any]]]
    _busy: dict[str, tuple[int, str]]
    _last_answer: dict[str, tuple[int, bytes]]
    _ids_received: dict[str, set[int]]
    _random: random.Random
    _device_of_topic: dict[str, str]

    def _on_request(
        self, client: MqttClient, topic: str, payload: bytes, answering: trio.Nursery
    ) -> None:
        device = self._device_of_topic.get(topic)
        if device is None or not payload:
            return  # an empty payload is not a request (older gateways cleared retained ones)
        try:
            request = _decode_request(payload)
        except msgspec.DecodeError:
            self.stats.malformed += 1
            return
        self.stats.received += 1
        if self.settings.record_requests:
            self.requests[device].append(msgspec.to_builtins(request))
        if self.settings.track_request_ids:
            received = self._ids_received[device]
            if request.id in received:
                self.stats.redelivered += 1
            else:
                received.add(request.id)
        # At-least-once delivery: a re-sent request is recognized by its id. One being
        # worked on is not done again, its answer goes to the latest copy's tunnel; one
        # already answered gets the same answer again at once (docs/protocol.md).
        if self._busy.get(device, (None,))[0] == request.id:
            self._busy[device] = (request.id, request.tunnel)
            self.stats.duplicates += 1
            return
        last_id, last_answer = self._last_answer.get(device, (None, b""))
        if last_id == request.id:
            self.stats.duplicates += 1
            if client.publish(request.tunnel, last_answer):
                self.stats.answered += 1
            return
        if device in self._busy:
            self.stats.overlaps += 1
        if self.paused:
            return
        fate = self._random.random()
        if fate < self.settings.silent_rate:
            self.stats.silent += 1
            return
        failed = self._random.random() < self.settings.error_rate
        latency = self._draw_latency()
        if latency <= 0 and self.settings.progress_steps == 0:
            self._answer(client, device, request, failed)  # fast path: no task per request
            return
        self._busy[device] = (request.id, request.tunnel)
        self.stats.max_working = max(self.stats.max_working, len(self._busy))
        # In the connection's nursery: a device that goes offline loses the work under way.
        answering.start_soon(self._answer_later, client, device, request, failed, latency)

    def _draw_latency(self) -> float:
        low, high = self.settings.latency, self.settings.latency_max
        # No draw for a fixed latency: a seed gives the same fates as before ranges existed.
        return low if high is None or high <= low else self._random.uniform(low, high)

    async def _answer_later(
        self, client: MqttClient, device: str, request: SanjiRequest, failed: bool, latency: float
    ) -> None:
        tunnel = request.tunnel
        try:
            steps = self.settings.progress_steps
            pause = latency / (steps + 1)
            for step in range(1, steps + 1):
                await trio.sleep(pause)
                progress = {"progress": step * 100 // (steps + 1)}
                working = self._busy.get(device)  # another request's, after an overlap
                tunnel = working[1] if working and working[0] == request.id else tunnel
                client.publish(tunnel, self._message(request, PROGRESS_CODE, progress))
                self.stats.progress_messages += 1
            await trio.sleep(pause)
        finally:
            if self._busy.get(device, (None,))[0] == request.id:
                tunnel = self._busy.pop(device)[1]
        self._answer(client, device, msgspec.structs.replace(request, tunnel=tunnel), failed)

    def _answer(self, client: MqttClient, device: str, request: SanjiRequest, failed: bool) -> None:
        if failed:
            self.stats.errors += 1
            body = self._message(request, self.settings.error_code, {"message": "simulated error"})
        else:
            body = self._message(request, 200, {"resource": request.resource, "echo": request.data})
        self._last_answer[device] = (request.id, body)
        if client.publish(request.tunnel, body):
            self.stats.answered += 1

    @staticmethod
    def _message(request: SanjiRequest, code: int, data: Any) -> bytes:
        return _encode(
            {
                "id": request.id,
                "code": code,
                "method": request.method,
                "resource": request.resource,
                "sign": ["simulator"],
                "data": data,
            }
        )
