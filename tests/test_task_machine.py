"""The per-task state machine, without trio, sockets or clocks: events in, decisions out."""

from __future__ import annotations

import ast
import math
from pathlib import Path

from pm.config import RecoveryConfig
from pm.protocol import SanjiAnswer
from pm.task_machine import (
    DEFAULT_RESEND,
    ResendSchedule,
    TaskMachine,
    TaskProgress,
    TaskSettled,
)

SCHEDULE = ResendSchedule(devices_return_grace=3.0, first_delay=2.0, max_delay=5.0)


def machine(task_id: int = 7, *, suspect: bool = False) -> TaskMachine:
    return TaskMachine(task_id, SCHEDULE, suspect=suspect)


def test_the_module_does_no_io_and_knows_no_trio() -> None:
    source = Path(__file__).resolve().parent.parent / "pm" / "task_machine.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(("." * node.level) + node.module)
    assert ".protocol" in imported  # the scan reads the real module
    assert not imported & {"trio", "socket", "time", "asyncio", "paho", "actors"}


def test_the_default_schedule_is_the_configs() -> None:
    recovery = RecoveryConfig()
    assert (
        DEFAULT_RESEND.devices_return_grace,
        DEFAULT_RESEND.first_delay,
        DEFAULT_RESEND.max_delay,
    ) == (recovery.devices_return_grace, recovery.resend_first_delay, recovery.resend_max_delay)


def test_suspect_when_sent_before_or_published_within_the_grace() -> None:
    assert TaskMachine.is_suspect(already_sent=True, now=10.0, devices_return_until=-math.inf)
    assert TaskMachine.is_suspect(already_sent=False, now=10.0, devices_return_until=10.5)
    assert not TaskMachine.is_suspect(already_sent=False, now=10.5, devices_return_until=10.5)
    assert not TaskMachine.is_suspect(already_sent=False, now=0.0, devices_return_until=-math.inf)


def test_final_answers_settle_with_the_status_their_code_gives() -> None:
    assert machine().on_answer(SanjiAnswer(id=7, code=200, data={"ok": 1})) == TaskSettled(
        7, "resolved", {"ok": 1}
    )
    assert machine().on_answer(SanjiAnswer(id=7, code=204)) == TaskSettled(7, "resolved", None)
    error = SanjiAnswer(id=7, code=500, resource="/r", data={"message": "boom"})
    assert machine().on_answer(error) == TaskSettled(
        7, "error", {"code": 500, "resource": "/r", "data": {"message": "boom"}}
    )
    assert machine().on_answer(SanjiAnswer(id=7, code=404)).status == "error"  # type: ignore[union-attr]


def test_interim_answers_report_progress_and_unusable_ones_nothing() -> None:
    task = machine()
    assert task.on_answer(SanjiAnswer(id=7, code=206, data={"progress": 40})) == TaskProgress(7, 40)
    assert task.on_answer(SanjiAnswer(id=7, code=206, data={"progress": 250})) == TaskProgress(
        7, 100
    )
    for data in (None, {}, {"progress": "half"}, {"progress": True}, [40]):
        assert task.on_answer(SanjiAnswer(id=7, code=206, data=data)) is None


def test_an_answer_to_another_task_id_is_ignored() -> None:
    assert machine().on_answer(SanjiAnswer(id=8, code=200)) is None


def test_timeout_settles_with_no_result() -> None:
    assert machine().on_timeout() == TaskSettled(7, "timeout", None)


def test_resend_waits_double_up_to_the_maximum() -> None:
    task = machine(suspect=True)
    assert task.resend_delay == 2.0
    assert [task.on_resend_due() for _ in range(4)] == [2.0, 4.0, 5.0, 5.0]
    assert task.resend_delay == 5.0


def test_becoming_suspect_starts_the_resend_wait_once() -> None:
    task = machine()
    assert not task.suspect
    assert task.on_suspect() is True
    assert task.suspect and task.resend_delay == SCHEDULE.first_delay
    assert task.on_suspect() is False  # a second reconnect does not restart the schedule
