"""The embedded broker against a real amqtt child and a real paho client.

Rules: 127.0.0.1 and port 0 only; every test has an absolute ``trio.fail_after`` hang guard
with wide margins (a child is ready in ~0.15 s; guards allow 20 s).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

import pytest
import trio

from pm.broker import BrokerStartError, EmbeddedBroker, _supervisor, run_embedded_broker
from pm.config import BrokerConfig
from tests.integration.brokers import HANG_GUARD, process_exists, round_trip

ANY_PORT = BrokerConfig(host="127.0.0.1", port=0)


async def test_round_trip_then_kill_restarts_on_same_port() -> None:
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            broker: EmbeddedBroker = await nursery.start(run_embedded_broker, ANY_PORT)
            assert broker.running and broker.restarts == 0
            assert broker.port != 0
            first_port, first_pid = broker.port, broker.pid
            assert first_pid is not None

            assert await round_trip(broker, b"before") == b"before"

            broker.kill()
            await broker.wait_running(restarts=1)
            assert broker.restarts == 1
            assert broker.last_exit == -9  # SIGKILL
            assert broker.port == first_port
            assert broker.pid not in (None, first_pid)
            assert not process_exists(first_pid)
            assert await round_trip(broker, b"after") == b"after"

            nursery.cancel_scope.cancel()


async def test_failed_restart_is_retried_with_backoff() -> None:
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            broker: EmbeddedBroker = await nursery.start(run_embedded_broker, ANY_PORT)
            broker.kill()
            while broker.running:
                await broker.wait_changed()
            # The supervisor now sleeps 0.1 s: take its port so the first restart fails.
            with socket.socket() as squatter:
                squatter.bind((broker.host, broker.port))
                squatter.listen()
                while broker.last_exit != 3:  # the restart's "could not start" status
                    await broker.wait_changed()
                assert broker.restarts == 1 and not broker.running
            await broker.wait_running(restarts=2)
            assert await round_trip(broker, b"back") == b"back"
            nursery.cancel_scope.cancel()


async def test_cancel_stops_child_cleanly_and_leaves_no_process() -> None:
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            broker: EmbeddedBroker = await nursery.start(run_embedded_broker, ANY_PORT)
            pid = broker.pid
            assert pid is not None and process_exists(pid)
            nursery.cancel_scope.cancel()
        # SIGTERM was enough: amqtt shut down and the child exited 0, and it was reaped.
        assert broker.last_exit == 0
        assert not broker.running and broker.pid is None
        assert not process_exists(pid)


async def test_port_in_use_fails_the_first_start_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(HANG_GUARD):
            async with trio.open_nursery() as nursery:
                with pytest.raises(BrokerStartError) as caught:
                    await nursery.start(
                        run_embedded_broker, BrokerConfig(host="127.0.0.1", port=port)
                    )
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "exit status 3" in message
    assert os.strerror(errno.EADDRINUSE).lower() in message.lower()


async def test_silent_child_hits_start_timeout_and_is_killed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "silent.pid"
    # A child that starts but never prints the ready line; it records its pid for the check.
    silent = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    monkeypatch.setattr(
        _supervisor, "child_command", lambda *arguments, **options: [sys.executable, "-c", silent]
    )
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            with pytest.raises(BrokerStartError, match="no ready line within 0.5 s"):
                await nursery.start(
                    lambda task_status: run_embedded_broker(
                        ANY_PORT, start_timeout=0.5, task_status=task_status
                    )
                )
        pid = int(await trio.Path(pid_file).read_text())
    assert not process_exists(pid)
