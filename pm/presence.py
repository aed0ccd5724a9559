"""Device presence: what the gateway knows of whether each device can take a command now.

Pure bookkeeping plus trio events, no I/O. Sources (the status topic, :mod:`pm.status_topic`;
with the embedded amqtt broker the broker child publishes on that same topic for every device
it sees subscribe) call :meth:`PresenceBook.update`; the dispatch side calls
:meth:`PresenceBook.wait_sendable`; the store is told of every change through ``on_change``
and hands the records back at start (:meth:`PresenceBook.restore`).

A device seen by no source is :attr:`Presence.UNKNOWN` and treated as today: sent at once.
Times are epoch seconds (``at``), given by the caller: the book never reads a clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

import msgspec
import trio

from .protocol import normalize_device_id

# lastSeen moved by a device's messages reaches the store at most once per this many seconds
# per device (the book itself is always exact): a device answering 10 times a second must not
# cost a row write per answer. After a restart a device's lastSeen is at most this stale.
LAST_SEEN_STORE_INTERVAL = 30.0


class Presence(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


class DevicePresence(msgspec.Struct, kw_only=True):
    """One device's presence and when it last changed (epoch seconds, ``None``: never)."""

    id: str
    presence: Presence
    # The last time the device was heard from: a presence change, a birth, any answer.
    last_seen: float | None = None
    # When it last turned online / offline.
    connected_at: float | None = None
    disconnected_at: float | None = None


class PresenceBook:
    """What the gateway knows of each device's presence; pure bookkeeping plus trio events.

    Args:
      on_change: called with a copy of the record after every change (the store marks the
        row dirty; it must not block). Repeats of the current presence change nothing and
        call nothing, so retained status messages replayed at each (re)connect cost no write.

    Memory: one small record per device ever seen; one :class:`trio.Event` per device that a
    task is waiting on, created lazily, dropped when it is set.

    Error handling: device ids are normalized with :func:`pm.protocol.normalize_device_id`;
    an invalid one raises :class:`pm.protocol.InvalidDeviceId` (sources count and drop it).
    """

    def __init__(self, on_change: Callable[[DevicePresence], None] | None = None) -> None:
        self._records: dict[str, DevicePresence] = {}
        self._waiters: dict[str, trio.Event] = {}
        self._on_change = on_change
        # Told of every statement that a device is online, repeats included, with whether it
        # was not online before (it came back): the fleet re-sends requests in flight on it.
        self.on_online: Callable[[str, bool], None] | None = None
        # Changes applied since start (every source together), for /metrics and tests.
        self.changes = 0

    def __len__(self) -> int:
        return len(self._records)

    def presence(self, device: str) -> Presence:
        """``UNKNOWN`` if never seen."""
        # Once per task: a known id as written (the fleet's ids are normalized) skips the
        # normalization, as in seen().
        record = self._records.get(device) or self._records.get(normalize_device_id(device))
        return Presence.UNKNOWN if record is None else record.presence

    def record(self, device: str) -> DevicePresence | None:
        """A copy of the device's record (``None`` if never seen)."""
        record = self._records.get(normalize_device_id(device))
        return None if record is None else msgspec.structs.replace(record)

    def records(self) -> Iterable[DevicePresence]:
        """Every record, in no particular order (read-only: do not modify them)."""
        return self._records.values()

    def update(self, device: str, presence: Presence, at: float) -> None:
        """A source says ``device`` is ``presence`` as of ``at`` (epoch seconds).

        The first ONLINE after anything else sets ``connectedAt``, the first OFFLINE after
        anything else ``disconnectedAt``; every change sets ``lastSeen``. A repeat of the
        current presence only moves ``lastSeen`` forward for ONLINE (the device is there
        now) and nothing for OFFLINE: a retained last will replayed after a restart must not
        pretend the device left again. Every ONLINE, repeat or not, is told to ``on_online``
        (after the waiters of the device are woken).
        """
        device = normalize_device_id(device)
        record = self._records.get(device)
        if record is None:
            record = self._records[device] = DevicePresence(id=device, presence=Presence.UNKNOWN)
        if record.presence is presence:
            if presence is Presence.ONLINE:
                if (record.last_seen or 0) < at:
                    record.last_seen = at
                    self._changed(record)
                self._online(device, came_back=False)
            return
        record.presence = presence
        record.last_seen = at
        if presence is Presence.ONLINE:
            record.connected_at = at
        elif presence is Presence.OFFLINE:
            record.disconnected_at = at
        self._changed(record)
        if presence is not Presence.OFFLINE:
            waiting = self._waiters.pop(device, None)
            if waiting is not None:
                waiting.set()
        if presence is Presence.ONLINE:
            self._online(device, came_back=True)

    def seen(self, device: str, at: float) -> None:
        """A message of ``device`` arrived at ``at`` (epoch seconds; an answer): ``lastSeen``
        moves forward, presence does not change (an answer proves nothing about the device's
        subscription; a device never seen by a presence source stays UNKNOWN).

        ``on_change`` is called only when ``lastSeen`` enters a new
        :data:`LAST_SEEN_STORE_INTERVAL` window, so the store writes a busy device's row at
        most once per window; ``changes`` does not count these.

        Error handling: raises :class:`pm.protocol.InvalidDeviceId` for an invalid id.
        """
        # Per answer: a known id as written (the gateway publishes to normalized ids, which
        # devices answer on) skips the normalization; the keys are normalized ids only.
        record = self._records.get(device)
        if record is None:
            device = normalize_device_id(device)
            record = self._records.get(device)
            if record is None:
                record = DevicePresence(id=device, presence=Presence.UNKNOWN)
                self._records[device] = record
        previous = record.last_seen
        if previous is not None and previous >= at:
            return
        record.last_seen = at
        window = LAST_SEEN_STORE_INTERVAL
        if self._on_change is not None and (previous is None or at // window != previous // window):
            self._on_change(msgspec.structs.replace(record))

    async def wait_sendable(self, device: str) -> None:
        """Return at once if the device is ONLINE or UNKNOWN, else when it is no longer
        OFFLINE. Cancellable; all waiters of one device share one event."""
        device = normalize_device_id(device)
        while (record := self._records.get(device)) is not None and (
            record.presence is Presence.OFFLINE
        ):
            waiting = self._waiters.get(device)
            if waiting is None:
                waiting = self._waiters[device] = trio.Event()
            await waiting.wait()
        await trio.lowlevel.checkpoint()

    @property
    def waiting_devices(self) -> int:
        """Devices with an event someone waits (or waited) on: memory is bounded by this."""
        return len(self._waiters)

    def all_disconnected(self, at: float) -> int:
        """Every ONLINE device becomes OFFLINE as of ``at``: the broker they were connected to
        is a new process (the embedded broker at the gateway's start), so none of their
        connections survived. Returns how many changed."""
        online = [d for d, record in self._records.items() if record.presence is Presence.ONLINE]
        for device in online:
            self.update(device, Presence.OFFLINE, at)
        return len(online)

    def restore(self, records: Iterable[DevicePresence]) -> None:
        """Load records kept by the store (at start, before any source speaks). No
        ``on_change`` call: they are already stored."""
        for record in records:
            self._records[record.id] = record

    def _online(self, device: str, *, came_back: bool) -> None:
        if self.on_online is not None:
            self.on_online(device, came_back)

    def _changed(self, record: DevicePresence) -> None:
        self.changes += 1
        if self._on_change is not None:
            self._on_change(msgspec.structs.replace(record))
