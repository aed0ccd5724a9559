"""The embedded amqtt broker keeps MQTT 3.1.1's promises: a client id taken over closes the old
connection (3.1.4-2), a silent connection is closed after 1.5 keepalive periods (3.1.2.10), and
the gateway's own session cannot be taken over or stripped by any other client: on amqtt its
id is reserved, on the embedded mosquitto (which cannot reserve one:
test_mosquitto_client_ids.py) the gateway connects under an id nobody else knows.

Real broker child, raw MQTT over trio sockets (so that nothing reconnects behind the test's
back) or paho; 127.0.0.1 and port 0 only; every test has a hang guard with wide margins.
"""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from pm.broker import BrokerAuth, EmbeddedBroker, run_embedded_broker
from pm.config import BrokerConfig
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.integration.raw_client import PINGREQ, PINGRESP, RawClient
from tests.job_api import entry, post_job, wait_final

ANY_PORT = BrokerConfig(host="127.0.0.1", port=0)
HANG_GUARD = 20.0
NOT_AUTHORIZED = 5  # CONNACK return code


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "persistent"])
async def test_a_second_connection_with_the_same_client_id_closes_the_first(clean: bool) -> None:
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(run_embedded_broker, ANY_PORT)
            first = await RawClient.connect(broker, "device-7", clean=clean)
            assert await first.connack() == 0
            second = await RawClient.connect(broker, "device-7", clean=clean)
            assert await second.connack() == 0
            # MQTT 3.1.1 section 3.1.4-2: the server disconnects the existing client.
            assert await first.closed_by_broker()
            await second.ping()  # the newcomer is served
            for client in (first, second):
                await client.aclose()
            nursery.cancel_scope.cancel()


async def test_a_silent_connection_is_closed_after_one_and_a_half_keepalives() -> None:
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(run_embedded_broker, ANY_PORT)
            silent = await RawClient.connect(broker, "silent", keepalive=1)
            pinging = await RawClient.connect(broker, "pinging", keepalive=1)
            no_keepalive = await RawClient.connect(broker, "no-keepalive", keepalive=0)
            for client in (silent, pinging, no_keepalive):
                assert await client.connack() == 0
            started = trio.current_time()
            silent_closed = trio.Event()

            async def watch_silent() -> None:
                await silent.closed_by_broker()
                silent_closed.set()

            nursery.start_soon(watch_silent)
            # A client that pings every half keepalive stays connected well past the limit.
            while not silent_closed.is_set() or trio.current_time() - started < 3.0:
                await pinging.ping()
                with trio.move_on_after(0.5):
                    await silent_closed.wait()
            elapsed = trio.current_time() - started
            # Nominally 1.5 s; never before one keepalive, and well before the hang guard.
            assert elapsed >= 1.0
            await pinging.ping()
            await no_keepalive.ping()  # keepalive 0: no limit at all
            for client in (silent, pinging, no_keepalive):
                await client.aclose()
            nursery.cancel_scope.cancel()


async def test_the_gateways_client_id_is_reserved_for_its_credentials_without_broker_auth() -> None:
    auth = BrokerAuth(
        gateway_username="$puppetmaster", gateway_password="per-run", gateway_client_id="gw"
    )
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(
                lambda task_status: run_embedded_broker(
                    ANY_PORT, auth=auth, task_status=task_status
                )
            )
            gateway = await RawClient.connect(
                broker, "gw", username="$puppetmaster", password="per-run"
            )
            assert await gateway.connack() == 0
            for options in (
                {},
                {"clean": False},
                {"username": "$puppetmaster", "password": "guess"},
                {"username": "someone", "password": "x"},
            ):
                intruder = await RawClient.connect(broker, "gw", **options)
                assert await intruder.connack() == NOT_AUTHORIZED, options
                assert await intruder.closed_by_broker()
                await intruder.aclose()
            anyone = await RawClient.connect(broker, "device-1")  # others need no credentials
            assert await anyone.connack() == 0
            await gateway.ping()  # the gateway's connection was never touched
            for client in (gateway, anyone):
                await client.aclose()
            nursery.cancel_scope.cancel()


def _connect_and_leave(host: str, port: int, client_id: str, stay: float) -> str | None:
    """A paho client that connects with ``client_id`` and no credentials, stays ``stay``
    seconds, leaves; returns the CONNACK reason it got, in paho's words (None: none)."""
    reasons: list[str] = []
    answered = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        reasons.append(str(reason))
        answered.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_connect = on_connect
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        answered.wait(stay)
        threading.Event().wait(stay)  # stays connected if it was let in
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons[0] if reasons else None


async def test_a_client_using_the_gateways_id_once_does_not_deafen_the_gateway(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    # The bug: one client that connected once as "puppetmaster" and left after a second cut
    # the gateway off every answer for good (amqtt deleted the gateway's subscriptions), and
    # every later task ended "timeout".
    with trio.fail_after(40):
        gateway = await start_gateway(
            mqtt={"client_id": "puppetmaster"}, tasks={"default_timeout": 5}
        )
        await start_simulator(gateway, ["aa"])
        reason = await trio.to_thread.run_sync(
            _connect_and_leave, gateway.mqtt_host, gateway.mqtt_port, "puppetmaster", 1.0
        )
        assert reason == "Not authorized"
        client = http(gateway)
        job = await wait_final(client, (await post_job(client, entry("aa", "/x")))["id"])
        # Before the fix the task ended "timeout" (the job itself still ends "resolved").
        assert [task["__task"]["status"] for task in job["collection"]] == ["resolved"], job


async def _keep_connecting(broker: EmbeddedBroker, client_id: str, seconds: float) -> list[bool]:
    """Connect with ``client_id`` again and again for ``seconds``, each connection let in,
    pinged and left at once (what a misconfigured device in a reconnect loop does); returns,
    per connection, whether it was closed by the broker before its ping was answered."""
    kicked: list[bool] = []
    with trio.move_on_after(seconds):
        while True:
            intruder = await RawClient.connect(broker, client_id)
            try:
                assert await intruder.connack() == 0
                await intruder.stream.send_all(PINGREQ)
                kicked.append(await intruder.receive_exactly(2) != PINGRESP)
            except trio.BrokenResourceError:  # reset: closed by the broker
                kicked.append(True)
            finally:
                await intruder.aclose()
    return kicked


async def test_with_mosquitto_no_client_can_take_the_gateways_session(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, http: Any
) -> None:
    # mosquitto cannot reserve a client id for anonymous clients (docs/broker.md): when the
    # gateway connected as mqtt.client_id, each client below took its session over (mosquitto
    # closed the gateway's connection), and the one that keeps reconnecting made the two
    # fight for it. 2.5 s of reconnecting: "a few seconds" of a client in a reconnect loop.
    with trio.fail_after(40):
        gateway = await start_gateway(
            broker={"engine": "mosquitto"},
            mqtt={"client_id": "puppetmaster"},
            tasks={"default_timeout": 10},
        )
        broker, mqtt = gateway.broker, gateway.mqtt
        assert broker is not None and mqtt is not None
        await start_simulator(gateway, ["aa"])
        client = http(gateway)
        for options in (
            {},
            {"clean": False},
            {"username": "$puppetmaster", "password": "guess"},
            {"username": "$puppetmaster"},
        ):
            # Let in (mosquitto lets anyone in), but the id is no longer the gateway's.
            intruder = await RawClient.connect(broker, "puppetmaster", **options)
            assert await intruder.connack() == 0, options
            await intruder.ping()
            await intruder.aclose()
        kicked: list[bool] = []

        async def hammer() -> None:
            kicked.extend(await _keep_connecting(broker, "puppetmaster", 2.5))

        async with trio.open_nursery() as nursery:
            # The job is sent and answered while a client keeps reconnecting with the id.
            nursery.start_soon(hammer)
            job = await wait_final(client, (await post_job(client, entry("aa", "/x")))["id"])
        assert len(kicked) >= 5 and not any(kicked), kicked  # nobody fought over the id
        assert [task["__task"]["status"] for task in job["collection"]] == ["resolved"], job
        # Never kicked: the gateway's connection is the one it made at its start, under an id
        # of its own.
        assert mqtt.connected and mqtt.reconnects == 0
        assert mqtt.client_id.startswith("puppetmaster-"), mqtt.client_id
