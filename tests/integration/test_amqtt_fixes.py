"""The embedded broker's amqtt fixes (pm/broker/amqtt/): behaviour through a real broker child,
and the index, filters and pacers they rely on (their amqtt internals are pinned by
tests/test_private_names.py)."""

from __future__ import annotations

import asyncio
import inspect
import re
from typing import Any

import pytest
import trio

from pm.broker import run_embedded_broker
from pm.config import BrokerConfig
from pm.mqtt import open_mqtt_client
from tests.waiting import poll_until


async def test_a_connecting_client_gets_no_retained_message_of_other_filters() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(run_embedded_broker, BrokerConfig(port=0))
            seen_by_a: list[str] = []
            seen_by_b: list[str] = []
            async with (
                open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="a",
                    on_message=lambda t, p: seen_by_a.append(t),
                ) as device_a,
                open_mqtt_client(
                    broker.host, broker.port, client_id="gw", on_message=lambda t, p: None
                ) as gateway,
            ):
                await device_a.subscribe("/remote/a")
                assert gateway.publish("/remote/a", b'{"id": 1}', retain=True)
                await poll_until(lambda: bool(seen_by_a))
                # A newcomer subscribed to its own topic only: amqtt 0.12.1 would also hand it
                # the retained request of device a (its connect-time loop over all filters).
                async with open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="b",
                    on_message=lambda t, p: seen_by_b.append(t),
                ) as device_b:
                    await device_b.subscribe("/remote/b")
                    assert gateway.publish("/remote/b", b'{"id": 2}')
                    # A retained copy handed over at connect would have arrived before this.
                    await poll_until(lambda: "/remote/b" in seen_by_b)
                assert seen_by_b == ["/remote/b"]
                # The legitimate path still works: subscribing gets the filter's retained copy.
                async with open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="a2",
                    on_message=lambda t, p: seen_by_b.append(t),
                ) as late_a:
                    await late_a.subscribe("/remote/a")
                    await poll_until(lambda: len(seen_by_b) >= 2)
                assert seen_by_b == ["/remote/b", "/remote/a"]
            nursery.cancel_scope.cancel()


def test_amqtt_touches_subscriptions_only_through_operations_the_index_tracks() -> None:
    # SubscriptionIndex keeps its wildcard set in step through __setitem__, __delitem__ and
    # clear; a new kind of write in amqtt (setdefault, pop, update) would bypass it.
    from amqtt import broker as amqtt_broker

    source = inspect.getsource(amqtt_broker)
    methods = set(re.findall(r"self\._subscriptions\.(\w+)", source))
    assert methods <= {"clear", "items", "get"}
    assert "_subscriptions = " not in source.replace(
        "self._subscriptions: dict[str, list[tuple[Session, int]]] = {}", ""
    )


def _session(client_id: str) -> Any:  # noqa: ANN401 - an amqtt Session
    from amqtt.session import Session

    session = Session()
    session.client_id = client_id
    return session


def test_the_index_routes_exact_and_wildcard_filters_like_amqtt_matches() -> None:
    # amqtt's Broker wants a running asyncio loop (it is never started here: no sockets).
    asyncio.run(_check_index_routing())


async def _check_index_routing() -> None:
    from amqtt.broker import Broker

    from pm.broker.amqtt._broker import PuppetmasterBroker
    from pm.broker.amqtt._subscriptions import SubscriptionIndex

    broker = PuppetmasterBroker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}})
    assert isinstance(broker._subscriptions, SubscriptionIndex)
    broker.plugins_manager._is_topic_filtering_enabled = False
    sessions = {name: _session(name) for name in ("dev-a", "dev-b", "gw", "all")}
    for name, topic_filter in (
        ("dev-a", "/remote/a"),
        ("dev-b", "/remote/b"),
        ("gw", "/remote/+/response"),
        ("all", "#"),
        ("all", "/remote/a"),
    ):
        assert await broker.add_subscription((topic_filter, 1), sessions[name]) == 1
    assert await broker.add_subscription(("/bad/#/x", 1), sessions["gw"]) == 0x80
    assert set(broker._subscriptions.wildcards) == {"/remote/+/response", "#"}
    assert "5 filters" not in repr(broker._subscriptions)  # short, whatever the size

    topics = ["/remote/a", "/remote/b", "/remote/a/response", "/remote/c", "$SYS/x", "/x/+"]
    for topic in topics:
        ours = sorted(f for f, _ in broker._matching_filters(topic))
        amqtt = sorted(f for f in broker._subscriptions if Broker._matches(broker, topic, f))
        assert ours == amqtt, topic

    # A disconnect removes the client's filters (and the emptied keys) without a full scan.
    await broker._del_all_subscriptions(sessions["all"])
    assert "#" not in broker._subscriptions and "#" not in broker._subscriptions.wildcards
    assert [s.client_id for s, _ in broker._subscriptions["/remote/a"]] == ["dev-a"]
    assert "all" not in broker._subscriptions.filters_of_client
    broker._del_subscription("/remote/b", sessions["dev-b"])
    assert broker._subscriptions.filters_of_client.get("dev-b") is None
    broker._subscriptions.clear()
    assert not broker._subscriptions.wildcards and not broker._subscriptions.filters_of_client


async def test_many_devices_each_get_only_their_own_requests_through_the_index() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(run_embedded_broker, BrokerConfig(port=0))
            seen: dict[str, list[bytes]] = {}
            async with (
                open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="mux",
                    on_message=lambda t, p: seen.setdefault(t, []).append(p),
                ) as devices,
                open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="gw",
                    on_message=lambda t, p: seen.setdefault("gw:" + t, []).append(p),
                ) as gateway,
            ):
                for n in range(50):
                    await devices.subscribe(f"/remote/d{n}")
                await gateway.subscribe("/remote/+/response")
                for n in range(50):
                    assert gateway.publish(f"/remote/d{n}", str(n).encode())
                    assert devices.publish(f"/remote/d{n}/response", str(n).encode())
                await poll_until(lambda: len(seen) == 100)
                # Each client's last message: a duplicate or a misrouted copy of the ones
                # before would have reached its subscriber ahead of it.
                assert gateway.publish("/remote/d0", b"last")
                assert devices.publish("/remote/d0/response", b"last")
                await poll_until(
                    lambda: seen["/remote/d0"][-1] == seen["gw:/remote/d0/response"][-1] == b"last"
                )
            assert seen["/remote/d0"].pop() == seen["gw:/remote/d0/response"].pop() == b"last"
            assert len(seen) == 100
            assert all(seen[f"/remote/d{n}"] == [str(n).encode()] for n in range(50))
            assert all(seen[f"gw:/remote/d{n}/response"] == [str(n).encode()] for n in range(50))
            nursery.cancel_scope.cancel()


def test_puback_timeouts_are_counted_not_logged_one_by_one() -> None:
    import logging

    from pm.broker.amqtt._logs import PubackTimeoutFilter

    counter = PubackTimeoutFilter()

    def record(message: str, error: BaseException | None = None) -> logging.LogRecord:
        exc_info = (type(error), error, None) if error else None
        return logging.LogRecord("amqtt", logging.WARNING, __file__, 1, message, (), exc_info)

    timeout = TimeoutError("Timeout waiting for PUBACK for packet ID 7")
    assert not counter.filter(record("Timeout waiting for PUBACK for packet ID 7"))
    assert not counter.filter(record("Task failed and will be skipped: %s", timeout))
    assert not counter.filter(record("Received PUBACK for unknown pending message Id: '7'"))
    assert counter.filter(record("something else"))
    summary = counter.summary()
    assert summary is not None and summary.startswith("1 PUBACK waits")
    assert counter.summary() is None


class _MonitorSeconds:
    """Stands in for ``asyncio`` in the broker module: its ``sleep`` waits until the test lets a
    second pass, so the session monitor runs on a clock the test advances."""

    def __init__(self) -> None:
        self._passed: asyncio.Queue[None] = asyncio.Queue()
        self._asleep = asyncio.Event()

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - the rest of asyncio
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        assert seconds == 1
        self._asleep.set()
        await self._passed.get()

    async def until_asleep(self) -> None:
        await self._asleep.wait()
        self._asleep.clear()

    async def advance(self, seconds: int) -> None:
        """Let ``seconds`` pass, returning once the monitor has run each and sleeps again."""
        for _ in range(seconds):
            self._passed.put_nowait(None)
            await self.until_asleep()


def test_disconnected_sessions_are_dropped_when_connections_end_not_scanned_every_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pm.broker.amqtt import _broker as _amqtt_broker

    async def check() -> None:
        seconds = _MonitorSeconds()
        monkeypatch.setattr(_amqtt_broker, "asyncio", seconds)
        await _check_session_monitor(seconds, _amqtt_broker.SESSION_SCAN_INTERVAL)

    asyncio.run(check())


async def _check_session_monitor(seconds: _MonitorSeconds, scan_interval: int) -> None:
    from pm.broker.amqtt._broker import PuppetmasterBroker

    broker = PuppetmasterBroker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}})
    gone, kept = _session("gone"), _session("kept")
    gone.clean_session = kept.clean_session = True
    for session in (gone, kept):
        session.transitions.connect()
    broker._sessions.update(gone=(gone, None), kept=(kept, None))  # type: ignore[dict-item]
    monitor = asyncio.create_task(broker._session_monitor())
    try:
        await seconds.until_asleep()  # the first scan, at start
        gone.transitions.disconnect()
        await seconds.advance(scan_interval // 2)
        # No connection ended through the message loop: the sessions are not even looked at.
        assert set(broker._sessions) == {"gone", "kept"}
        broker._connections_ended += 1
        await seconds.advance(1)
        assert set(broker._sessions) == {"kept"}
        # The periodic scan still finds a session whose connection ended unseen: one interval
        # after the last scan, not a second earlier.
        kept.transitions.disconnect()
        await seconds.advance(scan_interval - 1)
        assert set(broker._sessions) == {"kept"}
        await seconds.advance(1)
        assert not broker._sessions
    finally:
        monitor.cancel()


def test_the_gc_pacer_freezes_survivors_and_unfreezes_after_closes_or_growth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    from pm.broker.amqtt import _gc
    from pm.broker.amqtt._gc import GcPacer

    closed, opened, resident = [0], [10], [100 << 20]
    monkeypatch.setattr(_gc, "_resident_bytes", lambda: resident[0])
    pacer = GcPacer(lambda: closed[0], lambda: opened[0], min_closed=3)
    stop = {"generation": 2, "collected": 0, "uncollectable": 0}
    gc.unfreeze()
    try:
        pacer("stop", stop)  # the first full collection walked everything
        assert gc.get_freeze_count() > 0 and pacer.full_walks == 1
        pacer("stop", {**stop, "generation": 1})  # young collections are left alone
        closed[0] = 3
        pacer("stop", stop)
        assert gc.get_freeze_count() > 0  # 3 closed connections: not yet
        closed[0] = 6  # more than half of the 10 open at the last walk
        pacer("stop", stop)
        assert gc.get_freeze_count() == 0  # the next full collection walks everything
        pacer("stop", stop)
        assert pacer.full_walks == 2 and gc.get_freeze_count() > 0
        # Memory that grows with the connections is live data; beyond that, garbage.
        opened[0] += 2000
        resident[0] += 2000 * GcPacer.CONNECTION_BYTES
        pacer("stop", stop)
        assert gc.get_freeze_count() > 0
        resident[0] = 2 * (100 << 20) + 2 * 2000 * GcPacer.CONNECTION_BYTES + 1
        pacer("stop", stop)
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
