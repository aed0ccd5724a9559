"""Fakes for unit tests of pure dispatch logic. Integration tests use the real broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pm.engine import Engine


class RecordingPublisher:
    """Stands in for the MQTT client: records requests; ``connected`` can be toggled."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.retained: dict[str, bytes] = {}
        self.connected = True
        self.on_publish: Callable[[str, dict[str, Any]], None] | None = None

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False) -> bool:
        if not self.connected:
            return False
        if retain:
            self.retained[topic] = payload  # the gateway publishes no request retained
        request = json.loads(payload)
        self.published.append((topic, request))
        if self.on_publish is not None:
            self.on_publish(topic, request)
        return True

    def requests_to(self, topic: str) -> list[dict[str, Any]]:
        return [request for t, request in self.published if t == topic]


def answer(engine: Engine, request: dict[str, Any], code: int = 200, data: Any = None) -> None:
    """Hand ``engine`` the answer a device would send to ``request``: ``code`` and ``data``
    (``{}`` when not given)."""
    payload = {"id": request["id"], "code": code, "data": {} if data is None else data}
    # Sanji: a DIRECT message's tunnel is the topic its answer goes to.
    engine.on_mqtt_message(request["tunnel"], json.dumps(payload).encode())


class FakeDevices:
    """Answers published requests as devices would: at once, or when the test says so."""

    def __init__(self, publisher: RecordingPublisher) -> None:
        self.publisher = publisher
        self.engine: Engine | None = None
        self.auto_answer = True
        # Bytes of filler in each answer, to make task messages heavy.
        self.result_padding = 0
        publisher.on_publish = self._on_publish

    def _on_publish(self, topic: str, request: dict[str, Any]) -> None:
        if self.auto_answer:
            self.answer(request)

    def answer(self, request: dict[str, Any], code: int = 200) -> None:
        assert self.engine is not None
        data: dict[str, Any] = {"echo": request["resource"]}
        if self.result_padding:
            data["padding"] = "x" * self.result_padding
        answer(self.engine, request, code, data)

    def answer_all(self) -> None:
        for _, request in self.publisher.published:
            self.answer(request)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [request for _, request in self.publisher.published]
