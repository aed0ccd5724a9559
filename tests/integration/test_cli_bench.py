"""``pm bench`` against a real gateway (embedded amqtt broker, HTTP API, WebSocket) on free
ports: the function behind the command, in this process, with its fleet on real MQTT
connections; and its one-line errors, one of them through the real command in a subprocess.

Real sockets, so real time: every test has a hang guard; the fleet answers within
milliseconds. Each test takes 1-2 s on a quiet machine, most of it starting the gateway;
over 2 s: the run of 50 devices and 200 tasks (the size that shows several commands per
device and a spread of errors: ~3 s), and the fleet that never comes online (it waits out
its 1 s timeout).
"""

from __future__ import annotations

import io
import json
import re
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from rich.console import Console

from pm.cli._bench import run_bench
from pm.cli._errors import CliError
from pm.cli._main import build_parser
from pm.mqtt import open_mqtt_client
from pm.presence import Presence
from tests.integration.brokers import MosquittoBroker, free_port
from tests.integration.gateways import GatewayFactory, pm
from tests.waiting import poll_until

TOKEN = "bench-test-token-0123456789"


async def _bench(*argv: str, output: io.StringIO | None = None) -> tuple[int, str]:
    """Run ``pm bench ARGV`` in this trio run; its exit status and what it printed."""
    output = io.StringIO() if output is None else output
    console = Console(file=output, soft_wrap=True, highlight=False, width=200)
    status = await run_bench(build_parser().parse_args(["bench", *argv]), console)
    return status, output.getvalue()


def _count(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found is not None, (pattern, text)
    return int(found.group(1))


async def test_bench_prints_what_the_job_did_and_writes_every_sample(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        gateway = await start_gateway()
        status, printed = await _bench(
            "--url", gateway.http_url, "--broker", f"mqtt://127.0.0.1:{gateway.mqtt_port}",
            "--devices", "50", "--tasks", "200", "--error-rate", "0.2", "--latency", "1..5ms",
            "--out", str(tmp_path),
        )  # fmt: skip
        assert status == 0, printed
        job_id = _count(r"job (\d+) resolved: 200 tasks to 50 devices, 200 settled", printed)
        async with httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as client:
            job = (await client.get(f"/jobs/{job_id}")).json()
    # The printed counts are the job's own, read back from the API.
    assert job["status"] == "resolved" and job["totalCount"] == 200
    errors = job["errorCount"]
    assert 0 < errors < 200  # ~20% of the answers are simulated errors
    assert _count(r"statuses: error (\d+), resolved \d+", printed) == errors
    assert _count(r"statuses: error \d+, resolved (\d+)", printed) == job["finishCount"]
    assert f"resolved 200×{job['finishCount']}, error 500×{errors}" in printed
    assert f"errors: {errors} of 200" in printed
    assert "latency over the 200 answered tasks (gateway clock):" in printed
    assert "settle (job created → task settled): p50 " in printed
    assert "answer (request sent → answer): p50 " in printed
    # More tasks than devices: four commands to each device, every one answered once.
    assert "fleet: received 200, answered 200" in printed and "overlaps 0" in printed
    document = json.loads((tmp_path / "bench.json").read_text())
    samples = document["samples"]
    assert len(samples) == 200 and {sample["device"] for sample in samples} == {
        f"02:be:00:00:00:{n:02x}" for n in range(50)
    }
    assert sum(sample["status"] == "error" for sample in samples) == errors
    assert all(sample["code"] == 500 for sample in samples if sample["status"] == "error")
    assert all(0 <= sample["sentAfter"] <= sample["settledAfter"] for sample in samples)
    assert document["job"]["id"] == job_id and document["gateway"]["version"]
    assert document["parameters"]["latency"] == [0.001, 0.005]
    plotted = sum(point["tasksPerSecond"] for point in document["timeline"])
    assert plotted * document["bucketSeconds"] == pytest.approx(200)


async def test_a_run_stopped_while_its_job_runs_deletes_the_job(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    # Its fleet leaves with it: the job's tasks in flight would hold those devices until
    # they time out (an hour by default), and the next run's tasks would queue behind them.
    with trio.fail_after(30):
        gateway = await start_gateway()
        output = io.StringIO()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    _bench,
                    "--url", gateway.http_url, "--broker", f"mqtt://127.0.0.1:{gateway.mqtt_port}",
                    "--devices", "5", "--latency", "60", "--out", str(tmp_path),
                    output=output,
                )
            )  # fmt: skip
            # The first progress line: the job is posted and followed (what Ctrl-C stops).
            await poll_until(lambda: "job 1 dispatching" in output.getvalue())
            nursery.cancel_scope.cancel()
        assert "deleted job 1" in output.getvalue()
        async with httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as client:
            assert (await client.get("/jobs/1")).status_code == 404


async def test_through_an_external_broker_the_fleet_leaves_offline(
    start_gateway: GatewayFactory, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    # mosquitto keeps the devices' retained "online" births: unless the fleet says it goes
    # offline, the gateway shows the devices online after the run, and forever.
    with trio.fail_after(30):
        gateway = await start_gateway(
            broker={"embedded": False}, mqtt={"host": mosquitto.host, "port": mosquitto.port}
        )
        status, printed = await _bench(
            "--url", gateway.http_url, "--broker", f"mqtt://{mosquitto.host}:{mosquitto.port}",
            "--devices", "6", "--connections", "2", "--tasks", "12", "--out", str(tmp_path),
        )  # fmt: skip
        assert status == 0 and "12 settled" in printed, printed
        engine = gateway.engine
        assert engine is not None
        devices = [f"02:be:00:00:00:{n:02x}" for n in range(6)]
        await poll_until(
            lambda: all(engine.presence.presence(d) == Presence.OFFLINE for d in devices)
        )
        # Retained: whoever subscribes later (a restarted gateway) learns it too.
        retained: list[bytes] = []
        async with open_mqtt_client(
            mosquitto.host,
            mosquitto.port,
            client_id="late-subscriber",
            on_message=lambda topic, payload: retained.append(payload),
        ) as late:
            await late.subscribe("/remote/+/status", qos=1)
            await poll_until(lambda: len(retained) == len(devices))
        assert set(retained) == {b"offline"}


async def test_over_https_and_mqtts_with_a_token(
    start_gateway: GatewayFactory, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    certfile, keyfile = certificate
    tls = {"certfile": str(certfile), "keyfile": str(keyfile)}
    with trio.fail_after(30):
        gateway = await start_gateway(http=tls, broker=tls, api={"tokens": [TOKEN]})
        assert gateway.http_url.startswith("https://")
        run = [
            "--url", gateway.http_url, "--ca-file", str(certfile),
            "--broker", f"mqtts://127.0.0.1:{gateway.mqtt_port}", "--broker-ca", str(certfile),
            "--devices", "3", "--tasks", "6", "--out", str(tmp_path),
        ]  # fmt: skip
        # No token, or a wrong one: refused before any device connects.
        for token in ([], ["--token", "wrong-token-0123456789"]):
            with pytest.raises(CliError, match=r"\(401 Unauthorized\): missing or invalid bearer"):
                await _bench(*run, *token)
        status, printed = await _bench(*run, "--token", TOKEN)
        assert status == 0 and "6 settled" in printed, printed


async def test_an_unreachable_broker_is_one_line(start_gateway: GatewayFactory) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        with pytest.raises(CliError) as refused:
            await _bench("--url", gateway.http_url, "--broker", f"mqtt://127.0.0.1:{free_port()}")
        assert refused.value.message.startswith("cannot reach the MQTT broker at mqtt://127.0.0.1")
        assert "Connection refused" in refused.value.message


async def test_an_unreadable_broker_ca_is_one_line(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        gateway = await start_gateway()
        missing = tmp_path / "missing.pem"
        with pytest.raises(CliError, match=f"cannot use --broker-ca {missing}: "):
            await _bench(
                "--url", gateway.http_url, "--broker", f"mqtt://127.0.0.1:{gateway.mqtt_port}",
                "--broker-ca", str(missing),
            )  # fmt: skip


async def test_a_fleet_the_gateway_never_sees_online_times_out_with_the_count(
    start_gateway: GatewayFactory, mosquitto: MosquittoBroker
) -> None:
    # The devices connect to a broker the gateway does not use: it never sees them.
    with trio.fail_after(30):
        gateway = await start_gateway()
        with pytest.raises(CliError) as refused:
            await _bench(
                "--url", gateway.http_url, "--broker", f"mqtt://127.0.0.1:{mosquitto.port}",
                "--devices", "3", "--online-timeout", "1",
            )  # fmt: skip
        assert refused.value.message == (
            "the fleet did not come online within 1 s: 0 of 3 devices online at the gateway "
            "(is --broker the broker the gateway uses?)"
        )


async def test_an_unreachable_gateway_exits_2_with_one_line_and_no_traceback() -> None:
    with trio.fail_after(30):
        result = await pm("bench", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert line.startswith("pm bench: cannot reach the gateway at http://127.0.0.1:"), line
