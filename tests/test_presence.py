"""PresenceBook: bookkeeping and waiting, on trio's virtual clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pm.presence import LAST_SEEN_STORE_INTERVAL, DevicePresence, Presence, PresenceBook
from pm.protocol import InvalidDeviceId

MAC = "00:0c:29:1c:e8:01"


def test_a_device_never_seen_is_unknown() -> None:
    book = PresenceBook()
    assert book.presence("dev-1") is Presence.UNKNOWN
    assert book.record("dev-1") is None
    assert len(book) == 0


def test_ids_are_normalized_like_destinations() -> None:
    book = PresenceBook()
    book.update("00-0C-29-1C-E8-01", Presence.ONLINE, at=10.0)
    assert book.presence("000c291ce801") is Presence.ONLINE
    record = book.record(MAC)
    assert record is not None and record.id == MAC
    with pytest.raises(InvalidDeviceId):
        book.update("bad/id", Presence.ONLINE, at=1.0)


def test_times_of_connect_and_disconnect() -> None:
    changes: list[DevicePresence] = []
    book = PresenceBook(on_change=changes.append)
    book.update("d", Presence.ONLINE, at=10.0)
    book.update("d", Presence.ONLINE, at=12.0)  # still there: lastSeen moves, connectedAt not
    book.update("d", Presence.OFFLINE, at=20.0)
    book.update("d", Presence.OFFLINE, at=30.0)  # a replayed will: nothing changes
    assert book.record("d") == DevicePresence(
        id="d", presence=Presence.OFFLINE, last_seen=20.0, connected_at=10.0, disconnected_at=20.0
    )
    assert [(c.presence, c.last_seen) for c in changes] == [
        (Presence.ONLINE, 10.0),
        (Presence.ONLINE, 12.0),
        (Presence.OFFLINE, 20.0),
    ]
    assert book.changes == 3


def test_records_handed_out_are_copies() -> None:
    book = PresenceBook()
    book.update("d", Presence.ONLINE, at=1.0)
    record = book.record("d")
    assert record is not None
    record.presence = Presence.OFFLINE
    assert book.presence("d") is Presence.ONLINE


def test_restore_loads_without_reporting_changes() -> None:
    changes: list[DevicePresence] = []
    book = PresenceBook(on_change=changes.append)
    book.restore([DevicePresence(id="d", presence=Presence.OFFLINE, disconnected_at=5.0)])
    assert book.presence("d") is Presence.OFFLINE and changes == []


async def test_wait_sendable_returns_at_once_unless_offline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = PresenceBook()
    book.update("on", Presence.ONLINE, at=1.0)
    start = trio.current_time()
    with trio.fail_after(1):
        await book.wait_sendable("on")
        await book.wait_sendable("never-seen")
    assert trio.current_time() == start
    assert book.waiting_devices == 0


async def test_wait_sendable_waits_until_the_device_is_online(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = PresenceBook()
    book.update("d", Presence.OFFLINE, at=1.0)
    woke: list[float] = []

    async def waiter() -> None:
        await book.wait_sendable("d")
        woke.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.sleep(50)
        assert woke == []
        # Three waiters, one event.
        assert book.waiting_devices == 1
        book.update("d", Presence.ONLINE, at=2.0)
    assert woke == [start + 50] * 3
    assert book.waiting_devices == 0


async def test_a_cancelled_wait_leaves_at_most_one_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = PresenceBook()
    for index in range(100):
        book.update(f"d{index}", Presence.OFFLINE, at=1.0)
    for _ in range(3):
        with trio.move_on_after(5):
            await book.wait_sendable("d1")
    assert book.waiting_devices == 1
    book.update("d1", Presence.ONLINE, at=2.0)
    assert book.waiting_devices == 0


def test_all_disconnected_takes_only_online_devices_offline() -> None:
    changes: list[DevicePresence] = []
    book = PresenceBook(on_change=changes.append)
    book.update("on", Presence.ONLINE, at=1.0)
    book.update("off", Presence.OFFLINE, at=2.0)
    changes.clear()
    assert book.all_disconnected(at=10.0) == 1
    assert book.record("on") == DevicePresence(
        id="on", presence=Presence.OFFLINE, last_seen=10.0, connected_at=1.0, disconnected_at=10.0
    )
    assert book.record("off") == DevicePresence(
        id="off", presence=Presence.OFFLINE, last_seen=2.0, disconnected_at=2.0
    )
    assert [change.id for change in changes] == ["on"]


def test_every_online_statement_is_told_with_whether_the_device_came_back() -> None:
    # The fleet re-sends requests in flight on it (pm/in_flight.py): a return brings a copy,
    # a repeat (a retained birth replayed) is only a sighting.
    told: list[tuple[str, bool]] = []
    book = PresenceBook()
    book.on_online = lambda device, came_back: told.append((device, came_back))
    book.update("00-0C-29-1C-E8-01", Presence.ONLINE, at=1.0)  # unknown -> online
    book.update(MAC, Presence.ONLINE, at=2.0)  # a repeat
    book.update(MAC, Presence.ONLINE, at=2.0)  # a repeat with no newer time: still told
    book.update(MAC, Presence.OFFLINE, at=3.0)  # not told
    book.update(MAC, Presence.ONLINE, at=4.0)  # back
    assert told == [(MAC, True), (MAC, False), (MAC, False), (MAC, True)]


def test_seen_moves_last_seen_and_tells_the_store_once_per_window() -> None:
    changes: list[DevicePresence] = []
    book = PresenceBook(on_change=changes.append)
    book.update("dev", Presence.OFFLINE, at=LAST_SEEN_STORE_INTERVAL * 10)
    changes.clear()
    start = LAST_SEEN_STORE_INTERVAL * 10 + 1
    # A device answering every second for two windows: exact in the book, two store writes.
    for second in range(int(LAST_SEEN_STORE_INTERVAL * 2)):
        book.seen("dev", at=start + second)
        record = book.record("dev")
        assert record is not None and record.last_seen == start + second
    # 60 messages, two writes: on entering each new window (the book's 300 was stored).
    assert [change.last_seen for change in changes] == [
        LAST_SEEN_STORE_INTERVAL * 11,
        LAST_SEEN_STORE_INTERVAL * 12,
    ]
    # An answer proves nothing about presence, and an older time changes nothing.
    book.seen("dev", at=1.0)
    record = book.record("dev")
    assert record is not None and record.presence is Presence.OFFLINE
    assert record.last_seen == start + LAST_SEEN_STORE_INTERVAL * 2 - 1
    assert book.changes == 1  # the update only: lastSeen moves are not presence changes


def test_seen_makes_a_device_no_source_spoke_of_known_but_unknown() -> None:
    book = PresenceBook()
    book.seen("00-0C-29-1C-E8-01", at=5.0)
    assert book.record("00:0c:29:1c:e8:01") == DevicePresence(
        id="00:0c:29:1c:e8:01", presence=Presence.UNKNOWN, last_seen=5.0
    )
    with pytest.raises(InvalidDeviceId):
        book.seen("not valid", at=6.0)
