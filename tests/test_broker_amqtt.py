"""Unit tests of the embedded amqtt broker's fixes (pm/broker/amqtt/): the subscription index,
the PUBACK-timeout log filter, the session monitor and the GC pacer, run on amqtt objects that
never listen (no sockets, no processes). Their amqtt internals are pinned by
tests/test_private_names.py; tests/integration/test_amqtt_fixes.py runs the same fixes through a
real broker child."""

from __future__ import annotations

import asyncio
import inspect
import re
from typing import Any

import pytest


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


def test_an_exact_subscription_finds_its_retained_message_without_scanning_them_all() -> None:
    # amqtt scanned every retained message per SUBSCRIBE: with a retained status per device,
    # connecting 10,000 devices took minutes (docs/broker.md).
    asyncio.run(_check_retained_lookup())


class _RecordingHandler:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []

    async def mqtt_publish(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        self.published.append((topic, data, qos, retain))


async def _check_retained_lookup() -> None:
    from amqtt.broker import RetainedApplicationMessage

    from pm.broker.amqtt._broker import PuppetmasterBroker

    broker = PuppetmasterBroker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}})
    for n in range(1000):
        topic = f"/status/{n}"
        broker._retained_messages[topic] = RetainedApplicationMessage(None, topic, b"on", 1)
    session, handler = _session("dev-7"), _RecordingHandler()
    broker._sessions["dev-7"] = (session, handler)  # type: ignore[assignment]
    matched = 0
    amqtt_matches = broker._matches

    def counting_matches(topic: str, topic_filter: str) -> bool:
        nonlocal matched
        matched += 1
        return amqtt_matches(topic, topic_filter)

    broker._matches = counting_matches  # type: ignore[method-assign]
    for subscription in (("/status/7", 1), ("/status/none", 1)):
        await broker.add_subscription(subscription, session)
        await broker._publish_retained_messages_for_subscription(subscription, session)
    assert handler.published == [("/status/7", b"on", 1, True)]
    assert matched == 0
    # A wildcard filter still takes amqtt's scan (and gets every match).
    await broker.add_subscription(("/status/+", 0), session)
    await broker._publish_retained_messages_for_subscription(("/status/+", 0), session)
    assert len(handler.published) == 1001 and matched == 1000


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


def test_the_gc_pacer_makes_young_collections_rarer() -> None:
    import gc

    from pm.broker.amqtt._gc import GcPacer

    pacer = GcPacer(lambda: 0, lambda: 0)
    thresholds = gc.get_threshold()
    try:
        pacer.install()
        assert gc.get_threshold() == (GcPacer.YOUNG_THRESHOLD, *thresholds[1:])
        assert GcPacer.YOUNG_THRESHOLD > thresholds[0]
    finally:
        gc.callbacks.remove(pacer)
        gc.set_threshold(*thresholds)
