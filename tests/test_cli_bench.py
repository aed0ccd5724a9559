"""``pm bench``'s options, job and outputs without a gateway (the whole run against a real
gateway is in tests/integration/test_cli_bench.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec
import pytest
import trio

from pm.bench_summary import summarize, timeline
from pm.cli._bench import job_body, redacted_command
from pm.cli._bench_fleet import BrokerAddress, bench_device_ids, default_broker, fleet_settings
from pm.cli._bench_output import BenchRun, report_lines, write_outputs
from pm.cli._main import build_parser, main
from pm.schemas import JobView
from pm.simulator import DeviceStats
from tests.test_bench_summary import _sample


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def _refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The error line argparse prints for ``pm bench ARGV`` (after its short usage line)."""
    with pytest.raises(SystemExit) as exited:
        _args(*argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: pm bench"), lines
    return lines[1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0.5", (0.5, 0.5)),
        ("2s", (2.0, 2.0)),
        ("20ms", (0.02, 0.02)),
        ("10..50ms", (0.01, 0.05)),
        ("0.01..0.05", (0.01, 0.05)),
        ("10ms..1s", (0.01, 1.0)),
        ("0", (0.0, 0.0)),
    ],
)
def test_latency_is_seconds_or_ms_alone_or_as_a_range(
    text: str, seconds: tuple[float, float]
) -> None:
    assert _args("--latency", text).latency == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["20ps", "-1", "50..10ms", "..5", "5..", "nan", "inf", "x..y"])
def test_a_bad_latency_is_one_line_naming_the_option(
    capsys: pytest.CaptureFixture[str], text: str
) -> None:
    line = _refusal(capsys, "--latency", text)
    assert line.startswith("pm bench: error: argument --latency: "), line
    assert repr(text) in line


@pytest.mark.parametrize("text", ["1.5", "-0.1", "many"])
def test_the_error_rate_is_a_probability(capsys: pytest.CaptureFixture[str], text: str) -> None:
    line = _refusal(capsys, "--error-rate", text)
    assert line.startswith("pm bench: error: argument --error-rate: "), line


def test_simulate_takes_the_same_latency_forms() -> None:
    from pm.cli._simulate import settings_from

    settings = settings_from(build_parser().parse_args(["simulate", "--latency", "10..50ms"]))
    assert (settings.latency, settings.latency_max) == pytest.approx((0.01, 0.05))


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("mqtt://broker", BrokerAddress("broker", 1883, False)),
        ("mqtts://broker", BrokerAddress("broker", 8883, True)),
        ("MQTT://10.0.0.2:11883/", BrokerAddress("10.0.0.2", 11883, False)),
        ("mqtt://[::1]:1884", BrokerAddress("::1", 1884, False)),
    ],
)
def test_the_broker_is_an_mqtt_url(text: str, address: BrokerAddress) -> None:
    assert _args("--broker", text).broker == address


@pytest.mark.parametrize("text", ["http://broker", "broker:1883", "mqtt://", "mqtt://b:99999"])
def test_a_bad_broker_url_names_the_option(capsys: pytest.CaptureFixture[str], text: str) -> None:
    assert _refusal(capsys, "--broker", text).startswith("pm bench: error: argument --broker: ")


def test_the_default_broker_is_the_embedded_one_on_the_gateways_host() -> None:
    assert default_broker("https://gw.example:8443") == BrokerAddress("gw.example", 1883, False)


def test_fleet_settings_follow_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PM_BROKER_PASSWORD", "from-the-environment")
    monkeypatch.delenv("PM_DEVICE_PASSWORD", raising=False)
    args = _args(
        "--devices", "3", "--connections", "2", "--latency", "1..3ms", "--error-rate", "0.25",
        "--broker-username", "bench", "--broker-ca", "ca.pem",
    )  # fmt: skip
    settings = fleet_settings(args, BrokerAddress("b", 1883, False))
    assert (
        settings.devices
        == bench_device_ids(3)
        == [
            "02:be:00:00:00:00",
            "02:be:00:00:00:01",
            "02:be:00:00:00:02",
        ]
    )
    assert (settings.latency, settings.latency_max) == pytest.approx((0.001, 0.003))
    assert (settings.error_rate, settings.connections) == (0.25, 2)
    assert (settings.username, settings.password) == ("bench", "from-the-environment")
    # A CA file means TLS even on an mqtt:// URL.
    assert settings.tls and settings.tls_ca_file == "ca.pem"


def test_more_tasks_than_devices_make_rounds_through_the_fleet() -> None:
    devices = bench_device_ids(4)
    args = _args("--tasks", "10", "--task-timeout", "7", "--max-in-flight", "3", "--retries", "1")
    body = job_body(args, devices)
    assert [entry["__destination"] for entry in body["batch"]] == [devices, devices, devices[:2]]
    assert {entry["timeout"] for entry in body["batch"]} == {7}
    # The rollout options are pm submit's, set the same way.
    assert body["rollout"] == {"maxInFlight": 3} and body["retry"] == {"max": 1}


def test_fewer_tasks_than_devices_use_the_first_devices() -> None:
    body = job_body(_args("--tasks", "2", "--data", '{"a": 1}'), bench_device_ids(5))
    [entry] = body["batch"]
    assert entry["__destination"] == bench_device_ids(2) and entry["data"] == {"a": 1}


def _run() -> BenchRun:
    samples = [
        _sample(1, "resolved", 0.2, answer=0.05),
        _sample(2, "error", 0.4, answer=0.1),
        _sample(3, "timeout", 2.0),
    ]
    width, points = timeline(samples)
    job = msgspec.convert(
        {
            "id": 4, "createdAt": "2026-12-01T12:00:00.000Z",
            "finishAt": "2026-12-01T12:00:02.000Z", "timeout": None, "status": "resolved",
            "progress": 100, "totalCount": 3, "doneCount": 3, "finishCount": 1,
            "errorCount": 2, "pendingCount": 0, "sentCount": 0, "expiredCount": 0,
            "outcomes": {"resolved": {"200": 1}, "error": {"500": 1}, "timeout": 1},
        },
        JobView,
    )  # fmt: skip
    return BenchRun(
        command="pm bench",
        started_at="2026-12-01T12:00:00+00:00",
        parameters={"devices": 3},
        gateway={"url": "http://gw", "version": "0.1.0"},
        wall_seconds=2.1,
        job=job,
        summary=summarize(samples),
        bucket_seconds=width,
        timeline=points,
        fleet=DeviceStats(received=3, answered=2, errors=1),
        samples=samples,
    )


def test_the_report_says_rate_latency_outcomes_and_errors() -> None:
    text = "\n".join(report_lines(_run()))
    assert "job 4 resolved: 3 tasks to 3 devices, 3 settled in 2.00 s" in text
    assert "throughput: 1.5 tasks/s" in text
    assert "latency over the 2 answered tasks (gateway clock):" in text
    assert "settle (job created → task settled): p50 200 ms, p99 400 ms, max 400 ms" in text
    assert "answer (request sent → answer): p50 50 ms, p99 100 ms, max 100 ms" in text
    assert "statuses: error 1, resolved 1, timeout 1" in text
    assert "resolved 200×1, error 500×1, timeout 1" in text
    assert "errors: 2 of 3 (66.7%)" in text


def test_without_matplotlib_the_json_is_written_and_one_line_says_how_to_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    lines = write_outputs(_run(), tmp_path)
    document = json.loads((tmp_path / "bench.json").read_text())
    assert [sample["settledAfter"] for sample in document["samples"]] == [0.2, 0.4, 2.0]
    assert document["summary"]["statuses"] == {"error": 1, "resolved": 1, "timeout": 1}
    assert document["timeline"][0]["tasksPerSecond"] == 0.0 and document["bucketSeconds"] == 0.1
    assert not (tmp_path / "bench.png").exists()
    assert lines[1] == (
        r"no bench.png: matplotlib is missing; pip install 'sanji-puppetmaster\[bench]' "
        "(matplotlib)"
    )


def test_with_matplotlib_the_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra is not installed")
    lines = write_outputs(_run(), tmp_path)
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert lines[1] == f"wrote {tmp_path / 'bench.png'}"


def test_ctrl_c_in_any_task_is_one_line_and_status_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # trio raises KeyboardInterrupt in whichever task runs; out of the fleet's nursery it
    # comes as a group, which must still be an interruption, not a traceback.
    def interrupted(*args: object) -> int:
        raise BaseExceptionGroup("nursery", [KeyboardInterrupt()])

    monkeypatch.setattr(trio, "run", interrupted)
    assert main(["bench", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"


def test_bench_json_never_shows_a_secret_given_on_the_command_line() -> None:
    argv = ["--token", "t0ken", "--broker-password=pw", "--device-password", "dp", "--tasks", "3"]
    assert redacted_command(argv) == (
        "pm --token REDACTED --broker-password=REDACTED --device-password REDACTED --tasks 3"
    )
