"""Presence as the broker sees it: a device is online while a connected client is subscribed
to its request topic.

Both broker children publish each change as the device itself would under protocol v1.1: a
retained ``online`` or ``offline`` on the device's status topic, so the gateway has one code
path for devices that announce themselves and devices that do not (v1). Pure bookkeeping,
shared by the children (they never import each other): the amqtt broker
(:class:`pm.broker.amqtt._presence_broker.PresenceBroker`) calls it on every subscription that
starts or ends and on every connection that ends, the mosquitto child on the same events read
from mosquitto's log (:mod:`pm.broker.mosquitto._presence_log`); each publishes what it
returns.

Only exact request topics count (a filter with ``+`` or ``#`` names no device). The device id
is the topic level as the device wrote it; the gateway normalizes it.
"""

from __future__ import annotations

import json

import msgspec

ONLINE = b"online"
OFFLINE = b"offline"


class PresenceTopics(msgspec.Struct, frozen=True, kw_only=True):
    """The ``[topics]`` templates the child needs (``--presence`` on its command line)."""

    request: str
    status: str

    @classmethod
    def from_json(cls, text: str) -> PresenceTopics:
        """Error handling: :class:`ValueError` naming what is wrong."""
        try:
            topics = msgspec.convert(json.loads(text), cls)
        except (ValueError, msgspec.ValidationError) as error:
            raise ValueError(
                f"--presence is not a JSON object with request/status: {error}"
            ) from None
        for template in (topics.request, topics.status):
            if template.count("{device}") != 1:
                raise ValueError(f"--presence template without one {{device}}: {template!r}")
        return topics


class BrokerPresence:
    """Which devices have a connected client subscribed to their request topic.

    Each method returns the devices whose presence changed with that event (at most one for a
    subscription, any number for a connection that ends), to be published by the caller.
    Several clients may hold one device's request topic (a takeover in progress, a device
    with two connections): the device is offline only when the last one lets go.
    """

    def __init__(self, topics: PresenceTopics) -> None:
        self._topics = topics
        self._prefix, _, self._suffix = topics.request.partition("{device}")
        # Keyed by connection, not by client id: during a takeover the old connection of a
        # client id may end after the new one subscribed (amqtt waits for it only so long),
        # and its end must not take the new connection's devices offline.
        self._holders: dict[str, set[str]] = {}  # device -> connection keys
        self._held_by: dict[str, set[str]] = {}  # connection key -> devices
        self._current: dict[str, str] = {}  # client id -> key of its newest connection
        self._connections_made = 0

    def connected(self, client_id: str) -> str:
        """A connection of ``client_id`` started: its key, for :meth:`disconnected`. From now
        on the client id's subscriptions are this connection's. Without this call (the
        mosquitto log), the client id is the key."""
        self._connections_made += 1
        key = f"{client_id}\0{self._connections_made}"
        self._current[client_id] = key
        return key

    def _key_of(self, client_id: str) -> str:
        return self._current.get(client_id, client_id)

    def status_topic(self, device: str) -> str:
        return self._topics.status.replace("{device}", device)

    def device_of(self, topic_filter: str) -> str | None:
        """The device whose request topic ``topic_filter`` is exactly, else ``None``."""
        if not (topic_filter.startswith(self._prefix) and topic_filter.endswith(self._suffix)):
            return None
        device = topic_filter[len(self._prefix) : len(topic_filter) - len(self._suffix)]
        if not device or "/" in device or "+" in device or "#" in device:
            return None
        return device

    def subscribed(self, client_id: str, topic_filter: str) -> str | None:
        """A connected client subscribed: the device that turned online, if any."""
        device = self.device_of(topic_filter)
        if device is None:
            return None
        key = self._key_of(client_id)
        holders = self._holders.setdefault(device, set())
        turned_online = not holders
        holders.add(key)
        self._held_by.setdefault(key, set()).add(device)
        return device if turned_online else None

    def unsubscribed(self, client_id: str, topic_filter: str) -> str | None:
        """A client let go of a filter: the device that turned offline, if any."""
        device = self.device_of(topic_filter)
        key = self._key_of(client_id)
        if device is None or device not in self._held_by.get(key, ()):
            return None
        self._held_by[key].discard(device)
        if not self._held_by[key]:
            del self._held_by[key]
        return device if self._release(device, key) else None

    def disconnected(self, client_id: str, key: str | None = None) -> list[str]:
        """A client's connection ended (disconnect, lost, taken over): the devices that turned
        offline. ``key``: the connection's, from :meth:`connected` (default: the client id's
        newest). A persistent session keeps its subscriptions, but nobody hears them now; a
        device another connection also holds (the one that took the client id over) stays
        online."""
        key = self._key_of(client_id) if key is None else key
        if self._current.get(client_id) == key:
            del self._current[client_id]
        devices = self._held_by.pop(key, set())
        return sorted(device for device in devices if self._release(device, key))

    def _release(self, device: str, key: str) -> bool:
        holders = self._holders.get(device)
        if holders is None:
            return False
        holders.discard(key)
        if holders:
            return False
        del self._holders[device]
        return True

    def __len__(self) -> int:
        """Devices online now."""
        return len(self._holders)
