"""The answer-path probe's decisions (pm/mqtt/_probe.py) on trio's virtual clock, against a
fake client whose "broker" can stop delivering the subscription. The real broker paths are in
tests/integration/test_answer_path.py."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import pytest
import trio
import trio.testing

from pm.mqtt import MqttSubscribeError
from pm.mqtt._probe import (
    FIRST_REPAIR_PAUSE,
    MAX_REPAIR_PAUSE,
    AnswerPathProbe,
    Repair,
    RepairLadder,
    open_answer_path_probe,
)

TOPIC = "/remote/~puppetmaster-probe/response"
INTERVAL = 5.0
TIMEOUT = 2.0
# The fake broker's one-way delays: our publish to its PUBACK, and to the echo.
ACK_DELAY = 0.001
ECHO_DELAY = 0.003


class Acknowledgement:
    def __init__(self) -> None:
        self.published = False

    def is_published(self) -> bool:
        return self.published


class FakeClient:
    """A connected client and its broker, reduced to what the probe sees.

    ``delivering`` is whether the broker still delivers our subscription; a resubscribe
    restores it only if ``resubscribe_heals``; a reconnect (after ``RECONNECT_DELAY``) does
    unless ``probe_dropped`` (a broker ACL that drops the probe itself).
    """

    RECONNECT_DELAY = 0.5

    def __init__(self, nursery: trio.Nursery) -> None:
        self.connected = True
        self.generation = 1
        self.messages_received = 0
        self.delivering = True
        self.resubscribe_heals = True
        self.probe_dropped = False
        self.ack_delay = ACK_DELAY
        self.echo_delay = ECHO_DELAY
        self.resubscribe_calls = 0
        self.drops: list[str] = []
        self.diverted: dict[str, Callable[[str, bytes], None]] = {}
        self._nursery = nursery
        self._connected_event = trio.Event()
        self._connected_event.set()

    async def wait_connected(self) -> None:
        while not self.connected:
            await self._connected_event.wait()

    def publish_tracked(self, topic: str, payload: bytes, qos: int = 1) -> Acknowledgement | None:
        if not self.connected:
            return None
        acknowledgement = Acknowledgement()
        self._nursery.start_soon(self._broker, topic, payload, acknowledgement, self.generation)
        return acknowledgement

    async def _broker(
        self, topic: str, payload: bytes, acknowledgement: Acknowledgement, generation: int
    ) -> None:
        await trio.sleep(self.ack_delay)
        acknowledgement.published = True
        await trio.sleep(self.echo_delay - self.ack_delay)
        if self.delivering and not self.probe_dropped and generation == self.generation:
            self.deliver(topic, payload)

    def deliver(self, topic: str, payload: bytes) -> None:
        self.messages_received += 1
        self.diverted[topic](topic, payload)

    async def resubscribe(self) -> bool:
        self.resubscribe_calls += 1
        if self.resubscribe_heals:
            self.delivering = True
        return True

    def drop_connection(self, reason: str) -> None:
        self.drops.append(reason)
        self.connected = False
        self._connected_event = trio.Event()
        self._nursery.start_soon(self._reconnect)

    async def _reconnect(self) -> None:
        await trio.sleep(self.RECONNECT_DELAY)
        self.generation += 1
        self.delivering = True  # a fresh connection restores the subscriptions
        self.connected = True
        self._connected_event.set()

    def divert(self, topic: str, handler: Callable[[str, bytes], None] | None) -> None:
        if handler is None:
            del self.diverted[topic]
        else:
            self.diverted[topic] = handler


async def _until(condition: Callable[[], bool]) -> None:
    """Virtual time passes until ``condition`` holds (autojump: no real waiting)."""
    while not condition():  # noqa: ASYNC110 - the probe's counters are plain attributes
        await trio.sleep(0.001)


def _probe(client: FakeClient, resubscribed: list[float] | None = None) -> object:
    return open_answer_path_probe(
        client,
        TOPIC,
        interval=INTERVAL,
        round_trip_timeout=TIMEOUT,
        on_resubscribed=lambda: None if resubscribed is None else resubscribed.append(0.0),
    )


async def test_a_healthy_path_is_probed_every_interval(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = FakeClient(nursery)
    start = trio.current_time()
    async with _probe(client) as probe:
        assert isinstance(probe, AnswerPathProbe)
        assert probe.ok and probe.last_round_trip is None
        await _until(lambda: probe.probes_sent == 3)
        # Two full periods (round trip + interval) before the third probe went out (to the
        # millisecond of _until's polling).
        elapsed = trio.current_time() - start
        assert elapsed == pytest.approx(2 * (ECHO_DELAY + INTERVAL), abs=0.002)
        assert probe.ok and probe.last_round_trip == pytest.approx(ECHO_DELAY)
        assert (probe.probes_lost, probe.resubscribes, probe.reconnects) == (0, 0, 0)
        assert client.diverted.keys() == {TOPIC}
    assert client.diverted == {}


async def test_a_lost_subscription_is_found_and_healed_by_resubscribing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pm.mqtt")
    client = FakeClient(nursery)
    resubscribed: list[float] = []
    async with _probe(client, resubscribed) as probe:
        await _until(lambda: probe.probes_sent == 1 and probe.last_round_trip is not None)
        client.delivering = False
        lost_at = trio.current_time()
        await _until(lambda: not probe.ok)
        # Found within one interval plus one timeout of the loss.
        assert trio.current_time() - lost_at <= INTERVAL + TIMEOUT + ECHO_DELAY
        await _until(lambda: probe.ok)
        assert (probe.probes_lost, probe.resubscribes, probe.reconnects) == (1, 1, 0)
        assert client.resubscribe_calls == 1 and len(resubscribed) == 1 and client.drops == []
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "answer path lost" in warnings[0].getMessage()
    assert any("answer path back" in r.getMessage() for r in caplog.records)


async def test_a_resubscribe_that_does_not_help_is_followed_by_a_reconnect(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = FakeClient(nursery)
    client.resubscribe_heals = False
    async with _probe(client) as probe:
        await _until(lambda: probe.probes_sent == 1 and probe.last_round_trip is not None)
        client.delivering = False
        await _until(lambda: probe.reconnects == 1)
        await _until(lambda: probe.ok)
        assert (probe.probes_lost, probe.resubscribes, probe.reconnects) == (2, 1, 1)
        assert len(client.drops) == 1 and client.generation == 2


async def test_a_probe_the_broker_always_drops_never_makes_a_reconnect_loop(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # An ACL that drops the probe: neither repair helps. Over an hour the probe climbs the
    # ladder at ~0 s, then after pauses of 60, 120, 240, 480, 960 s: 6 reconnects, where
    # repairing at every lost probe would have made ~500.
    client = FakeClient(nursery)
    client.probe_dropped = True
    async with _probe(client) as probe:
        await trio.sleep(3600)
        assert not probe.ok and probe.last_round_trip is None
        assert probe.reconnects == probe.resubscribes == 6
    gave_up = [r for r in caplog.records if "still silent" in r.getMessage()]
    assert len(gave_up) == 6


async def test_answers_arriving_keep_a_slow_probe_from_counting_as_lost(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Under load the probe waits behind the answers: 3 timeouts late, but answers arrive.
    client = FakeClient(nursery)
    client.echo_delay = 3 * TIMEOUT

    async def answers() -> None:
        while True:
            await trio.sleep(TIMEOUT / 4)
            client.messages_received += 1

    nursery.start_soon(answers)
    async with _probe(client) as probe:
        await _until(lambda: probe.probes_sent == 2)
        assert probe.ok and probe.probes_lost == 0
        assert probe.last_round_trip == pytest.approx(3 * TIMEOUT)


async def test_a_probe_the_broker_has_not_acknowledged_is_waited_for(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Our own outgoing backlog: no PUBACK yet, so no verdict on the subscription.
    client = FakeClient(nursery)
    client.ack_delay = 3 * TIMEOUT
    client.echo_delay = 3 * TIMEOUT + ECHO_DELAY
    async with _probe(client) as probe:
        await _until(lambda: probe.probes_sent == 2)
        assert probe.ok and probe.probes_lost == 0


async def test_a_connection_lost_mid_probe_is_not_a_lost_subscription(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = FakeClient(nursery)
    client.echo_delay = TIMEOUT / 2
    async with _probe(client) as probe:
        await _until(lambda: probe.probes_sent == 1)
        client.drop_connection("broker restarted")
        await _until(lambda: probe.probes_sent == 2 and probe.last_round_trip is not None)
        assert probe.ok and probe.probes_lost == 0 and probe.reconnects == 0


async def test_a_refused_resubscribe_escalates_to_a_reconnect(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = FakeClient(nursery)

    async def refuse() -> bool:
        raise MqttSubscribeError("broker refused subscription")

    client.resubscribe = refuse  # type: ignore[method-assign]
    async with _probe(client) as probe:
        await _until(lambda: probe.probes_sent == 1 and probe.last_round_trip is not None)
        client.delivering = False
        await _until(lambda: probe.reconnects == 1)
        await _until(lambda: probe.ok)
        assert probe.resubscribes == 1


async def test_foreign_and_stale_payloads_on_the_probe_topic_are_ignored(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Another gateway's probes, or anyone publishing there, prove nothing about ours.
    client = FakeClient(nursery)
    client.delivering = False
    async with _probe(client) as probe:
        await _until(lambda: probe.probes_sent == 1)
        client.deliver(TOPIC, b"0123456789abcdef:1")
        client.deliver(TOPIC, b"")
        await _until(lambda: probe.probes_lost == 1)
        assert probe.last_round_trip is None


def test_the_repair_ladder() -> None:
    ladder = RepairLadder()
    assert [ladder.on_lost(0.0) for _ in range(3)] == [
        Repair.RESUBSCRIBE,
        Repair.RECONNECT,
        Repair.GIVE_UP,
    ]
    assert ladder.paused_until == FIRST_REPAIR_PAUSE
    assert ladder.on_lost(FIRST_REPAIR_PAUSE - 0.001) is Repair.NONE
    now = FIRST_REPAIR_PAUSE
    assert [ladder.on_lost(now) for _ in range(3)] == [
        Repair.RESUBSCRIBE,
        Repair.RECONNECT,
        Repair.GIVE_UP,
    ]
    assert ladder.paused_until == now + 2 * FIRST_REPAIR_PAUSE
    # The pause doubles up to its ceiling...
    for _ in range(10):
        now = ladder.paused_until
        while ladder.on_lost(now) is not Repair.GIVE_UP:
            pass
    assert ladder.paused_until - now == MAX_REPAIR_PAUSE
    # ...and a probe that comes back starts over from the bottom.
    ladder.on_heard()
    assert ladder.paused_until == -math.inf
    assert ladder.on_lost(now) is Repair.RESUBSCRIBE
    ladder.on_heard()
    assert [ladder.on_lost(now) for _ in range(3)][-1] is Repair.GIVE_UP
    assert ladder.paused_until == now + FIRST_REPAIR_PAUSE


def test_interval_and_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        AnswerPathProbe(object(), TOPIC, interval=0, round_trip_timeout=1)  # type: ignore[arg-type]
