"""bench.cpu_per_task's A/B runs each tree's own code: ``python -m`` puts the working directory
before ``PYTHONPATH`` on ``sys.path``, so a tree given by ``PYTHONPATH`` alone lost to the
driver's (the first A/B runs of 2026-12-01 compared a tree with itself)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from bench.cpu_per_task import CollectorClock, _in_tree


def test_a_process_started_in_a_tree_runs_that_trees_package(tmp_path: Path) -> None:
    # A package named like the driver's own (pm), which the working directory would shadow.
    (tmp_path / "pm").mkdir()
    (tmp_path / "pm" / "__init__.py").write_text("")
    (tmp_path / "pm" / "__main__.py").write_text("print(__file__)\n")
    before = (os.getcwd(), os.environ.get("PYTHONPATH"))
    with _in_tree(str(tmp_path)):
        ran = subprocess.run(
            [sys.executable, "-m", "pm"], capture_output=True, text=True, check=True, timeout=30
        )
    assert Path(ran.stdout.strip()).parent == tmp_path / "pm"
    assert (os.getcwd(), os.environ.get("PYTHONPATH")) == before


def test_the_collector_clock_counts_only_collections_during_measured_jobs() -> None:
    # --collector: what the cyclic collector took between enable() and disable() only (the
    # warm-up job's and start-up's collections are not the per-task path's).
    clock = CollectorClock()
    gc.callbacks.append(clock.on_collection)
    try:
        gc.collect(0)  # not measured
        clock.enable()
        gc.collect(0)
        gc.collect(1)
        clock.disable()
        gc.collect(0)  # not measured
    finally:
        gc.callbacks.remove(clock.on_collection)
    assert dict(clock.collections) == {0: 1, 1: 1}
    assert 0 <= clock.collector_cpu <= clock.thread_cpu
