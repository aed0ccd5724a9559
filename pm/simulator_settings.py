"""What a simulated fleet is: :class:`SimulatorSettings`, and the device ids to give it.

Plain data, no I/O but reading an id file; :mod:`pm.simulator` runs the fleet and re-exports
these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

from .protocol import normalize_device_id


class SimulatorSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the simulated fleet behaves. Rates are probabilities in [0, 1]."""

    host: str = "127.0.0.1"
    port: int = 1883
    devices: list[str] = msgspec.field(default_factory=list)
    latency: float = 0.0
    # With a value above ``latency``: each request's latency is drawn uniformly between the
    # two (seeded like the rates), so answers come back spread out as a real fleet's do.
    latency_max: float | None = None
    error_rate: float = 0.0
    error_code: int = 500
    silent_rate: float = 0.0
    progress_steps: int = 0
    connections: int | None = None
    request_topic: str = "/remote/{device}"
    response_topic: str = "/remote/{device}/response"
    seed: int = 0
    username: str = ""
    password: str = ""
    # Per-device credentials (an embedded broker with broker.auth): when set, each device
    # logs in on its own connection as its id with this password (`pm devices add ID
    # --password P` for every simulated id); `connections`, `username` and `password` are
    # then ignored, since a broker ACL lets one login serve only one device.
    device_password: str = ""
    # MQTT over TLS: ``tls_ca_file`` is the PEM file trusted for the broker's certificate
    # (setting it implies ``tls``); ``tls`` alone trusts the system's defaults.
    tls: bool = False
    tls_ca_file: str = ""
    # Keep every request each device received (Simulator.received_by), for tests. Off by
    # default: a load test sending millions of requests would hold them all in memory.
    record_requests: bool = False
    # Keep every request id each device received, to count redeliveries (a chaos soak). Off
    # by default for the same reason: memory grows with every request.
    track_request_ids: bool = False
    # Protocol v1.1 presence: a retained "online" birth and an "offline" last will on
    # status_topic; false: a v1 device that never speaks of its presence.
    status: bool = True
    status_topic: str = "/remote/{device}/status"
    # Fraction of the devices kept offline (their connections closed), in [0, 1].
    offline_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    # Seconds between two new choices of the offline devices; 0: chosen once, at start.
    flap_interval: Annotated[float, msgspec.Meta(ge=0)] = 0.0


def generate_mac_ids(count: int, prefix: str = "02:00") -> list[str]:
    """``count`` distinct MAC-shaped ids (locally administered range)."""
    ids = []
    for number in range(count):
        tail = number.to_bytes(4, "big")
        ids.append(prefix + ":" + ":".join(f"{byte:02x}" for byte in tail))
    return ids


def read_device_ids(path: str | Path) -> list[str]:
    """One id per line; blank lines and ``#`` comments ignored; ids normalized."""
    ids = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(normalize_device_id(line))
    return ids
