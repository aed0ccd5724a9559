"""Fakes for unit tests of pure dispatch logic. Integration tests use the real broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


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
            self.retained[topic] = payload
            if not payload:
                return True  # clearing a retained request is not a request
        request = json.loads(payload)
        self.published.append((topic, request))
        if self.on_publish is not None:
            self.on_publish(topic, request)
        return True

    def requests_to(self, topic: str) -> list[dict[str, Any]]:
        return [request for t, request in self.published if t == topic]
