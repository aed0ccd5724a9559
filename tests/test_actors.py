"""The actor runtime on trio's virtual clock: mailboxes, supervision and keyed registries.

No sockets and no real sleeping: timed tests take ``autojump_clock`` (pytest-trio reads the
clock from the test function's own arguments) and assert exact ``trio.current_time()``
differences; "has it happened yet?" is asked after ``wait_all_tasks_blocked()``.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    SWEEPS_PER_IDLE_TIMEOUT,
    ActorRef,
    ActorStopped,
    AskTimeout,
    Directive,
    Failure,
    IdleInbox,
    MailboxFull,
    Registry,
    Reply,
    Supervisor,
    open_mailbox,
    open_supervisor,
)

ACTORS_DIR = Path(__file__).resolve().parent.parent / "actors"


class Boom(Exception):
    """What test actors raise on purpose."""


class Ask:
    """A request message carrying its reply slot."""

    def __init__(self, value: int, reply: Reply[int]) -> None:
        self.value = value
        self.reply = reply


async def doubler(inbox: trio.MemoryReceiveChannel[Ask]) -> None:
    async for message in inbox:
        message.reply.send(message.value * 2)


# -- the package boundary ------------------------------------------------------------------


def test_actors_never_imports_pm() -> None:
    sources = sorted(ACTORS_DIR.glob("*.py"))
    assert ACTORS_DIR / "_ref.py" in sources  # the scan looks at the real package
    imported: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
    assert "trio" in imported
    assert not {name for name in imported if name == "pm" or name.startswith("pm.")}


# -- mailboxes and references --------------------------------------------------------------


def test_open_mailbox_refuses_an_accidental_unbounded_or_empty_capacity() -> None:
    for capacity in (0, -1, 1.5):
        with pytest.raises(ValueError, match="capacity"):
            open_mailbox("m", capacity)  # type: ignore[arg-type]
    ref, inbox = open_mailbox("m", math.inf)  # type: ignore[arg-type]
    for number in range(10_000):
        ref.tell_nowait(number)
    assert ref.queued == 10_000
    inbox.close()


async def test_tell_waits_while_the_mailbox_is_full_until_the_actor_takes_one() -> None:
    ref, inbox = open_mailbox("slow", 2)
    await ref.tell("a")
    await ref.tell("b")
    assert ref.queued == 2
    delivered = trio.Event()

    async def third() -> None:
        await ref.tell("c")
        delivered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert not delivered.is_set()  # back-pressure: the sender waits
        assert inbox.receive_nowait() == "a"
        await trio.testing.wait_all_tasks_blocked()
        assert delivered.is_set()
    assert [inbox.receive_nowait() for _ in range(2)] == ["b", "c"]


def test_tell_nowait_on_a_full_mailbox_raises_mailbox_full_and_sends_nothing() -> None:
    ref, inbox = open_mailbox("full", 1)
    ref.tell_nowait("kept")
    with pytest.raises(MailboxFull, match="full"):
        ref.tell_nowait("refused")
    assert ref.queued == 1
    assert inbox.receive_nowait() == "kept"
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()


async def test_tell_to_an_ended_actor_raises_actor_stopped() -> None:
    ref, inbox = open_mailbox("gone", 4)
    inbox.close()
    with pytest.raises(ActorStopped, match="gone"):
        await ref.tell("x")
    with pytest.raises(ActorStopped):
        ref.tell_nowait("x")
    ref.close()
    with pytest.raises(ActorStopped):
        ref.tell_nowait("x")  # a closed reference says the same


async def test_a_sender_blocked_on_a_full_mailbox_learns_when_the_actor_ends() -> None:
    ref, inbox = open_mailbox("ending", 1)
    ref.tell_nowait("first")
    outcome: list[type[BaseException]] = []

    async def sender() -> None:
        try:
            await ref.tell("second")
        except ActorStopped as error:
            outcome.append(type(error))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        inbox.close()
    assert outcome == [ActorStopped]


async def test_ask_returns_the_actors_answer(autojump_clock: trio.testing.MockClock) -> None:
    ref, inbox = open_mailbox("doubler", 4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(doubler, inbox)
        start = trio.current_time()
        assert await ref.ask(lambda reply: Ask(21, reply), timeout=1.0) == 42
        assert trio.current_time() - start == 0
        ref.close()


async def test_ask_times_out_after_exactly_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ref, inbox = open_mailbox("mute", 4)
    start = trio.current_time()
    with pytest.raises(AskTimeout, match="mute did not answer within 2.5 s"):
        await ref.ask(lambda reply: Ask(1, reply), timeout=2.5)
    assert trio.current_time() - start == 2.5
    assert isinstance(AskTimeout("x"), trio.TooSlowError)
    # The request was delivered; answering late is harmless.
    late = inbox.receive_nowait()
    late.reply.send(2)


async def test_ask_timeout_covers_waiting_for_mailbox_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ref, _inbox = open_mailbox("busy", 1)
    ref.tell_nowait(Ask(0, Reply()))
    start = trio.current_time()
    with pytest.raises(AskTimeout):
        await ref.ask(lambda reply: Ask(1, reply), timeout=3.0)
    assert trio.current_time() - start == 3.0
    assert ref.queued == 1  # the ask never got in


async def test_ask_to_a_stopped_actor_raises_actor_stopped_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ref, inbox = open_mailbox("stopped", 4)
    inbox.close()
    start = trio.current_time()
    with pytest.raises(ActorStopped):
        await ref.ask(lambda reply: Ask(1, reply), timeout=10.0)
    assert trio.current_time() - start == 0


async def test_ask_raises_actor_stopped_when_the_reply_slot_is_closed_unanswered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ref, inbox = open_mailbox("dropper", 4)

    async def dropper() -> None:
        async for message in inbox:
            message.reply._send.close()  # gives up on the request without an answer

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dropper)
        start = trio.current_time()
        with pytest.raises(ActorStopped, match="without answering"):
            await ref.ask(lambda reply: Ask(1, reply), timeout=10.0)
        assert trio.current_time() - start == 0
        ref.close()


def test_reply_send_twice_keeps_the_first_answer() -> None:
    reply: Reply[int] = Reply()
    reply.send(1)
    reply.send(2)  # not an error: the slot is already closed
    assert reply._receive.receive_nowait() == 1


async def test_clone_keeps_the_mailbox_open_until_every_reference_is_closed() -> None:
    ref, inbox = open_mailbox("shared", 4)
    other = ref.clone()
    assert other.name == "shared"
    assert repr(other) == "<ActorRef shared>"
    ref.close()
    other.tell_nowait("still open")
    other.close()
    assert inbox.receive_nowait() == "still open"
    with pytest.raises(trio.EndOfChannel):
        inbox.receive_nowait()


# -- supervision ---------------------------------------------------------------------------


class PolicyLog:
    """A failure policy that records what it was told and answers a fixed directive."""

    def __init__(self, directive: Directive, drain: bool = False) -> None:
        self.directive = directive
        self.drain = drain
        self.failures: list[tuple[str, Exception]] = []
        self.keys: list[object] = []
        self.drained: list[list[Any]] = []

    def __call__(self, failure: Failure[Any]) -> Directive:
        self.failures.append((failure.name, failure.error))
        self.keys.append(failure.key)
        if self.drain:
            self.drained.append(failure.drain())
        return self.directive


def recording_actor(handled: list[Any], fail_on: object = "boom") -> Callable[..., Any]:
    async def actor(inbox: trio.MemoryReceiveChannel[Any]) -> None:
        async for message in inbox:
            if message == fail_on:
                raise Boom(f"cannot handle {message}")
            handled.append(message)

    return actor


async def test_a_failing_actor_is_reported_by_name_and_its_siblings_keep_running() -> None:
    policy = PolicyLog(Directive.STOP)
    exits: list[str] = []
    sibling_handled: list[Any] = []
    async with open_supervisor(policy) as supervisor:
        failing = supervisor.spawn(
            "failing",
            recording_actor([]),
            capacity=4,
            key=("job", 7),
            on_exit=lambda: exits.append("failing"),
        )
        sibling = supervisor.spawn(
            "sibling",
            recording_actor(sibling_handled),
            capacity=4,
            on_exit=lambda: exits.append("sibling"),
        )
        assert supervisor.running == 2
        await failing.tell("boom")
        await trio.testing.wait_all_tasks_blocked()
        assert [(name, type(error), str(error)) for name, error in policy.failures] == [
            ("failing", Boom, "cannot handle boom")
        ]
        assert policy.keys == [("job", 7)]  # what it was spawned with, for the policy
        assert exits == ["failing"]
        assert (supervisor.running, supervisor.failures) == (1, 1)
        with pytest.raises(ActorStopped):
            await failing.tell("after")
        await sibling.tell("alive")
        await trio.testing.wait_all_tasks_blocked()
        assert sibling_handled == ["alive"]
        sibling.close()
    assert exits == ["failing", "sibling"]
    assert supervisor.running == 0


async def test_stop_can_drain_the_messages_that_will_never_be_handled() -> None:
    policy = PolicyLog(Directive.STOP, drain=True)
    async with open_supervisor(policy) as supervisor:
        ref = supervisor.spawn("drained", recording_actor([]), capacity=4)
        # Queued before the actor's first step: it fails on the first, two stay queued.
        ref.tell_nowait("boom")
        ref.tell_nowait("lost-1")
        ref.tell_nowait("lost-2")
    assert policy.drained == [["lost-1", "lost-2"]]
    with pytest.raises(ActorStopped):
        ref.tell_nowait("x")


async def test_restart_keeps_the_queued_messages_and_loses_only_the_failing_one() -> None:
    policy = PolicyLog(Directive.RESTART)
    handled: list[Any] = []
    starts: list[int] = []
    actor = recording_actor(handled)

    async def counted(inbox: trio.MemoryReceiveChannel[Any]) -> None:
        starts.append(len(starts))
        await actor(inbox)

    async with open_supervisor(policy) as supervisor:
        ref = supervisor.spawn("phoenix", counted, capacity=8)
        for message in ("a", "boom", "b", "c"):
            ref.tell_nowait(message)
        await trio.testing.wait_all_tasks_blocked()
        assert handled == ["a", "b", "c"]
        assert starts == [0, 1]
        assert len(policy.failures) == 1
        assert supervisor.running == 1
        ref.close()


async def test_a_crash_loop_is_stopped_after_max_restarts_within_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = PolicyLog(Directive.RESTART)
    starts: list[float] = []
    exits: list[float] = []

    async def always_fails(inbox: trio.MemoryReceiveChannel[Any]) -> None:
        starts.append(trio.current_time())
        await inbox.receive()
        raise Boom("again")

    async with open_supervisor(policy, max_restarts=2, restart_window=10.0) as supervisor:
        ref = supervisor.spawn(
            "looping",
            always_fails,
            capacity=8,
            on_exit=lambda: exits.append(trio.current_time()),
        )
        for number in range(5):
            ref.tell_nowait(number)
    # The first run and two restarts; the third failure within 10 s stops it.
    assert len(starts) == 3
    assert len(policy.failures) == 3
    assert len(exits) == 1
    with pytest.raises(ActorStopped):
        ref.tell_nowait("x")


async def test_restarts_spread_wider_than_the_window_are_not_a_crash_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = PolicyLog(Directive.RESTART)
    starts: list[float] = []

    async def fails_on_every_message(inbox: trio.MemoryReceiveChannel[Any]) -> None:
        starts.append(trio.current_time())
        await inbox.receive()
        raise Boom("occasionally")

    async with open_supervisor(policy, max_restarts=2, restart_window=10.0) as supervisor:
        ref = supervisor.spawn("sporadic", fails_on_every_message, capacity=8)
        t0 = trio.current_time()
        for _ in range(6):
            await ref.tell("x")
            await trio.sleep(6.0)  # two failures are always 6 s apart: at most 2 per window
        await trio.testing.wait_all_tasks_blocked()
        assert len(policy.failures) == 6
        assert supervisor.running == 1
        assert [start - t0 for start in starts] == [0, 0, 6, 12, 18, 24, 30]
        ref.close()


async def test_escalate_cancels_the_siblings_and_propagates_the_error() -> None:
    policy = PolicyLog(Directive.ESCALATE)
    sibling_cancelled = trio.Event()
    exits: list[str] = []

    async def sibling(inbox: trio.MemoryReceiveChannel[Any]) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            sibling_cancelled.set()
            raise

    with pytest.raises(ExceptionGroup) as caught:
        async with open_supervisor(policy) as supervisor:
            supervisor.spawn("sibling", sibling, capacity=1, on_exit=lambda: exits.append("s"))
            ref = supervisor.spawn(
                "escalating", recording_actor([]), capacity=1, on_exit=lambda: exits.append("e")
            )
            await trio.testing.wait_all_tasks_blocked()
            await ref.tell("boom")
            await trio.sleep_forever()
    assert caught.group_contains(Boom, match="cannot handle boom")
    assert not caught.group_contains(trio.Cancelled)
    assert sibling_cancelled.is_set()
    assert sorted(exits) == ["e", "s"]
    assert [name for name, _ in policy.failures] == ["escalating"]


async def test_cancellation_is_never_reported_as_a_failure() -> None:
    policy = PolicyLog(Directive.RESTART)
    exits: list[str] = []

    async def waits(inbox: trio.MemoryReceiveChannel[Any]) -> None:
        await trio.sleep_forever()

    with trio.CancelScope() as scope:
        async with open_supervisor(policy) as supervisor:
            supervisor.spawn("waiting", waits, capacity=1, on_exit=lambda: exits.append("w"))
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    assert policy.failures == []
    assert supervisor.failures == 0
    assert exits == ["w"]


async def test_on_exit_runs_before_the_mailbox_is_closed_to_senders() -> None:
    # Supervisor.spawn documents on_exit as called "before its mailbox is closed to
    # senders": a registry relies on it to deregister a stopped actor before anyone can
    # find it registered yet closed.
    accepted_during_exit: list[bool] = []
    ref_box: list[ActorRef[Any]] = []

    def on_exit() -> None:
        try:
            ref_box[0].tell_nowait("probe")
        except ActorStopped:
            accepted_during_exit.append(False)
        else:
            accepted_during_exit.append(True)

    async with open_supervisor(PolicyLog(Directive.STOP)) as supervisor:
        ref = supervisor.spawn("stopping", recording_actor([]), capacity=4, on_exit=on_exit)
        ref_box.append(ref)
        ref.tell_nowait("boom")
    assert accepted_during_exit == [True]


# -- registry ------------------------------------------------------------------------------


class KeyedLog:
    """A keyed actor that records (key, incarnation, message) and when each actor ended."""

    def __init__(self, work: float = 0.0) -> None:
        self.handled: list[tuple[str, int, Any]] = []
        self.incarnations: dict[str, int] = {}
        self.ended: list[tuple[str, int, float]] = []
        # Seconds each message takes, and the most actors of one key ever working at once.
        self.work = work
        self._working: dict[str, int] = {}
        self.most_working = 0

    async def __call__(self, key: str, inbox: IdleInbox[Any]) -> None:
        incarnation = self.incarnations.get(key, 0) + 1
        self.incarnations[key] = incarnation
        async for message in inbox:
            if message == "boom":
                raise Boom(key)
            self.handled.append((key, incarnation, message))
            if self.work:
                self._working[key] = self._working.get(key, 0) + 1
                self.most_working = max(self.most_working, self._working[key])
                await trio.sleep(self.work)
                self._working[key] -= 1
        self.ended.append((key, incarnation, trio.current_time()))


# An idle actor retires between idle_timeout and idle_timeout * (1 + 1/SWEEPS) seconds after
# its mailbox went empty (one sweeper per registry, not a timer per actor).
_LATEST_RETIREMENT = 1 + 1 / SWEEPS_PER_IDLE_TIMEOUT


async def test_registry_spawns_on_first_tell_and_retires_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = KeyedLog()
    async with trio.open_nursery() as nursery:
        registry: Registry[str, Any] = Registry(
            Supervisor(nursery), log, capacity=4, idle_timeout=5.0, name="dev"
        )
        assert len(registry) == 0 and "a" not in registry and registry.get("a") is None
        t0 = trio.current_time()
        await registry.tell("a", 1)
        assert "a" in registry and len(registry) == 1 and list(registry) == ["a"]
        assert repr(registry.get("a")) == "<ActorRef dev:a>"
        await trio.sleep(3.0)
        await registry.tell("a", 2)  # resets the idle timer
        while "a" in registry:
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.25)
        await trio.testing.wait_all_tasks_blocked()
        assert log.handled == [("a", 1, 1), ("a", 1, 2)]
        [(_, _, ended)] = log.ended
        assert t0 + 3.0 + 5.0 <= ended <= t0 + 3.0 + 5.0 * _LATEST_RETIREMENT
        assert len(registry) == 0 and registry.spawned == 1


async def test_registry_idle_actor_is_still_there_just_before_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = KeyedLog()
    async with trio.open_nursery() as nursery:
        registry: Registry[str, Any] = Registry(
            Supervisor(nursery), log, capacity=4, idle_timeout=5.0
        )
        await registry.tell("a", 1)
        await trio.sleep(4.99)
        assert "a" in registry and log.ended == []
        await trio.sleep(5.0 * _LATEST_RETIREMENT - 4.99)
        await trio.testing.wait_all_tasks_blocked()
        assert "a" not in registry and len(log.ended) == 1


async def test_registry_sweeper_runs_only_while_actors_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = KeyedLog()
    async with trio.open_nursery() as nursery:
        registry: Registry[str, Any] = Registry(
            Supervisor(nursery), log, capacity=4, idle_timeout=5.0, name="dev"
        )

        def sweepers() -> int:
            return sum(child.name == "dev:sweeper" for child in nursery.child_tasks)

        assert sweepers() == 0
        await registry.tell("a", 1)
        await registry.tell("b", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert sweepers() == 1
        await trio.sleep(5.0 * _LATEST_RETIREMENT * 2)
        await trio.testing.wait_all_tasks_blocked()
        assert len(registry) == 0 and sweepers() == 0
        await registry.tell("a", 2)  # a new actor, a new sweeper
        await trio.testing.wait_all_tasks_blocked()
        assert sweepers() == 1 and log.incarnations == {"a": 2, "b": 1}
        nursery.cancel_scope.cancel()


async def test_registry_tell_after_retirement_spawns_a_fresh_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = KeyedLog()
    async with trio.open_nursery() as nursery:
        registry: Registry[str, Any] = Registry(
            Supervisor(nursery), log, capacity=4, idle_timeout=5.0
        )
        await registry.tell("a", "first")
        first_ref = registry.get("a")
        await trio.sleep(10.0)
        assert "a" not in registry
        with pytest.raises(ActorStopped):
            first_ref.tell_nowait("stale")  # type: ignore[union-attr]
        await registry.tell("a", "second")
        assert registry.get("a") is not first_ref
        await trio.testing.wait_all_tasks_blocked()
        assert log.handled == [("a", 1, "first"), ("a", 2, "second")]
        assert registry.spawned == 2
        nursery.cancel_scope.cancel()


async def test_registry_keys_have_independent_actors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = KeyedLog()
    async with trio.open_nursery() as nursery:
        registry: Registry[str, Any] = Registry(
            Supervisor(nursery), log, capacity=4, idle_timeout=5.0
        )
        t0 = trio.current_time()
        await registry.tell("a", 1)
        await trio.sleep(2.0)
        await registry.tell("b", 2)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(registry) == ["a", "b"] and len(registry) == 2
        while "a" in registry:
            await trio.sleep(0.25)
            await trio.testing.wait_all_tasks_blocked()
        assert list(registry) == ["b"]  # a retired on its own schedule, b is still busy-recent
        while len(registry):
            await trio.sleep(0.25)
            await trio.testing.wait_all_tasks_blocked()
        ended = {key: end - t0 for key, _, end in log.ended}
        assert 5.0 <= ended["a"] <= 5.0 * _LATEST_RETIREMENT
        assert 2.0 + 5.0 <= ended["b"] <= 2.0 + 5.0 * _LATEST_RETIREMENT


async def test_registry_two_concurrent_tells_for_a_new_key_spawn_one_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = KeyedLog()
    async with trio.open_nursery() as nursery:
        registry: Registry[str, Any] = Registry(
            Supervisor(nursery), log, capacity=4, idle_timeout=5.0
        )
        async with trio.open_nursery() as senders:
            senders.start_soon(registry.tell, "k", "x")
            senders.start_soon(registry.tell, "k", "y")
        await trio.testing.wait_all_tasks_blocked()
        assert registry.spawned == 1 and len(registry) == 1
        assert sorted(message for _, _, message in log.handled) == ["x", "y"]
        assert {incarnation for _, incarnation, _ in log.handled} == {1}
        nursery.cancel_scope.cancel()


async def test_registry_tell_waits_on_a_full_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    handled: list[Any] = []

    async def gated(key: str, inbox: IdleInbox[Any]) -> None:
        await gate.wait()
        async for message in inbox:
            handled.append(message)

    async with trio.open_nursery() as nursery:
        registry: Registry[str, Any] = Registry(
            Supervisor(nursery), gated, capacity=1, idle_timeout=5.0
        )
        await registry.tell("k", 1)
        delivered = trio.Event()

        async def second() -> None:
            await registry.tell("k", 2)
            delivered.set()

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not delivered.is_set() and registry.spawned == 1
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert delivered.is_set() and handled == [1, 2]
        nursery.cancel_scope.cancel()


async def test_registry_stopped_actor_is_forgotten_and_the_next_tell_respawns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = KeyedLog()
    policy = PolicyLog(Directive.STOP)
    async with trio.open_nursery() as nursery:
        registry: Registry[str, Any] = Registry(
            Supervisor(nursery, policy), log, capacity=4, idle_timeout=5.0, name="dev"
        )
        await registry.tell("a", "boom")
        await trio.testing.wait_all_tasks_blocked()
        assert [name for name, _ in policy.failures] == ["dev:a"]
        assert policy.keys == ["a"]  # the registry key itself, not parsed from the name
        assert "a" not in registry
        await registry.tell("a", "again")
        await trio.testing.wait_all_tasks_blocked()
        assert log.handled == [("a", 2, "again")]
        nursery.cancel_scope.cancel()


async def test_registry_never_loses_a_message_sent_as_the_actor_goes_idle(
    mock_clock: trio.testing.MockClock,
) -> None:
    # IdleInbox promises that a message is "either delivered to this actor or finds the key
    # free and spawns a new one", and never both: one actor per key works at a time. The
    # hard case: the sweeper that retires the actor and a sender run in the same scheduling
    # batch. Senders just before and just after the retirement put one on each side of the
    # sweeper, whichever way trio orders that batch.
    log = KeyedLog(work=1.0)
    idle = 5.0
    async with trio.open_nursery() as nursery:
        registry: Registry[str, Any] = Registry(
            Supervisor(nursery), log, capacity=4, idle_timeout=idle
        )
        t0 = trio.current_time()
        await registry.tell("a", "start")
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1.0)  # "start" is done: the actor parks at t0 + 1
        await trio.testing.wait_all_tasks_blocked()
        retirement = t0 + 1.0 + idle

        async def send_at(moment: float, message: str) -> None:
            await trio.sleep_until(moment)
            await registry.tell("a", message)

        nursery.start_soon(send_at, retirement - 0.001, "before")
        nursery.start_soon(send_at, retirement + 0.001, "after")
        await trio.testing.wait_all_tasks_blocked()
        # One step wakes both senders and the sweeper (its tick at t0 + 2.5, late), which
        # then finds the actor idle since t0 + 1 <= now - idle.
        mock_clock.jump(idle + 0.001)
        for _ in range(4):  # let the work of "before" and "after" finish
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(message for _, _, message in log.handled) == ["after", "before", "start"]
        assert log.most_working == 1
        nursery.cancel_scope.cancel()


async def test_ask_queued_behind_a_failure_learns_at_once_that_the_actor_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(PolicyLog(Directive.STOP)) as supervisor:

        async def fails_first(inbox: trio.MemoryReceiveChannel[Any]) -> None:
            await inbox.receive()
            raise Boom("first message")

        ref = supervisor.spawn("fragile", fails_first, capacity=4)
        ref.tell_nowait("boom")
        start = trio.current_time()
        outcome: type[Exception] | None = None
        try:
            await ref.ask(lambda reply: Ask(1, reply), timeout=10.0)
        except (ActorStopped, AskTimeout) as error:
            outcome = type(error)
        waited = trio.current_time() - start
    assert (outcome, waited) == (ActorStopped, 0)
