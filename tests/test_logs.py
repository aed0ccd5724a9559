"""Log output: the JSON formatter writes the ids log calls pass as ``extra=`` as keys."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from pm.logs import JsonFormatter, configure_logging


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("pm.jobs", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_the_message_and_every_extra_field() -> None:
    line = JsonFormatter().format(
        record("job %d finished: %s", 7, "resolved", job_id=7, status="resolved", timeout=None)
    )
    assert "\n" not in line
    decoded = json.loads(line)
    assert decoded.pop("time").endswith("Z")
    assert decoded == {
        "level": "INFO",
        "logger": "pm.jobs",
        "message": "job 7 finished: resolved",
        "job_id": 7,
        "status": "resolved",
        "timeout": None,
    }


def test_extra_fields_never_replace_the_fixed_keys_and_odd_values_become_repr() -> None:
    error = RuntimeError("boom")
    decoded = json.loads(JsonFormatter().format(record("x", level="mine", error=error)))
    assert decoded["level"] == "INFO" and decoded["extra_level"] == "mine"
    assert decoded["error"] == "RuntimeError('boom')"


def test_a_traceback_is_one_field() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        failed = record("device actor failed", device="aa")
        failed.exc_info = sys.exc_info()
    decoded = json.loads(JsonFormatter().format(failed))
    assert decoded["device"] == "aa"
    traceback = decoded["exception"]
    assert traceback.startswith("Traceback") and "ValueError: bad" in traceback


def test_configure_logging_json_writes_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("info", "json")
    try:
        logging.getLogger("pm.engine").info("job %d created", 3, extra={"job_id": 3})
        logging.getLogger("pm.engine").debug("not at info")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["job_id"] == 3
