"""Whether each device can receive a command now (online, offline, or never seen).

A minimal stand-in with the public API the device-presence work provides; the queues
(:mod:`pm.devices`) only read it. Nothing here does I/O; :meth:`PresenceBook.update` is fed
by whoever learns of a change (the broker, a status topic, a test).
"""

from __future__ import annotations

import enum

import msgspec
import trio


class Presence(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


class DevicePresence(msgspec.Struct, kw_only=True):
    """What is known of one device's connection; ``at`` is when it last changed."""

    presence: Presence
    at: float


class PresenceBook:
    """Presence by device id; a device never seen is ``UNKNOWN`` (treated as sendable)."""

    def __init__(self) -> None:
        self._records: dict[str, DevicePresence] = {}
        self._online: dict[str, trio.Event] = {}

    def presence(self, device: str) -> Presence:
        record = self._records.get(device)
        return Presence.UNKNOWN if record is None else record.presence

    def update(self, device: str, presence: Presence, at: float) -> None:
        self._records[device] = DevicePresence(presence=presence, at=at)
        if presence is not Presence.OFFLINE:
            event = self._online.pop(device, None)
            if event is not None:
                event.set()

    async def wait_sendable(self, device: str) -> None:
        """Return at once if ``device`` is online or unknown, else when it turns online."""
        if self.presence(device) is not Presence.OFFLINE:
            await trio.lowlevel.checkpoint()
            return
        event = self._online.get(device)
        if event is None:
            event = self._online[device] = trio.Event()
        await event.wait()

    def record(self, device: str) -> DevicePresence | None:
        return self._records.get(device)
