"""The ``pm`` command line as people run it: real subprocesses against a real gateway (embedded
broker, HTTP API) and simulated devices on their own MQTT connections.

Real processes and sockets, so real time: every test has a hang guard, and the gateway and
devices are fast (no latency) so each test takes about a second.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from rich.console import Console

from pm.cli import serve_command
from pm.cli._errors import EXIT_FAILED
from pm.cli._watch import watch_job
from tests.integration.brokers import free_port
from tests.integration.gateways import (
    GatewayFactory,
    SimulatorFactory,
    cli_environment,
    pm,
)
from tests.waiting import poll_until


async def test_submit_watch_resolves_and_prints_the_summary(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        simulator = await start_simulator(gateway, ["aa", "bb", "02:00:00:00:00:07"])
        fleet = tmp_path / "fleet.txt"
        fleet.write_text("# lab bench\nbb\n\n02-00-00-00-00-07  # the spare\n")
        result = await pm(
            "submit",
            "--url",
            gateway.http_url,
            "--method",
            "POST",
            "--resource",
            "/system/reboot",
            "--data",
            '{"delay": 5}',
            "--to",
            "aa",
            "--to-file",
            str(fleet),
            "--task-timeout",
            "10",
            "--watch",
        )
        assert result.returncode == 0, result
        job_id = result.stdout.splitlines()[0]
        assert job_id.isdigit(), result.stdout
        assert f"job {job_id} resolved" in result.stdout
        assert "3/3 done, 3 resolved, 0 errors" in result.stdout
        # Every device got the command, with the method, resource and data as given.
        for device in ("aa", "bb", "02:00:00:00:00:07"):
            [request] = simulator.received_by(device)
            assert request["method"] == "post"
            assert request["resource"] == "/system/reboot"
            assert request["data"] == {"delay": 5}


async def test_submit_watch_exits_1_when_a_device_answers_an_error(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        await start_simulator(gateway, ["aa", "bb"], error_rate=1.0, error_code=503)
        result = await pm(
            "submit", "--url", gateway.http_url, "--resource", "/x", "--to", "aa", "--watch"
        )
        assert result.returncode == 1, result
        assert "1/1 done, 0 resolved, 1 error" in result.stdout
        # The summary names the failed device and what it answered.
        assert re.search(r"→ aa: error 503 simulated error", result.stdout), result.stdout


async def test_submit_without_watch_prints_the_job_id_and_jobs_lists_it(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        await start_simulator(gateway, ["aa"])
        submitted = await pm("submit", "--url", gateway.http_url, "--resource", "/x", "--to", "aa")
        assert submitted.returncode == 0, submitted
        job_id = submitted.stdout.strip()
        assert job_id.isdigit(), submitted.stdout
        assert f"pm watch {job_id}" in submitted.stderr
        # `pm watch` on a job that may already be final: snapshot, summary, exit 0.
        watched = await pm("watch", job_id, "--url", gateway.http_url)
        assert watched.returncode == 0, watched
        assert "1/1 done, 1 resolved, 0 errors" in watched.stdout
        # $PM_URL is used when --url is absent.
        listed = await pm("jobs", env={"PM_URL": gateway.http_url})
        assert listed.returncode == 0, listed
        [row] = [line for line in listed.stdout.splitlines() if "resolved" in line]
        assert row.split()[:4] == [job_id, "resolved", "100%", "1/1"], listed.stdout
        assert "1 of 1 jobs" in listed.stdout
        empty = await pm("jobs", "--url", gateway.http_url, "--status", "timeout")
        assert empty.returncode == 0 and "no timeout jobs" in empty.stdout


async def test_watch_unknown_job_exits_2(start_gateway: GatewayFactory) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        result = await pm("watch", "4242", "--url", gateway.http_url)
        assert result.returncode == 2, result
        assert "no job 4242" in result.stderr
        assert "Traceback" not in result.stderr


async def test_watch_of_a_job_deleted_meanwhile_ends_with_its_cancelled_status(
    start_gateway: GatewayFactory,
) -> None:
    # The gateway has no special close code for a job that vanishes: DELETE cancels the job,
    # so its watchers get the final `cancelled` message and a normal close. `pm watch` (in
    # process, to know when it is connected) must report that, not a broken stream.
    with trio.fail_after(30):
        gateway = await start_gateway()
        assert gateway.engine is not None
        async with httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as client:
            created = await client.post(
                "/jobs",
                json={"batch": [{"method": "get", "resource": "/x", "__destination": "absent"}]},
            )
            job_id = created.json()["id"]
            output = io.StringIO()
            exit_status: list[int] = []

            async def watch() -> None:
                exit_status.append(await watch_job(gateway.http_url, job_id, Console(file=output)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                job = gateway.engine.get(job_id)
                assert job is not None
                await poll_until(lambda: job.feed.watchers == 1)
                deleted = await client.delete(f"/jobs/{job_id}")
                assert deleted.status_code == 200, deleted.text
        assert exit_status == [EXIT_FAILED]
        assert f"job {job_id} cancelled" in output.getvalue()


async def test_server_400_prints_its_message_and_exits_2(start_gateway: GatewayFactory) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        result = await pm("submit", "--url", gateway.http_url, "--resource", "/x", "--to", "bad/id")
        assert result.returncode == 2, result
        assert "400 Bad Request" in result.stderr
        assert "invalid device id 'bad/id'" in result.stderr
        assert "Traceback" not in result.stderr


async def test_client_errors_exit_2_with_a_clear_message() -> None:
    with trio.fail_after(30):
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        bad_json = await pm("submit", "--url", url, "--resource", "/x", "--to", "a", "--data", "{x")
        assert bad_json.returncode == 2, bad_json
        assert "--data is not valid JSON" in bad_json.stderr
        not_object = await pm(
            "submit", "--url", url, "--resource", "/x", "--to", "a", "--data", "[]"
        )
        assert not_object.returncode == 2 and "must be a JSON object" in not_object.stderr
        for args in (["jobs"], ["watch", "1"], ["submit", "--resource", "/x", "--to", "a"]):
            down = await pm(*args, "--url", url)
            assert down.returncode == 2, down
            assert f"cannot reach the gateway at {url}: is `pm serve` running?" in down.stderr
            assert "Traceback" not in down.stderr


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, output: bytes = b"") -> bytes:
    """Read a subprocess's stdout until ``marker`` appears; returns everything read so far."""
    while marker not in output:
        chunk = await stream.receive_some()
        assert chunk, f"the process closed stdout before printing {marker!r}: {output!r}"
        output += chunk
    return output


async def start_long_running(
    nursery: trio.Nursery, command: list[str], cwd: Path, **options: Any
) -> trio.Process:
    """Start a ``pm serve``/``pm simulate`` subprocess whose stdout the test reads."""
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            command,
            stdout=subprocess.PIPE,
            check=False,
            cwd=cwd,
            env=cli_environment(),
            **options,
        )
    )
    assert process.stdout is not None
    return process


async def read_to_exit(process: trio.Process, output: bytes) -> tuple[bytes, int]:
    """After a stop signal: the rest of stdout and the exit status, within 10 s."""
    assert process.stdout is not None
    with trio.fail_after(10):
        while chunk := await process.stdout.receive_some():
            output += chunk
        return output, await process.wait()


async def test_simulate_answers_jobs_reports_stats_and_stops_on_sigint(
    start_gateway: GatewayFactory, http: Any, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        command = [
            *(sys.executable, "-m", "pm.cli", "simulate", "--devices", "3"),
            *("--mqtt", f"{gateway.mqtt_host}:{gateway.mqtt_port}", "--stats-interval", "0.1"),
        ]
        async with trio.open_nursery() as nursery:
            process = await start_long_running(nursery, command, tmp_path)
            assert process.stdout is not None
            output = await read_until(process.stdout, b"stop with Ctrl-C")
            text = output.decode()
            assert "3 devices connected" in text
            # The ids printed are the ones a newcomer copies into `pm submit --to`.
            assert "02:00:00:00:00:00, 02:00:00:00:00:01, 02:00:00:00:00:02" in text
            response = await http(gateway).post(
                "/jobs",
                json={
                    "batch": [
                        {"method": "get", "resource": "/x", "__destination": "02:00:00:00:00:01"}
                    ]
                },
            )
            assert response.status_code == 200, response.text
            output = await read_until(process.stdout, b"answered 1 ", output)
            process.send_signal(signal.SIGINT)
            output, returncode = await read_to_exit(process, output)
        assert returncode == 0, output
        assert b"simulator stopped" in output


async def test_serve_prints_its_addresses_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    http_port, broker_port = free_port(), free_port()
    command = serve_command(("127.0.0.1", http_port), ("127.0.0.1", broker_port))
    with trio.fail_after(30), (tmp_path / "serve.log").open("wb") as log:
        async with trio.open_nursery() as nursery:
            process = await start_long_running(nursery, command, tmp_path, stderr=log)
            assert process.stdout is not None
            output = await read_until(process.stdout, b"stop with Ctrl-C")
            text = output.decode()
            assert f"HTTP  http://127.0.0.1:{http_port}" in text
            assert f"MQTT  127.0.0.1:{broker_port}  (embedded broker)" in text
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
                health = (await client.get("/healthz")).json()
            assert health["brokerConnected"] is True
            process.send_signal(signal.SIGTERM)
            output, returncode = await read_to_exit(process, output)
        assert returncode == 0, (output, (tmp_path / "serve.log").read_text())
        assert "gateway stopped" in output.decode()


async def test_serve_stops_cleanly_on_ctrl_c_in_its_terminal(tmp_path: Path) -> None:
    # Ctrl-C sends SIGINT to the terminal's whole foreground process group: the gateway and,
    # unless it has a group of its own, the broker child, which then died before the gateway
    # closed its MQTT client ("connection lost; reconnecting" on every Ctrl-C).
    http_port, broker_port = free_port(), free_port()
    command = serve_command(("127.0.0.1", http_port), ("127.0.0.1", broker_port), "info")
    with trio.fail_after(30), (tmp_path / "serve.log").open("wb") as log:
        async with trio.open_nursery() as nursery:
            # A process group of its own, as a terminal gives it.
            process = await start_long_running(
                nursery, command, tmp_path, stderr=log, start_new_session=True
            )
            assert process.stdout is not None
            output = await read_until(process.stdout, b"stop with Ctrl-C")
            os.killpg(process.pid, signal.SIGINT)
            output, returncode = await read_to_exit(process, output)
    logged = (tmp_path / "serve.log").read_text()
    assert returncode == 0, (output, logged)
    assert "gateway stopped" in output.decode()
    assert "received SIGINT" in logged and "connection to" not in logged, logged


async def test_serve_with_an_unknown_config_key_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "pm.toml"
    config.write_text("[http]\nport = 0\nbogus_key = 1\n")
    with trio.fail_after(30):
        result = await pm("serve", "--config", str(config))
        assert result.returncode == 2, result
        assert "bogus_key" in result.stderr
        assert "Traceback" not in result.stderr


async def test_token_from_the_environment_reaches_every_client_command(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    token = "cli-test-token-0123456789"
    with trio.fail_after(40):
        gateway = await start_gateway(api={"tokens": [token]})
        await start_simulator(gateway, ["tok"])
        refused = await pm("jobs", "--url", gateway.http_url)
        assert refused.returncode == 2 and "401" in refused.stderr
        environment = {"PM_TOKEN": token}
        submitted = await pm(
            "submit",
            "--url",
            gateway.http_url,
            "--resource",
            "/a",
            "--to",
            "tok",
            "--watch",
            env=environment,
        )
        assert submitted.returncode == 0, submitted.stderr
        listed = await pm("jobs", "--url", gateway.http_url, env=environment)
        assert listed.returncode == 0
        assert token not in submitted.stdout + submitted.stderr + listed.stdout + listed.stderr
        # Watching a job that already failed: no task message comes, so `pm watch` reads
        # the failures with GET /jobs/{id}, with the token too.
        await start_simulator(gateway, ["tok-err"], error_rate=1.0, error_code=503)
        failed = await pm(
            "submit", "--url", gateway.http_url, "--resource", "/b", "--to", "tok-err",
            env=environment,
        )  # fmt: skip
        job_id = failed.stdout.split()[0]
        job = gateway.engine.get(int(job_id))
        assert job is not None
        await job.ended.wait()
        watched = await pm("watch", job_id, "--url", gateway.http_url, env=environment)
        assert watched.returncode == 1
        assert "tok-err: error" in watched.stdout and "not shown" not in watched.stdout


async def test_serve_with_the_mqtt_port_in_use_says_so_in_one_line_and_exits_2() -> None:
    with trio.fail_after(30), socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = await pm("serve", "--http", "127.0.0.1:0", "--broker", f"127.0.0.1:{port}")
    assert result.returncode == 2, result
    # Not amqtt's traceback (18 lines) nor the child's log lines: one line saying why.
    assert result.stderr.splitlines() == [
        f"pm serve: embedded broker on 127.0.0.1:{port} could not start: cannot listen on "
        f"127.0.0.1:{port}: Address already in use (exit status 3: could not start); "
        "choose another port with --broker"
    ], result.stderr


async def test_serve_without_the_mosquitto_binary_says_so_in_one_line_and_exits_2() -> None:
    environment = {
        "PM_BROKER_ENGINE": "mosquitto",
        "PM_BROKER_MOSQUITTO_BINARY": "/nonexistent/mosquitto",
    }
    with trio.fail_after(30):
        result = await pm(
            "serve", "--http", "127.0.0.1:0", "--broker", "127.0.0.1:0", env=environment
        )
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert "mosquitto not found (/nonexistent/mosquitto)" in line and "apt-get" in line, line
