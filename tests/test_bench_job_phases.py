"""bench.job_phases' bookkeeping (pure): the job's phases and CPU are medians over its rounds,
each requester shape gets its own row, and job / ceiling is taken against each round's best
shape."""

from __future__ import annotations

import argparse

import pytest

from bench.job_phases import PHASES, PROCESSES, build_report


def _job(finish_ms: float, gateway_ms: float) -> dict[str, object]:
    phases = {phase: float(n) for n, phase in enumerate(PHASES)} | {"finishAt": finish_ms}
    cpu = {name: 10.0 for name in PROCESSES} | {"gateway": gateway_ms}
    return {"phases": phases, "cpu_ms": cpu, "wall_s": finish_ms / 1000}


def _requester(round_number: int, shape: str, rate: float) -> dict[str, object]:
    return {
        "round": round_number,
        "shape": shape,
        "rate": rate,
        "cpu_ms": {name: 1.0 for name in PROCESSES},
    }


def test_job_and_each_shape_in_their_rows_and_the_ratio_per_round() -> None:
    args = argparse.Namespace(tasks=1000, rounds=3, connections=100, scenario="t")
    raw = {
        # 1,000 tasks in 0.25 s, 0.2 s, 0.5 s: 4,000, 5,000 and 2,000 tasks/s.
        "jobs": [_job(250.0, 150.0), _job(200.0, 130.0), _job(500.0, 170.0)],
        "requesters": [
            _requester(0, "fast-w0", 5000.0),
            _requester(0, "fast-w100", 4000.0),
            _requester(1, "fast-w0", 4000.0),
            _requester(1, "fast-w100", 5000.0),
            _requester(2, "fast-w0", 4000.0),
            _requester(2, "fast-w100", 2500.0),
        ],
    }
    report = build_report(args, ["--rounds", "3"], raw)
    job, w0, w100 = report.rows
    assert job[:3] == ["job (POST -> finishAt)", 4000.0, 250.0]
    assert job[3 + PHASES.index("finishAt")] == 250.0
    assert job[3 + PHASES.index("created")] == PHASES.index("created")
    assert job[3 + len(PHASES) :] == [150.0, 10.0, 10.0, 10.0]
    assert w0[:3] == ["requester fast-w0 (first write -> last answer)", 4000.0, 250.0]
    assert w100[1] == 4000.0 and w100[3 : 3 + len(PHASES)] == [""] * len(PHASES)
    # Rounds' ceilings 5,000, 5,000, 4,000: ratios 0.8, 1.0, 0.5; their median 0.8.
    assert report.notes[0].startswith(
        "job / ceiling (each round's best requester shape), median of 3 rounds: 0.800;"
    )
    assert report.command == "python -m bench.job_phases --rounds 3"


def test_a_round_without_its_requesters_is_a_bug_not_a_figure() -> None:
    args = argparse.Namespace(tasks=1000, rounds=2, connections=0, scenario="t")
    raw = {
        "jobs": [_job(250.0, 150.0), _job(200.0, 130.0)],
        "requesters": [_requester(0, "fast-w0", 5000.0)],
    }
    with pytest.raises(ValueError):
        build_report(args, [], raw)
