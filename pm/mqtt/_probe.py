"""The answer-path probe: the client checks that its own subscription still delivers.

A broker can drop a client's subscription while keeping its connection up: amqtt 0.12.1 does
when another client connects with the same client id (clean session), and never closes the
first connection. Keepalive cannot see that, and a gateway in that state hears no answer
again. So every ``interval`` seconds the probe publishes a small message (QoS 1) on a topic
that the client's own subscription covers, and expects it back within
``round_trip_timeout`` seconds.

A probe counts as lost only when the broker has acknowledged it (PUBACK) and nothing at all
arrived on the client's subscriptions meanwhile: under load the probe waits in the same queues
as the answers, and answers arriving prove the path works, so the wait is extended instead.

Repair policy (:class:`RepairLadder`): a lost probe makes the client re-subscribe on the same
connection, and if the next probe is lost too, drop the connection and reconnect (which
restores every subscription). If both fail, the cause is something they cannot fix (a broker
ACL that drops the probe...): the probe keeps probing and reporting ``ok = False``, and climbs
the ladder again only after a pause that doubles each time (one minute up to half an hour),
so it never reconnects in a loop. Any probe that comes back resets the ladder. One WARNING is
logged when the path is found lost, one INFO when it is back.

On amqtt 0.12.1 the re-subscribe cannot help: it delivers through the handler registered
under the client id (``Broker._get_handler``), which is the other client's by then; only the
reconnect repairs (tests/integration/test_answer_path.py shows both steps taken). It is kept
first because it is cheap and enough for a broker that dropped only the subscription.
"""

from __future__ import annotations

import enum
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from ._client import Acknowledgement
from ._connection import MqttSubscribeError

log = logging.getLogger("pm.mqtt")

# After a re-subscribe and a reconnect both failed: pause before climbing the ladder again.
FIRST_REPAIR_PAUSE = 60.0
MAX_REPAIR_PAUSE = 1800.0
# A probe the broker has not even acknowledged is waited for up to this many timeouts: it is
# still queued on its way out (a keepalive failure ends a dead connection meanwhile).
_UNACKNOWLEDGED_WAIT_FACTOR = 10


class Repair(enum.Enum):
    """What to do about a lost probe."""

    RESUBSCRIBE = "resubscribe"
    RECONNECT = "reconnect"
    # Both repairs just failed: say so once, then pause.
    GIVE_UP = "give up"
    # Within the pause after giving up: only keep probing.
    NONE = "none"


_LADDER = (Repair.RESUBSCRIBE, Repair.RECONNECT)


class RepairLadder:
    """Which repair a lost probe calls for; pure logic, the caller passes the time.

    Args:
      first_pause, max_pause: after both repairs failed, the ladder is climbed again after
        ``first_pause`` seconds, doubling on each further failure up to ``max_pause``.
    """

    def __init__(
        self, first_pause: float = FIRST_REPAIR_PAUSE, max_pause: float = MAX_REPAIR_PAUSE
    ) -> None:
        self._first_pause = first_pause
        self._max_pause = max_pause
        self._pause = first_pause
        self._next_step = 0
        self.paused_until = -math.inf

    def on_heard(self) -> None:
        """A probe came back: the next loss starts from a re-subscribe again."""
        self._next_step = 0
        self._pause = self._first_pause
        self.paused_until = -math.inf

    def on_lost(self, now: float) -> Repair:
        if now < self.paused_until:
            return Repair.NONE
        if self._next_step < len(_LADDER):
            step = _LADDER[self._next_step]
            self._next_step += 1
            return step
        self._next_step = 0
        self.paused_until = now + self._pause
        self._pause = min(self._pause * 2, self._max_pause)
        return Repair.GIVE_UP


class ProbedClient(Protocol):
    """What the probe needs of :class:`~pm.mqtt.MqttClient` (a fake in unit tests)."""

    connected: bool
    generation: int
    messages_received: int

    async def wait_connected(self) -> None: ...

    def publish_tracked(
        self, topic: str, payload: bytes, qos: int = 1
    ) -> Acknowledgement | None: ...

    async def resubscribe(self) -> bool: ...

    def drop_connection(self, reason: str) -> None: ...

    def divert(self, topic: str, handler: Callable[[str, bytes], None] | None) -> None: ...


class _Outcome(enum.Enum):
    LOST = "lost"
    # The connection went away or changed: says nothing about the subscription.
    INTERRUPTED = "interrupted"


class AnswerPathProbe:
    """Probes one client's answer path; create it with :func:`open_answer_path_probe`.

    Attributes:
      topic: where the probe is published (covered by one of the client's subscriptions).
      ok: False from a lost probe until one comes back again.
      last_round_trip: seconds from publishing the last probe that came back to its return,
        None before the first.
      probes_sent, probes_lost: probes published, and those counted lost.
      resubscribes, reconnects: repairs made because probes were lost.
    """

    def __init__(
        self,
        client: ProbedClient,
        topic: str,
        *,
        interval: float,
        round_trip_timeout: float,
        on_resubscribed: Callable[[], None] = lambda: None,
        ladder: RepairLadder | None = None,
    ) -> None:
        if interval <= 0 or round_trip_timeout <= 0:
            raise ValueError("the probe's interval and timeout must be positive")
        self.topic = topic
        self.ok = True
        self.last_round_trip: float | None = None
        self.probes_sent = 0
        self.probes_lost = 0
        self.resubscribes = 0
        self.reconnects = 0
        self._client = client
        self._interval = interval
        self._timeout = round_trip_timeout
        self._on_resubscribed = on_resubscribed
        self._ladder = ladder or RepairLadder()
        # Per probe instance, so another gateway's probes (or a replayed one) never count.
        self._nonce = secrets.token_hex(8)
        self._sequence = 0
        self._expected: bytes | None = None
        self._echoed = trio.Event()

    def on_echo(self, topic: str, payload: bytes) -> None:
        """A message on the probe topic (the client diverts them here)."""
        if payload == self._expected:
            self._expected = None
            self._echoed.set()

    async def run(self) -> None:
        """Probe forever; see the module docstring for the repair policy."""
        while True:
            await self._client.wait_connected()
            outcome = await self._probe_once()
            if outcome is _Outcome.LOST:
                if await self._repair():
                    continue  # probe again at once: did the repair help?
            elif outcome is not _Outcome.INTERRUPTED:
                self._heard(outcome)
            await trio.sleep(self._interval)

    async def _probe_once(self) -> float | _Outcome:
        """Publish one probe; its round trip in seconds, or why there is none."""
        client = self._client
        generation = client.generation
        self._sequence += 1
        payload = f"{self._nonce}:{self._sequence}".encode()
        self._expected = payload
        self._echoed = trio.Event()
        heard = client.messages_received
        sent_at = trio.current_time()
        acknowledgement = client.publish_tracked(self.topic, payload, qos=1)
        if acknowledgement is None:
            return _Outcome.INTERRUPTED
        self.probes_sent += 1
        deadline = sent_at + self._timeout
        give_up_unacknowledged = sent_at + self._timeout * _UNACKNOWLEDGED_WAIT_FACTOR
        # Whether an earlier check found the probe not yet taken by the broker: once it is,
        # the echo gets one whole timeout from that check (the broker may have taken it at
        # the very instant of this check).
        was_unacknowledged = False
        while True:
            with trio.move_on_at(deadline):
                await self._echoed.wait()
                return trio.current_time() - sent_at
            if client.generation != generation or not client.connected:
                return _Outcome.INTERRUPTED
            acknowledged = acknowledgement.is_published()
            if (
                client.messages_received != heard
                or (not acknowledged and deadline < give_up_unacknowledged)
                or (acknowledged and was_unacknowledged)
            ):
                # Answers are arriving (the path works, the probe is queued behind them), or
                # the broker has not taken the probe yet (or only just): not a verdict on
                # the subscription.
                heard = client.messages_received
                was_unacknowledged = not acknowledged
                deadline += self._timeout
                continue
            self._expected = None
            return _Outcome.LOST

    def _heard(self, round_trip: float) -> None:
        if not self.ok:
            log.info(
                "MQTT answer path back: probe on %r returned in %.1f ms (%d lost so far)",
                self.topic,
                round_trip * 1000,
                self.probes_lost,
            )
        self.ok = True
        self.last_round_trip = round_trip
        self._ladder.on_heard()

    async def _repair(self) -> bool:
        """Count a lost probe and repair; True if a repair was made (probe again at once)."""
        self.probes_lost += 1
        step = self._ladder.on_lost(trio.current_time())
        if self.ok:
            self.ok = False
            log.warning(
                "MQTT answer path lost: our probe on %r did not come back within %.1f s, so "
                "the broker no longer delivers our subscription; repairing (%s)",
                self.topic,
                self._timeout,
                step.value,
            )
        if step is Repair.RESUBSCRIBE:
            self.resubscribes += 1
            try:
                with trio.move_on_after(self._timeout):
                    if await self._client.resubscribe():
                        # Answers sent while we were deaf are lost: the owner asks again.
                        self._on_resubscribed()
            except MqttSubscribeError as error:
                # The next loss reconnects, whose restore raises this again if it persists.
                log.warning("MQTT answer path: re-subscribing failed: %s", error)
            return True
        if step is Repair.RECONNECT:
            self.reconnects += 1
            self._client.drop_connection("answer-path probe lost after re-subscribing")
            return True
        if step is Repair.GIVE_UP:
            log.warning(
                "MQTT answer path still silent after re-subscribing and reconnecting: check "
                "that the broker lets this client publish to %r and read it back (ACL); "
                "next repair in %.0f s",
                self.topic,
                self._ladder.paused_until - trio.current_time(),
            )
        return False


@asynccontextmanager
async def open_answer_path_probe(
    client: ProbedClient,
    topic: str,
    *,
    interval: float,
    round_trip_timeout: float,
    on_resubscribed: Callable[[], None] = lambda: None,
) -> AsyncIterator[AnswerPathProbe]:
    """Probe ``client``'s answer path on ``topic`` until the block exits.

    Args:
      client: a connected client one of whose subscriptions covers ``topic``; messages on
        ``topic`` are diverted from its ``on_message`` to the probe while the block runs.
      topic: where to publish the probe; nothing but this client's probe should use it.
      interval: seconds between a probe's return and the next probe.
      round_trip_timeout: seconds a probe may take to come back (extended while answers
        arrive or the broker has not acknowledged it).
      on_resubscribed: called after a repairing re-subscribe; messages the broker did not
        deliver before it are lost, so the owner asks again for what it still awaits.

    Error handling: the probe's own failures are logged, never raised; a bug in it raises out
    of the ``async with`` (inside an ExceptionGroup).
    """
    probe = AnswerPathProbe(
        client,
        topic,
        interval=interval,
        round_trip_timeout=round_trip_timeout,
        on_resubscribed=on_resubscribed,
    )
    client.divert(topic, probe.on_echo)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe.run)
            yield probe
            nursery.cancel_scope.cancel()
    finally:
        client.divert(topic, None)
