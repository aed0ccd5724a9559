"""The reference device: simulated Sanji devices that follow ``docs/protocol.md``, nothing more.

Each device subscribes to its request topic and answers on the request's ``tunnel`` after
``latency`` seconds (or a latency drawn per request up to ``latency_max``), optionally with
``progress_steps`` interim 206 answers first. A seeded random generator decides which
requests fail (``error_rate``, answered with ``error_code``) and which are never answered
(``silent_rate``), so a run is reproducible.

By default every device has its own MQTT connection, like a real fleet; ``connections = K``
multiplexes the devices over K connections instead (for very large simulated fleets).

What a fleet is (devices, latency, rates, topics, presence) is
:class:`~pm.simulator_settings.SimulatorSettings`, re-exported here with the id helpers.

The simulator also checks the gateway: a request that arrives at a device still working on
another one is counted in ``overlaps`` (the gateway promises one command in flight per
device); a copy of the request being worked on (a re-send) in ``duplicates``, and its answer
goes to that latest copy's tunnel. With ``track_request_ids`` every id a device ever received is
kept, and a request whose id the device received before is counted in ``redelivered``
(whether or not the device recognized it as a duplicate: ``redelivered - duplicates`` is
work a device did twice). With ``record_requests``, every request is kept per device, in
arrival order.

Presence (protocol v1.1, ``status`` on by default): after subscribing, each device publishes a
retained ``online`` on its status topic; a device alone on its connection sets a retained
``offline`` last will, which the broker publishes if the connection dies; a device taken
offline on purpose publishes ``offline`` itself first. ``status = False`` behaves as a v1
device (no status at all). ``offline_rate`` keeps that fraction of the devices offline: chosen
once at start, or chosen again every ``flap_interval`` seconds (devices go offline and come
back).

Fault injection: :meth:`Simulator.disconnect` takes a device offline (its connection closes and
the answers it was still working on are lost, as when a device loses power or network), and
:meth:`Simulator.reconnect` brings it back with a fresh connection and subscription.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import trio

from .mqtt import LastWill, MqttClient, open_mqtt_client
from .protocol import TopicTemplates, normalize_device_id
from .simulator_answers import DeviceStats as DeviceStats
from .simulator_answers import RequestAnswering
from .simulator_settings import SimulatorSettings as SimulatorSettings
from .simulator_settings import generate_mac_ids as generate_mac_ids
from .simulator_settings import read_device_ids as read_device_ids

logger = logging.getLogger(__name__)

# Seconds a device taken offline waits for the broker to acknowledge its "offline".
OFFLINE_ACK_TIMEOUT = 2.0
# Connections opened at once: a burst of thousands of CONNECTs stalls small brokers.
CONNECT_CONCURRENCY = 50


class Simulator(RequestAnswering):
    """A running fleet. Created by :func:`run_simulator` (how its devices answer:
    :mod:`pm.simulator_answers`)."""

    def __init__(self, settings: SimulatorSettings, nursery: trio.Nursery) -> None:
        self.settings = settings
        self.topics = TopicTemplates(
            settings.request_topic, settings.response_topic, settings.status_topic
        )
        self.devices = [normalize_device_id(device) for device in settings.devices]
        self.stats = DeviceStats()
        self.requests: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.paused = False
        # Device -> (id, the latest copy's tunnel) of the request it is working on.
        self._busy: dict[str, tuple[int, str]] = {}
        # Device -> (id, answer) of the last request it answered, replayed for a re-send.
        self._last_answer: dict[str, tuple[int, bytes]] = {}
        # Device -> every request id it received (track_request_ids only).
        self._ids_received: dict[str, set[int]] = defaultdict(set)
        self._random = random.Random(settings.seed)
        self._nursery = nursery
        self._device_of_topic = {self.topics.request_topic(d): d for d in self.devices}
        self._clients: list[MqttClient] = []
        # Device -> (connection index, devices sharing it), to drop and re-open one connection.
        self._connection_of: dict[str, tuple[int, list[str]]] = {}
        # Connection index -> the scope that closes it, and an event set once it is closed.
        self._open_connections: dict[int, tuple[trio.CancelScope, trio.Event]] = {}
        # Connection index -> its client while connected.
        self._clients_by_index: list[MqttClient | None] = []

    @property
    def connected(self) -> int:
        return sum(client.connected for client in self._clients)

    def received_by(self, device: str) -> list[dict[str, Any]]:
        """The requests ``device`` received, in arrival order.

        Error handling: :exc:`RuntimeError` unless ``record_requests`` is on.
        """
        if not self.settings.record_requests:
            raise RuntimeError("requests are recorded only with record_requests=True")
        return self.requests.get(normalize_device_id(device), [])

    async def disconnect(self, device: str) -> None:
        """Take ``device`` offline: close its MQTT connection and forget the requests it was
        still working on (their answers are never sent). Returns once the connection is closed.

        With ``connections = K`` the devices sharing that connection go offline with it.

        Error handling: raises :exc:`KeyError` for a device this fleet does not simulate and
        :exc:`RuntimeError` if it is offline already.
        """
        index, group = self._connection_of[normalize_device_id(device)]
        if index not in self._open_connections:
            raise RuntimeError(f"device {device} is offline already")
        scope, closed = self._open_connections[index]
        client = self._clients_by_index[index] if index < len(self._clients_by_index) else None
        acknowledgements = []
        if self.settings.status and client is not None:
            # Leaving on purpose, as a v1.1 device does: no last will is sent for a DISCONNECT.
            for member in group:
                topic = self.topics.status_topic(member)
                acknowledgements.append(client.publish_tracked(topic, b"offline", retain=True))
        # Closed once the broker has them (bounded): under load, an "offline" right ahead of
        # the DISCONNECT was lost, and its device stayed online at the gateway for good.
        with trio.move_on_after(OFFLINE_ACK_TIMEOUT):
            while not all(ack is None or ack.is_published() for ack in acknowledgements):  # noqa: ASYNC110 - paho's acknowledgements offer nothing to wait on
                await trio.sleep(0.005)
        scope.cancel()
        await closed.wait()

    async def leave(self) -> None:
        """Take every connected device offline on purpose, as :meth:`disconnect` does one (its
        retained ``offline``, then DISCONNECT), all connections at once; returns once closed.
        Else a clean DISCONNECT sends no last will, and the retained ``online`` births
        outlive the fleet."""
        leaders = {index: group[0] for index, group in self._connection_of.values()}
        async with trio.open_nursery() as nursery:
            for index in list(self._open_connections):
                nursery.start_soon(self.disconnect, leaders[index])

    async def reconnect(self, device: str) -> None:
        """Bring an offline ``device`` back: a new connection, subscribed again. Returns once
        it is subscribed (requests published from then on reach it).

        Error handling: raises :exc:`KeyError` for a device this fleet does not simulate and
        :exc:`RuntimeError` if it is online.
        """
        index, group = self._connection_of[normalize_device_id(device)]
        if index in self._open_connections:
            raise RuntimeError(f"device {device} is online already")
        await self._nursery.start(_serve_devices, self, index, group)


def _groups(devices: list[str], connections: int | None) -> Iterable[list[str]]:
    if connections is None:
        return ([device] for device in devices)
    count = max(1, min(connections, len(devices)))
    return (devices[index::count] for index in range(count))


async def run_simulator(
    settings: SimulatorSettings,
    *,
    task_status: trio.TaskStatus[Simulator] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect every simulated device, then report the :class:`Simulator` and run forever."""
    async with trio.open_nursery() as nursery:
        simulator = Simulator(settings, nursery)
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
        # Connections outlive this nursery: each is handed to the outer one once it is up.
        async with trio.open_nursery() as connecting:
            connections = None if settings.device_password else settings.connections
            for index, group in enumerate(_groups(simulator.devices, connections)):
                connecting.start_soon(
                    _run_connection, simulator, nursery, limiter, index, group, name=f"sim:{index}"
                )
        if settings.offline_rate > 0:
            await _choose_offline(simulator)
        task_status.started(simulator)
        if settings.offline_rate > 0 and settings.flap_interval > 0:
            while True:
                await trio.sleep(settings.flap_interval)
                await _choose_offline(simulator)
        await trio.sleep_forever()


async def _choose_offline(simulator: Simulator) -> None:
    """Take ``offline_rate`` of the devices offline (their whole connections), bringing back
    those that were offline and are not chosen again."""
    devices = simulator.devices
    count = round(simulator.settings.offline_rate * len(devices))
    chosen = set(simulator._random.sample(devices, count))
    for device in devices:
        index, group = simulator._connection_of[device]
        is_online = index in simulator._open_connections
        if device in chosen and is_online:
            await simulator.disconnect(device)
        elif not chosen.intersection(group) and not is_online:
            await simulator.reconnect(device)


async def _run_connection(
    simulator: Simulator,
    nursery: trio.Nursery,
    limiter: trio.CapacityLimiter,
    index: int,
    devices: list[str],
) -> None:
    async with limiter:
        await nursery.start(_serve_devices, simulator, index, devices)


async def _serve_devices(
    simulator: Simulator,
    index: int,
    devices: list[str],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    settings = simulator.settings
    client_box: list[MqttClient] = []
    closed = trio.Event()
    for device in devices:
        simulator._connection_of[device] = (index, devices)

    client_id = f"sim-{devices[0]}" if len(devices) == 1 else f"sim-mux-{index}"
    topics = simulator.topics
    # One last will per connection: only a device alone on its connection gets one.
    will = (
        LastWill(topics.status_topic(devices[0]), b"offline")
        if settings.status and len(devices) == 1
        else None
    )
    slots = simulator._clients_by_index
    slots.extend([None] * (index + 1 - len(slots)))
    try:
        with trio.CancelScope() as connection_scope:
            simulator._open_connections[index] = (connection_scope, closed)
            async with trio.open_nursery() as answering:

                def on_message(topic: str, payload: bytes) -> None:
                    simulator._on_request(client_box[0], topic, payload, answering)

                def on_connect(generation: int) -> None:
                    # Back after a lost connection (a broker restart loses retained births).
                    if generation > 1 and settings.status:
                        for device in devices:
                            client_box[0].publish(
                                topics.status_topic(device), b"online", retain=True
                            )

                async with open_mqtt_client(
                    settings.host,
                    settings.port,
                    client_id=client_id,
                    username=devices[0] if settings.device_password else settings.username,
                    password=settings.device_password or settings.password,
                    on_message=on_message,
                    tls=settings.tls,
                    tls_ca_file=settings.tls_ca_file or None,
                    will=will,
                    on_connect=on_connect,
                ) as client:
                    client_box.append(client)
                    simulator._clients.append(client)
                    slots[index] = client
                    try:
                        for device in devices:
                            await client.subscribe(topics.request_topic(device), qos=1)
                        if settings.status:
                            # Births after the subscriptions: "online" means it can be sent to.
                            for device in devices:
                                client.publish(topics.status_topic(device), b"online", retain=True)
                        task_status.started()
                        await trio.sleep_forever()
                    finally:
                        slots[index] = None
                        simulator._clients.remove(client)
                        answering.cancel_scope.cancel()
    finally:
        del simulator._open_connections[index]
        closed.set()
