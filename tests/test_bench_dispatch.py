"""bench.dispatch's bookkeeping (pure): each round's ceiling is its fastest requester, a job
faster than its round's ceiling is called out, a row that failed says so and misses its
target."""

from __future__ import annotations

from bench._report import Report
from bench.dispatch import Setup, add_failed_row, add_row, best_fast_shape, with_ceilings


def _report() -> Report:
    return Report(scenario="t", title="t", command="t", parameters={}, columns=[])


def _figures() -> dict[str, list[float]]:
    measured = {
        "raw": [1000.0, 3000.0, 1000.0],
        "fast": [2000.0, 1000.0, 1500.0],
        "job": [1800.0, 2400.0, 1600.0],
        "gateway_cpu_ms_per_task": [0.2, 0.2, 0.2],
        "fast_cpu_ms_per_rt": [0.05, 0.05, 0.05],
    }
    return with_ceilings(measured, ["raw", "fast"])


def test_each_rounds_ceiling_is_its_fastest_requester() -> None:
    figures = _figures()
    assert figures["ceiling"] == [2000.0, 3000.0, 1500.0]
    assert figures["ratio_ceiling"] == [0.9, 0.8, 1600.0 / 1500.0]
    assert figures["ratio"] == [1.8, 0.8, 1.6]


def test_a_job_faster_than_its_ceiling_is_called_out() -> None:
    report, beaten = _report(), []
    add_row(report, Setup("amqtt", "file", 0, 1000), _figures(), False, {}, beaten)
    assert beaten == [
        "**amqtt/file/1 per device/1000, round 3: the job (1,600 tasks/s) beat the ceiling "
        "(1,500 rt/s): that ceiling is wrong.**"
    ]
    [row] = report.rows
    assert row[:4] == ["amqtt", "file", "1 per device", 1000]
    assert row[4:10] == [1000.0, 1500.0, 1800.0, 1.6, 0.9, 0.2]
    [target] = report.targets
    assert target["target"] == "(2)/ceiling amqtt file, fleet 1 per device, N=1000"
    assert (target["figure"], target["met"]) == (0.9, True)


def test_mosquitto_rows_of_10k_are_held_to_8000_tasks_per_second() -> None:
    report, beaten = _report(), []
    add_row(report, Setup("mosquitto", "memory", 100, 10000), _figures(), False, {}, beaten)
    [target] = report.targets
    assert target["goal"] == ">= 8000 tasks/s" and target["met"] is False


def test_a_failed_row_says_so_and_misses_its_target() -> None:
    report = _report()
    setup = Setup("amqtt", "file", 0, 10000)
    add_failed_row(report, setup, False, RuntimeError("job 3: 9809 of 10000 tasks finished"))
    [row] = report.rows
    assert row[4:] == ["failed"] * 7
    assert report.notes == [
        "**amqtt/file/1 per device/10000 failed: RuntimeError: job 3: 9809 of 10000 tasks "
        "finished**"
    ]
    assert report.targets[0]["met"] is False


def test_the_fastest_requester_of_a_round_is_its_best_shape() -> None:
    # The broker is the bound, and how many requests are in flight changes what a round trip
    # costs it: no single shape is the fastest every round.
    measured = {
        "fast-w0": [2000.0, 1000.0, 1500.0],
        "fast-w100": [1900.0, 2500.0, 1400.0],
        "fast-w0_cpu_ms_per_rt": [0.1, 0.2, 0.3],
        "fast-w100_cpu_ms_per_rt": [0.4, 0.5, 0.6],
        "raw": [1000.0, 3000.0, 1000.0],
        "job": [1800.0, 2400.0, 1600.0],
        "gateway_cpu_ms_per_task": [0.2, 0.2, 0.2],
    }
    figures = best_fast_shape(measured, ["fast-w0", "fast-w100"])
    assert figures["fast"] == [2000.0, 2500.0, 1500.0]
    assert figures["fast_cpu_ms_per_rt"] == [0.1, 0.5, 0.3]
    assert figures["fast_window"] == [0.0, 100.0, 0.0]
    figures = with_ceilings(figures, ["raw", "fast"])
    assert figures["ceiling"] == [2000.0, 3000.0, 1500.0]
    report: Report = _report()
    add_row(report, Setup("amqtt", "file", 0, 1000), figures, False, {}, [])
    assert report.notes[0] == (
        "amqtt/file/1 per device/1000: (1c) by window (0: all at once), median rt/s: "
        "0: 1,500, 100: 1,900; the best each round: 0, 100, 0."
    )
