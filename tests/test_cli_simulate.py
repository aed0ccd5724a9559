"""``pm simulate``'s options to simulator settings (the fleet itself runs in
tests/integration/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pm.cli._errors import CliError
from pm.cli._main import build_parser
from pm.cli._simulate import settings_from, write_ids
from pm.simulator import SimulatorSettings, read_device_ids


def _settings(*argv: str) -> SimulatorSettings:
    return settings_from(build_parser().parse_args(["simulate", *argv]))


def test_presence_options_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PM_TOPICS_STATUS", raising=False)
    settings = _settings("--devices", "4", "--offline-rate", "0.25", "--flap-interval", "9")
    assert settings.status and settings.status_topic == "/remote/{device}/status"
    assert (settings.offline_rate, settings.flap_interval) == (0.25, 9.0)
    assert not _settings("--v1").status
    # The topic comes from the gateway's configuration, environment included.
    monkeypatch.setenv("PM_TOPICS_STATUS", "fleet/{device}/presence")
    assert _settings().status_topic == "fleet/{device}/presence"


def test_offline_rate_is_a_probability() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--offline-rate", "1.5"])


def test_ids_out_writes_what_ids_file_reads(tmp_path: Path) -> None:
    path = tmp_path / "fleet.txt"
    devices = ["02:00:00:00:00:00", "dev-b"]
    write_ids(str(path), devices)
    assert read_device_ids(path) == devices
    with pytest.raises(CliError, match="--ids-out"):
        write_ids(str(tmp_path / "missing" / "fleet.txt"), devices)
