"""CPU per task on the default single-gateway path through mosquitto, by process, and where it
goes (issue 15 item 3: >= 8,000 tasks/s needs the gateway and the fleet cheaper per task).

Two modes:

- **processes** (default): one gateway process (``pm serve``, embedded mosquitto or
  ``--broker amqtt``, the default file store) and one fleet process (``pm simulate``, devices
  answering at once over ``--connections`` connections), as ``bench.dispatch`` runs them;
  after a warm-up job, ``--jobs`` jobs of ``--tasks`` tasks each. Per job: CPU ms per task of
  the gateway, of its broker and of the fleet (``/proc``, 10 ms ticks), and the job's tasks/s. With
  ``--trees A B`` every round runs each tree's gateway and fleet in turn (``PYTHONPATH``),
  alternating which goes first: the A/B of a change on a machine others are loading, where
  CPU per task moves far less than the rates do.
- **--profile gateway** or **--profile fleet**: that side runs in this process under
  cProfile (the other as a process), enabled for the measured jobs only: Python calls per
  task (exact, however loaded the machine) and the functions that make them. The gateway's
  jobs are submitted with ``engine.submit`` (no HTTP); the fleet's are posted from a thread
  cProfile does not see. cProfile traces the trio thread only: the store's commits in their
  worker thread are not counted.
- **--collector gateway** or **--collector fleet**: that side in this process as above, without
  cProfile: its trio thread's CPU per task and what the cyclic garbage collector took of it
  (``gc.callbacks``), with ``pm serve``'s collector settings or ``--young N``.

Usage::

    python -m bench.cpu_per_task [--tasks 10000] [--jobs 3] [--rounds 3] [--connections 100]
        [--store file|memory] [--broker mosquitto|amqtt] [--trees TREE_A TREE_B] [--py-spy FILE]
        [--gil] [--profile gateway|fleet] [--top 25] [--save FILE]
        [--collector gateway|fleet [--young N]]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import shlex
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec
import trio

from bench._load import HANG_GUARD, http_client, job_body
from bench._processes import (
    Service,
    children_of,
    cpu_seconds,
    fleet_ids,
    start_fleet,
    start_gateway,
    workdir,
)
from bench.dispatch import _run_job
from pm.cli._runtime import tune_garbage_collector
from pm.config import Config
from pm.gateway import run_gateway
from pm.schemas import JobRequest
from pm.simulator import SimulatorSettings, run_simulator

FIGURES = ("gateway", "broker", "fleet")


# -- processes: CPU per task by process --------------------------------------------------


def _store_env(store_path: Path | None) -> dict[str, str]:
    return {} if store_path is None else {"PM_STORE_PATH": str(store_path)}


@contextmanager
def _in_tree(tree: str | None) -> Iterator[None]:
    """Processes started meanwhile run ``tree``'s code: ``python -m`` puts its working
    directory first on ``sys.path`` (before ``PYTHONPATH``), so both are set."""
    if not tree:
        yield
        return
    saved_directory, saved_path = os.getcwd(), os.environ.get("PYTHONPATH")
    os.chdir(tree)
    os.environ["PYTHONPATH"] = tree
    try:
        yield
    finally:
        os.chdir(saved_directory)
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path


def run_tree(tree: str | None, arguments: argparse.Namespace) -> list[dict[str, float]]:
    """Gateway and fleet from ``tree`` (``None``: this one); one dict of figures per job."""
    with workdir() as directory:
        store = directory / "puppetmaster.db" if arguments.store == "file" else None
        env = _store_env(store) | {"PM_MQTT_ANSWER_PROBE_TIMEOUT": "300"}
        services: list[Service] = []
        try:
            with _in_tree(tree):
                gateway = start_gateway(directory, engine=arguments.broker, extra_env=env)
                services.append(gateway)
                port = int(gateway.info["mqtt_port"])
                services.append(
                    start_fleet(directory, port, arguments.tasks, arguments.connections or None)
                )
            return trio.run(_measure_jobs, gateway, services[-1], arguments)
        finally:
            for service in reversed(services):
                service.stop()


async def _measure_jobs(
    gateway: Service, fleet: Service, arguments: argparse.Namespace
) -> list[dict[str, float]]:
    devices = fleet_ids(arguments.tasks)
    # The embedded broker: amqtt's process, or a Python wrapper and its mosquitto child.
    pids = {"gateway": [gateway.pid], "broker": _descendants(gateway.pid), "fleet": [fleet.pid]}
    figures = []
    async with http_client(str(gateway.info["url"])) as client:
        await _run_job(client, devices)  # warm-up: device actors, routes, code paths
        spy = None
        if arguments.py_spy:
            spy = _start_py_spy(gateway.pid, arguments.py_spy, gil=arguments.gil)
        for _ in range(arguments.jobs):
            before = {name: _cpu(group) for name, group in pids.items()}
            with trio.fail_after(HANG_GUARD):
                run = await _run_job(client, devices)
            if run.status != "resolved" or run.errors:
                raise RuntimeError(f"job ended {run.status}, {run.errors} errors")
            row = {
                name: (_cpu(group) - before[name]) * 1000 / run.tasks
                for name, group in pids.items()
            }
            row["tasks/s"] = run.tasks_per_second
            figures.append(row)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            await trio.to_thread.run_sync(spy.wait)
    return figures


def _start_py_spy(pid: int, output: str, *, gil: bool) -> subprocess.Popen[bytes]:
    """py-spy sampling the gateway's Python stacks (all threads, 250 Hz; with ``gil`` only the
    thread holding the GIL: the trio thread's share) until SIGINT."""
    executable = Path(sys.executable).with_name("py-spy")
    command = [str(executable), "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    command += ["--threads", "--output", output] + (["--gil"] if gil else [])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _descendants(pid: int) -> list[int]:
    children = children_of(pid)
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def processes(arguments: argparse.Namespace) -> None:
    trees: list[str | None] = arguments.trees or [None]
    results: dict[str, list[dict[str, float]]] = {str(tree): [] for tree in trees}
    print(f"{'round':>5} {'tree':<28} {'gw ms/t':>8} {'mqtt ms/t':>9} {'fleet ms/t':>10} t/s")
    for round_number in range(arguments.rounds):
        shift = round_number % len(trees)
        for tree in trees[shift:] + trees[:shift]:
            for row in run_tree(tree, arguments):
                results[str(tree)].append(row)
                print(
                    f"{round_number + 1:>5} {str(tree)[-28:]:<28} {row['gateway']:>8.4f}"
                    f" {row['broker']:>9.4f} {row['fleet']:>10.4f} {row['tasks/s']:,.0f}",
                    flush=True,
                )
    print("medians:")
    for tree, rows in results.items():
        medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(
            f"      {tree[-28:]:<28} {medians['gateway']:>8.4f} {medians['broker']:>9.4f}"
            f" {medians['fleet']:>10.4f} {medians['tasks/s']:,.0f}  ({len(rows)} jobs)"
        )


# -- profile: Python calls per task of one side -------------------------------------------


def gateway_config(store_path: str, engine: str = "mosquitto") -> Config:
    return msgspec.convert(
        {
            "http": {"host": "127.0.0.1", "port": 0},
            "broker": {"host": "127.0.0.1", "port": 0, "engine": engine},
            "mqtt": {"client_id": f"pm-bench-{uuid.uuid4().hex[:8]}"},
            "store": {"path": store_path},
        },
        Config,
    )


class Profiler(Protocol):
    """What the in-process modes switch on for the measured jobs only."""

    def enable(self) -> None: ...
    def disable(self) -> None: ...


async def profile_gateway(arguments: argparse.Namespace, profiler: Profiler) -> int:
    """The gateway here, the fleet a process; returns the tasks profiled."""
    devices = fleet_ids(arguments.tasks)
    body = msgspec.json.decode(job_body(devices), type=JobRequest)
    with workdir() as directory:
        store = str(directory / "pm.db") if arguments.store == "file" else ":memory:"
        async with trio.open_nursery() as nursery:
            gateway = await nursery.start(run_gateway, gateway_config(store, arguments.broker))
            engine = gateway.engine
            fleet = await trio.to_thread.run_sync(
                lambda: start_fleet(
                    directory, gateway.mqtt_port, arguments.tasks, arguments.connections or None
                )
            )
            try:
                _tune_garbage_collector(arguments)  # as `pm serve` does

                async def one_job() -> None:
                    job = await engine.submit(body)
                    await job.ended.wait()
                    if job.record.status != "resolved":
                        raise RuntimeError(f"job ended {job.record.status}")

                await one_job()  # warm-up
                await _profiled(profiler, one_job, arguments.jobs)
            finally:
                fleet.stop()
            nursery.cancel_scope.cancel()
    return arguments.jobs * arguments.tasks


async def profile_fleet(arguments: argparse.Namespace, profiler: Profiler) -> int:
    """The fleet here, the gateway a process; returns the tasks profiled."""
    devices = fleet_ids(arguments.tasks)
    body = job_body(devices)
    with workdir() as directory:
        store = directory / "puppetmaster.db" if arguments.store == "file" else None
        gateway = start_gateway(directory, engine=arguments.broker, extra_env=_store_env(store))
        try:
            settings = SimulatorSettings(
                host="127.0.0.1",
                port=int(gateway.info["mqtt_port"]),
                devices=devices,
                connections=arguments.connections or None,
            )
            async with trio.open_nursery() as nursery:
                simulator = await nursery.start(run_simulator, settings)
                _tune_garbage_collector(arguments)  # as `pm simulate` does
                url = str(gateway.info["url"])

                async def one_job() -> None:
                    answered = simulator.stats.answered + arguments.tasks
                    # From a thread: cProfile sees only this one.
                    await trio.to_thread.run_sync(_post_job, url, body)
                    while simulator.stats.answered < answered:  # noqa: ASYNC110 - a counter
                        await trio.sleep(0.01)

                await one_job()  # warm-up
                await _profiled(profiler, one_job, arguments.jobs)
                nursery.cancel_scope.cancel()
        finally:
            gateway.stop()
    return arguments.jobs * arguments.tasks


def _post_job(url: str, body: bytes) -> None:
    response = httpx.post(
        f"{url}/jobs", content=body, headers={"content-type": "application/json"}, timeout=120
    )
    response.raise_for_status()


async def _profiled(profiler: Profiler, one_job: Callable[[], Awaitable[None]], jobs: int) -> None:
    with trio.fail_after(HANG_GUARD):
        for _ in range(jobs):
            before = time.process_time()
            profiler.enable()
            await one_job()
            profiler.disable()
            print(f"job: {time.process_time() - before:.2f} s of this process's CPU under cProfile")


def _tune_garbage_collector(arguments: argparse.Namespace) -> None:
    tune_garbage_collector()
    if arguments.young:
        # Another young-generation threshold, to compare (--collector).
        gc.set_threshold(arguments.young, *gc.get_threshold()[1:])


class CollectorClock:
    """--collector: the trio thread's CPU and the garbage collector's, during measured jobs
    only (``gc.callbacks``; the collector runs on whichever thread allocates, holding the
    GIL, so its CPU is that thread's ``thread_time``)."""

    def __init__(self) -> None:
        self.measuring = False
        self.thread_cpu = 0.0
        self.collector_cpu = 0.0
        self.collections: Counter[int] = Counter()
        self._started = 0.0
        self._collection_started = 0.0

    def enable(self) -> None:
        self.measuring = True
        self._started = time.thread_time()

    def disable(self) -> None:
        self.measuring = False
        self.thread_cpu += time.thread_time() - self._started

    def on_collection(self, phase: str, info: dict[str, int]) -> None:
        if not self.measuring:
            return
        if phase == "start":
            self._collection_started = time.thread_time()
        else:
            self.collector_cpu += time.thread_time() - self._collection_started
            self.collections[info["generation"]] += 1


def collector(arguments: argparse.Namespace) -> None:
    clock = CollectorClock()
    gc.callbacks.append(clock.on_collection)
    side = {"gateway": profile_gateway, "fleet": profile_fleet}[arguments.collector]
    tasks = trio.run(side, arguments, clock)
    gc.callbacks.remove(clock.on_collection)
    print(f"{arguments.collector}, young generation threshold {gc.get_threshold()[0]:,}:")
    print(f"  trio thread CPU {clock.thread_cpu * 1e6 / tasks:.1f} us a task")
    print(f"  collector CPU {clock.collector_cpu * 1e6 / tasks:.1f} us a task", end="")
    print(f" (collections by generation: {dict(sorted(clock.collections.items()))})")


def profile(arguments: argparse.Namespace) -> None:
    profiler = cProfile.Profile()
    side = {"gateway": profile_gateway, "fleet": profile_fleet}[arguments.profile]
    tasks = trio.run(side, arguments, profiler)
    stats = pstats.Stats(profiler)
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    calls = sum(entry[1] for entry in entries.values())
    print(f"{arguments.profile}: {calls:,} Python calls for {tasks:,} tasks:")
    print(f"  {calls / tasks:.1f} calls per task")
    print(f"  by own calls per task (top {arguments.top}):")
    ranked = sorted(entries.items(), key=lambda item: item[1][1], reverse=True)
    for (path, line, name), entry in ranked[: arguments.top]:
        where = "/".join(Path(path).parts[-2:]) if path != "~" else "builtin"
        print(f"  {entry[1] / tasks:7.2f}  {where}:{line}({name})")
    if arguments.save:
        stats.dump_stats(arguments.save)
        print(f"  saved to {arguments.save} (python -m pstats {arguments.save})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000, help="= devices; one task each")
    parser.add_argument("--jobs", type=int, default=3, help="measured jobs per gateway")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=100, help="0: one per device")
    parser.add_argument("--store", choices=["file", "memory"], default="file")
    parser.add_argument("--broker", choices=["mosquitto", "amqtt"], default="mosquitto")
    parser.add_argument("--trees", nargs="+", help="source trees to alternate (PYTHONPATH)")
    parser.add_argument("--profile", choices=["gateway", "fleet"])
    parser.add_argument(
        "--collector", choices=["gateway", "fleet"], help="that side's CPU and its GC's"
    )
    parser.add_argument("--young", type=int, help="--collector: young-generation threshold")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save", help="profile: write the pstats file here")
    parser.add_argument("--py-spy", help="processes: py-spy the gateway's measured jobs here")
    parser.add_argument("--gil", action="store_true", help="--py-spy: only the GIL's holder")
    arguments = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    print("command: python -m bench.cpu_per_task", shlex.join(given))
    if arguments.profile:
        profile(arguments)
    elif arguments.collector:
        collector(arguments)
    else:
        processes(arguments)


if __name__ == "__main__":
    main()
