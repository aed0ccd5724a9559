"""The per-task state machine, without trio, sockets or clocks: events in, decisions out."""

from __future__ import annotations

import ast
from pathlib import Path

from pm.protocol import SanjiAnswer
from pm.task_machine import TaskMachine, TaskProgress, TaskSettled


def machine(task_id: int = 7) -> TaskMachine:
    return TaskMachine(task_id)


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


def test_final_answers_settle_with_the_status_their_code_gives() -> None:
    assert machine().on_answer(SanjiAnswer(id=7, code=200, data={"ok": 1})) == TaskSettled(
        7, "resolved", {"ok": 1}, 200
    )
    assert machine().on_answer(SanjiAnswer(id=7, code=204)) == TaskSettled(7, "resolved", None, 204)
    error = SanjiAnswer(id=7, code=500, resource="/r", data={"message": "boom"})
    assert machine().on_answer(error) == TaskSettled(
        7, "error", {"code": 500, "resource": "/r", "data": {"message": "boom"}}, 500
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
