"""Device presence end to end: from the embedded amqtt broker itself (v1 devices), from the
status topic through an external mosquitto (v1.1 birth and last will), bad status payloads,
and presence across a gateway restart."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import paho.mqtt.client as paho
import trio

from pm.gateway import Gateway, run_gateway
from pm.mqtt import open_mqtt_client
from pm.presence import Presence
from tests.integration.brokers import HANG_GUARD, Inbox, MosquittoBroker
from tests.integration.gateways import GatewayFactory, SimulatorFactory, gateway_config
from tests.waiting import poll_until

MAC = "02:00:00:00:00:01"


def _presence(gateway: Gateway, device: str) -> Presence:
    assert gateway.engine is not None
    return gateway.engine.presence.presence(device)


async def test_the_embedded_amqtt_broker_reports_v1_devices_online_and_offline(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(HANG_GUARD):
        gateway = await start_gateway()
        assert _presence(gateway, MAC) is Presence.UNKNOWN
        # The simulator's devices speak protocol v1: they never publish a status themselves.
        simulator = await start_simulator(gateway, [MAC, "dev-b"], status=False)
        await poll_until(lambda: _presence(gateway, MAC) is Presence.ONLINE)
        await poll_until(lambda: _presence(gateway, "dev-b") is Presence.ONLINE)
        await simulator.disconnect(MAC)
        await poll_until(lambda: _presence(gateway, MAC) is Presence.OFFLINE)
        assert _presence(gateway, "dev-b") is Presence.ONLINE
        await simulator.reconnect(MAC)
        await poll_until(lambda: _presence(gateway, MAC) is Presence.ONLINE)
    assert gateway.engine is not None
    record = gateway.engine.presence.record(MAC)
    assert record is not None and record.disconnected_at is not None
    assert record.connected_at is not None and record.connected_at >= record.disconnected_at


def _v11_device(broker: MosquittoBroker, device: str) -> paho.Client:
    """A protocol v1.1 device on a paho thread: last will ``offline``, retained ``online``."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"device-{device}")
    status = f"/remote/{device}/status"
    client.will_set(status, b"offline", qos=1, retain=True)
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    client.publish(status, b"online", qos=1, retain=True).wait_for_publish(5)
    return client


async def test_status_topic_birth_and_last_will_through_an_external_mosquitto(
    start_gateway: GatewayFactory, mosquitto: MosquittoBroker
) -> None:
    with trio.fail_after(HANG_GUARD):
        # Born before the gateway starts: the retained birth is read at its subscription.
        early = await trio.to_thread.run_sync(_v11_device, mosquitto, "early")
        gateway = await start_gateway(
            broker={"embedded": False}, mqtt={"host": mosquitto.host, "port": mosquitto.port}
        )
        await poll_until(lambda: _presence(gateway, "early") is Presence.ONLINE)
        late = await trio.to_thread.run_sync(_v11_device, mosquitto, "00-0C-29-1C-E8-01")
        await poll_until(lambda: _presence(gateway, "00:0c:29:1c:e8:01") is Presence.ONLINE)

        def vanish() -> None:
            # No DISCONNECT: the broker publishes the last will.
            early.loop_stop()
            sock = early.socket()
            assert sock is not None
            sock.close()

        await trio.to_thread.run_sync(vanish)
        await poll_until(lambda: _presence(gateway, "early") is Presence.OFFLINE)
        assert _presence(gateway, "00:0c:29:1c:e8:01") is Presence.ONLINE
        late.disconnect()
        late.loop_stop()


async def test_bad_status_payloads_are_ignored_and_counted(start_gateway: GatewayFactory) -> None:
    with trio.fail_after(HANG_GUARD):
        gateway = await start_gateway()
        assert gateway.mqtt is not None and gateway.engine is not None
        for payload in (b"maybe", b"\xff", b'{"online": true}'):
            gateway.mqtt.publish("/remote/dev-x/status", payload)
        gateway.mqtt.publish("/remote/dev-y/status", b"online")
        await poll_until(lambda: _presence(gateway, "dev-y") is Presence.ONLINE)
    assert gateway.health().dropped_messages.get("bad_status") == 3
    assert _presence(gateway, "dev-x") is Presence.UNKNOWN


async def test_presence_survives_a_gateway_restart(
    tmp_path: Path, start_simulator: SimulatorFactory
) -> None:
    config = gateway_config(store={"path": str(tmp_path / "pm.db")})
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as first:
            gateway = await first.start(partial(run_gateway, config))
            simulator = await start_simulator(gateway, ["dev-a", "dev-b"], status=False)
            await poll_until(lambda: _presence(gateway, "dev-b") is Presence.ONLINE)
            await simulator.disconnect("dev-a")
            await poll_until(lambda: _presence(gateway, "dev-a") is Presence.OFFLINE)
            assert gateway.engine is not None
            before = {d: gateway.engine.presence.record(d) for d in ("dev-a", "dev-b")}
            first.cancel_scope.cancel()
        async with trio.open_nursery() as second:
            # A new broker on another port: the simulated devices cannot come back.
            restarted = await second.start(partial(run_gateway, config))
            assert restarted.engine is not None
            after = {d: restarted.engine.presence.record(d) for d in ("dev-a", "dev-b")}
            second.cancel_scope.cancel()
    assert before["dev-a"] is not None and before["dev-a"].presence is Presence.OFFLINE
    assert after["dev-a"] == before["dev-a"]
    # Online when the gateway stopped: the new embedded broker has no connection from before,
    # so it is offline since the restart, connected when it was.
    assert before["dev-b"] is not None and after["dev-b"] is not None
    assert after["dev-b"].presence is Presence.OFFLINE
    assert after["dev-b"].connected_at == before["dev-b"].connected_at
    assert after["dev-b"].disconnected_at is not None
    assert after["dev-b"].disconnected_at >= (before["dev-b"].connected_at or 0)


async def test_simulated_v11_devices_announce_themselves_and_flap(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory, mosquitto: MosquittoBroker
) -> None:
    devices = [f"flap-{index}" for index in range(6)]
    with trio.fail_after(HANG_GUARD):
        # mosquitto publishes nothing on a device's behalf: what the gateway learns here comes
        # from the simulated devices' births, offline messages and last wills.
        gateway = await start_gateway(
            broker={"embedded": False}, mqtt={"host": mosquitto.host, "port": mosquitto.port}
        )
        simulator = await start_simulator(gateway, devices, offline_rate=0.5)
        assert simulator.connected == 3

        def presences() -> list[Presence]:
            return [_presence(gateway, device) for device in devices]

        await poll_until(
            lambda: sorted(presences()) == sorted([Presence.ONLINE] * 3 + [Presence.OFFLINE] * 3)
        )
        online = [d for d in devices if _presence(gateway, d) is Presence.ONLINE]
        await simulator.disconnect(online[0])
        await poll_until(lambda: _presence(gateway, online[0]) is Presence.OFFLINE)
        await simulator.reconnect(online[0])
        await poll_until(lambda: _presence(gateway, online[0]) is Presence.ONLINE)


async def test_flapping_devices_go_offline_and_come_back(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    devices = [f"flap-{index}" for index in range(4)]
    with trio.fail_after(HANG_GUARD):
        gateway = await start_gateway()
        assert gateway.engine is not None
        book = gateway.engine.presence
        await start_simulator(gateway, devices, offline_rate=0.5, flap_interval=0.05)

        def came_back(device: str) -> bool:
            record = book.record(device)
            return (
                record is not None
                and record.presence is Presence.ONLINE
                and record.disconnected_at is not None
            )

        await poll_until(lambda: any(came_back(device) for device in devices))


async def test_a_retained_request_still_reaches_a_device_that_subscribes_later(
    start_gateway: GatewayFactory,
) -> None:
    # The presence broker finds the retained message of an exact filter by lookup instead of
    # amqtt's scan of every retained message (one status per device made that O(N^2)).
    with trio.fail_after(HANG_GUARD):
        gateway = await start_gateway()
        assert gateway.mqtt is not None
        gateway.mqtt.publish("/remote/late", b"kept", retain=True)
        gateway.mqtt.publish("/remote/other", b"not for late", retain=True)
        inbox = Inbox()
        async with open_mqtt_client(
            gateway.mqtt_host, gateway.mqtt_port, client_id="sim-late", on_message=inbox
        ) as device:
            await device.subscribe("/remote/late", qos=1)
            assert await inbox.receive.receive() == ("/remote/late", b"kept")
            # A wildcard filter still gets its retained matches: the birth the broker
            # announced for this device when it subscribed above.
            await device.subscribe("/remote/+/status", qos=1)
            assert await inbox.receive.receive() == ("/remote/late/status", b"online")


def _device_that_never_returns(host: str, port: int, device: str) -> paho.Client:
    """A v1 device on a paho thread that does not reconnect once its connection is lost."""
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=f"device-{device}", reconnect_on_failure=False
    )
    client.connect(host, port, keepalive=30)
    client.loop_start()
    _, mid = client.subscribe(f"/remote/{device}", qos=1)
    assert mid is not None
    return client


async def test_a_broker_restart_takes_devices_offline_until_they_return(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    with trio.fail_after(HANG_GUARD):
        gateway = await start_gateway()
        assert gateway.broker is not None
        await start_simulator(gateway, ["returns"], status=False)
        gone = await trio.to_thread.run_sync(
            _device_that_never_returns, gateway.mqtt_host, gateway.mqtt_port, "gone"
        )
        await poll_until(lambda: _presence(gateway, "gone") is Presence.ONLINE)
        await poll_until(lambda: _presence(gateway, "returns") is Presence.ONLINE)
        gateway.broker.kill()
        await gateway.broker.wait_running(restarts=1)
        await poll_until(lambda: _presence(gateway, "gone") is Presence.OFFLINE)
        # The simulated device reconnects and subscribes again: the new broker announces it.
        await poll_until(lambda: _presence(gateway, "returns") is Presence.ONLINE)
        assert gateway.engine is not None
        record = gateway.engine.presence.record("returns")
        assert record is not None and record.disconnected_at is not None
        gone.loop_stop()


async def test_the_embedded_mosquitto_engine_reports_v1_devices_online_and_offline(
    start_gateway: GatewayFactory, start_simulator: SimulatorFactory
) -> None:
    # mosquitto publishes nothing itself: its child reads subscriptions and disconnects from
    # mosquitto's log and announces them, as the amqtt child does.
    with trio.fail_after(HANG_GUARD):
        gateway = await start_gateway(broker={"engine": "mosquitto"})
        speaks = await start_simulator(gateway, ["v11"])
        v1 = await start_simulator(gateway, [MAC, "v1-b"], status=False)
        await poll_until(lambda: _presence(gateway, "v11") is Presence.ONLINE)
        await poll_until(lambda: _presence(gateway, MAC) is Presence.ONLINE)
        await poll_until(lambda: _presence(gateway, "v1-b") is Presence.ONLINE)
        await speaks.disconnect("v11")
        await poll_until(lambda: _presence(gateway, "v11") is Presence.OFFLINE)
        await v1.disconnect(MAC)  # a v1 device sends no offline: the broker's log tells
        await poll_until(lambda: _presence(gateway, MAC) is Presence.OFFLINE)
        assert _presence(gateway, "v1-b") is Presence.ONLINE
        await v1.reconnect(MAC)
        await poll_until(lambda: _presence(gateway, MAC) is Presence.ONLINE)
