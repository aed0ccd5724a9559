"""``pm submit``'s rollout, schedule and expiry options and ``--file``: the POST /jobs body
they make (the gateway's answers to it are tested in tests/integration/test_cli_control.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pm.cli._errors import CliError
from pm.cli._main import build_parser
from pm.cli._submit import job_request


def body(*argv: str) -> dict[str, object]:
    return job_request(build_parser().parse_args(["submit", *argv]))


def test_no_option_keeps_the_seed_body() -> None:
    assert body("--resource", "/r", "--to", "a") == {
        "batch": [{"method": "get", "resource": "/r", "data": {}, "__destination": ["a"]}]
    }


def test_every_option_sets_its_field() -> None:
    made = body(
        "--resource", "/r", "--to", "a",
        "--max-in-flight", "50", "--rate", "600", "--ramp", "2:100:400",
        "--abort-at", "10%", "--abort-at", "5.5%:error:pause:min=20",
        "--retries", "3", "--priority", "high", "--expires-in", "3600",
        "--start-at", "2026-12-01T02:00:00Z", "--end-at", "2026-12-08T00:00:00Z",
        "--end-behavior", "cancel",
        "--window", "0 2 * * *;120;Europe/Berlin", "--window", "*/30 * * * 6,0;15",
    )  # fmt: skip
    assert {key: value for key, value in made.items() if key != "batch"} == {
        "rollout": {
            "maxInFlight": 50,
            "maxPerMinute": 600.0,
            "ramp": {"factor": 2.0, "afterSucceeded": 100, "maxInFlight": 400},
        },
        "abort": [
            {"thresholdPercent": 10.0},
            {"thresholdPercent": 5.5, "on": "error", "action": "pause", "minSettled": 20},
        ],
        "retry": {"max": 3},
        "priority": "high",
        "expiresIn": 3600.0,
        "schedule": {
            "startAt": "2026-12-01T02:00:00Z",
            "endAt": "2026-12-08T00:00:00Z",
            "endBehavior": "cancel",
            "windows": [
                {"cron": "0 2 * * *", "durationMinutes": 120, "timezone": "Europe/Berlin"},
                {"cron": "*/30 * * * 6,0", "durationMinutes": 15},
            ],
        },
    }


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--abort-at", "10", "percentage"),
        ("--abort-at", "10%:boom", "boom"),
        ("--abort-at", "10%:error:timeout", "timeout"),  # one ON only
        ("--ramp", "2", "FACTOR:AFTER"),
        ("--ramp", "0:10", "> 0"),
        ("--window", "0 2 * * *", "CRON;MINUTES"),
        ("--window", "0 2 * * *;0", ">= 1"),
        ("--retries", "11", "invalid choice"),
    ],
)
def test_malformed_short_forms_are_refused_naming_the_option(
    option: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["submit", "--resource", "/r", "--to", "a", option, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert option in error and says in error, error


def test_file_holds_the_whole_job_and_options_go_on_top(tmp_path: Path) -> None:
    document = {
        "batch": [
            {"method": "put", "resource": "/a", "__destination": ["x", "y"]},
            {"method": "get", "resource": "/b", "__destination": "z", "data": {"k": 1}},
        ],
        "rollout": {"maxInFlight": 5, "maxPerMinute": 60},
        "timeout": 30,
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(document))
    made = body("--file", str(path), "--max-in-flight", "10", "--dry-run")
    assert made["batch"] == document["batch"]
    assert made["rollout"] == {"maxInFlight": 10, "maxPerMinute": 60}
    assert made["timeout"] == 30


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="cannot read --file"):
        body("--file", str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(CliError, match="must be a job document"):
        body("--file", str(bad))
    with pytest.raises(CliError, match="give no --resource"):
        body("--file", str(bad), "--resource", "/r")
    with pytest.raises(CliError, match="give --resource"):
        body("--to", "a")
