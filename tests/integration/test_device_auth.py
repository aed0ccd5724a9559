"""Device identity and topic ACLs: the embedded amqtt broker with ``broker.auth``, and the
equivalent mosquitto ``password_file`` + ``acl_file`` for an external broker. Every check
uses real MQTT connections."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from pm.mqtt import MqttClient, MqttSubscribeError, open_mqtt_client
from pm.passwords import hash_password, write_password_file
from pm.presence import Presence
from pm.protocol import PROBE_DEVICE_ID
from tests.integration.brokers import Inbox, MosquittoBroker
from tests.integration.gateways import GatewayFactory, SimulatorFactory, probe_came_back
from tests.integration.mqtt_packets import connect_packet
from tests.job_api import entry, post_job, wait_final
from tests.waiting import poll_until

SECRET = "fleet-test-secret"
GATEWAY = {"username": "gw", "password": "gateway-secret"}
_GUARD = 20.0


async def _connack_code(
    host: str, port: int, client_id: str, username: str | None, password: str | None
) -> int:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(
            connect_packet(client_id, keepalive=30, username=username, password=password)
        )
        connack = b""
        while len(connack) < 4:
            chunk = await stream.receive_some(4 - len(connack))
            assert chunk, "connection closed before CONNACK"
            connack += chunk
    assert connack[:2] == b"\x20\x02"
    return connack[3]


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "devices.passwd"
    write_password_file(path, {"dev-a": hash_password(SECRET), "dev-b": hash_password(SECRET)})
    return path


async def _start_auth_gateway(start_gateway: GatewayFactory, password_file: Path) -> tuple:
    gateway = await start_gateway(
        broker={"auth": True, "password_file": str(password_file)},
        mqtt=GATEWAY,
        tasks={"default_timeout": 5},
    )
    return gateway, gateway.mqtt_host, gateway.mqtt_port


async def test_logins_are_checked(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    password_file: Path,
    http: object,
) -> None:
    with trio.fail_after(_GUARD):
        gateway, host, port = await _start_auth_gateway(start_gateway, password_file)
        assert gateway.mqtt is not None and gateway.mqtt.connected
        # CONNACK 5: not authorized.
        assert await _connack_code(host, port, "anon", None, None) == 5
        assert await _connack_code(host, port, "wrong", "dev-a", "not-it") == 5
        assert await _connack_code(host, port, "nobody", "dev-z", SECRET) == 5
        assert await _connack_code(host, port, "gw-wrong", "gw", SECRET) == 5
        assert await _connack_code(host, port, "sim-dev-a", "dev-a", SECRET) == 0
        # A device may not use the gateway's client id, and a refused login must not take
        # over (or delete) the gateway's session: the gateway stays connected and subscribed.
        gateway_id = gateway.config.mqtt.client_id
        assert await _connack_code(host, port, gateway_id, "dev-a", SECRET) == 5
        assert await _connack_code(host, port, gateway_id, None, None) == 5
        # A job's round trip goes through the gateway's connection after those refusals: a
        # takeover would have dropped it first.
        await start_simulator(gateway, ["dev-a"], device_password=SECRET)
        client: httpx.AsyncClient = http(gateway)  # type: ignore[operator]
        job = await wait_final(client, (await post_job(client, entry("dev-a")))["id"])
        assert job["status"] == "resolved" and job["finishCount"] == 1
        assert gateway.mqtt.connected and gateway.mqtt.reconnects == 0


async def test_a_device_only_reaches_its_own_topics(
    start_gateway: GatewayFactory, password_file: Path
) -> None:
    with trio.fail_after(_GUARD):
        _, host, port = await _start_auth_gateway(start_gateway, password_file)
        spy = Inbox()
        probe_topic = f"/remote/{PROBE_DEVICE_ID}/response"

        def spy_on_devices(topic: str, payload: bytes) -> None:
            # Not the gateway's own answer-path probe (every 5 s), nor the presence the
            # broker publishes as devices subscribe (test_device_status_needs_its_own_login).
            if topic != probe_topic and not topic.endswith("/status"):
                spy(topic, payload)

        device_b = Inbox()
        async with (
            # A second gateway login (its own client id) watches every topic.
            open_mqtt_client(
                host, port, client_id="spy", on_message=spy_on_devices, **GATEWAY
            ) as watcher,
            open_mqtt_client(
                host,
                port,
                client_id="sim-dev-a",
                on_message=Inbox(),
                username="dev-a",
                password=SECRET,
            ) as a,
            open_mqtt_client(
                host,
                port,
                client_id="sim-dev-b",
                on_message=device_b,
                username="dev-b",
                password=SECRET,
            ) as b,
        ):
            await watcher.subscribe("/remote/#", qos=1)
            await a.subscribe("/remote/dev-a", qos=1)
            # amqtt answers the refused filter with SUBACK 0x80; MqttClient raises.
            with pytest.raises(MqttSubscribeError, match="'/remote/dev-b'"):
                await a.subscribe("/remote/dev-b", qos=1)
            with pytest.raises(MqttSubscribeError):
                await a.subscribe("/remote/+/response", qos=1)
            await b.subscribe("/remote/dev-b", qos=1)
            # Forged by dev-a: an answer for dev-b, and a request to dev-b. amqtt drops both
            # silently (still PUBACKs them), so nothing may arrive. The broker takes dev-a's
            # messages in order and delivers through one queue: a forged message it let
            # through would reach its subscribers before dev-a's own answer that follows.
            await a.publish_when_connected("/remote/dev-b/response", b'{"forged": 1}')
            await a.publish_when_connected("/remote/dev-b", b'{"forged": 2}')
            await a.publish_when_connected("/remote/dev-a/response", b'{"genuine": "a"}')
            assert await spy.receive.receive() == ("/remote/dev-a/response", b'{"genuine": "a"}')
            # dev-b's own answer passes; the watcher sees nothing else.
            await b.publish_when_connected("/remote/dev-b/response", b'{"genuine": "b"}')
            assert await spy.receive.receive() == ("/remote/dev-b/response", b'{"genuine": "b"}')
            assert spy.receive.statistics().current_buffer_used == 0
            # A request from the gateway's login is the first message dev-b gets.
            await watcher.publish_when_connected("/remote/dev-b", b'{"request": 1}')
            assert await device_b.receive.receive() == ("/remote/dev-b", b'{"request": 1}')


async def test_a_device_may_publish_only_its_own_status(
    start_gateway: GatewayFactory, password_file: Path
) -> None:
    with trio.fail_after(_GUARD):
        gateway, host, port = await _start_auth_gateway(start_gateway, password_file)
        assert gateway.engine is not None
        presence = gateway.engine.presence
        logins = {
            device: {"username": device, "password": SECRET, "on_message": Inbox()}
            for device in ("dev-a", "dev-b")
        }
        async with (
            open_mqtt_client(host, port, client_id="sim-dev-a", **logins["dev-a"]) as a,
            open_mqtt_client(host, port, client_id="sim-dev-b", **logins["dev-b"]) as b,
        ):
            await a.subscribe("/remote/dev-a", qos=1)
            await b.subscribe("/remote/dev-b", qos=1)
            await poll_until(lambda: presence.presence("dev-b") is Presence.ONLINE)
            # Forged by dev-a for dev-b: dropped by the ACL. The broker handles dev-a's
            # messages in order, so once its own status has arrived the forged one would have.
            await a.publish_when_connected("/remote/dev-b/status", b"offline")
            await a.publish_when_connected("/remote/dev-a/status", b"offline")
            await poll_until(lambda: presence.presence("dev-a") is Presence.OFFLINE)
            assert presence.presence("dev-b") is Presence.ONLINE


async def test_a_job_reaches_authenticated_devices(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    password_file: Path,
    http: object,
) -> None:
    with trio.fail_after(_GUARD):
        gateway, _, _ = await _start_auth_gateway(start_gateway, password_file)
        await start_simulator(gateway, ["dev-a", "dev-b"], device_password=SECRET)
        client: httpx.AsyncClient = http(gateway)  # type: ignore[operator]
        created = await post_job(client, entry(["dev-a", "dev-b"]))
        job = await wait_final(client, created["id"])
        assert job["status"] == "resolved"
        assert job["doneCount"] == 2 and job["errorCount"] == 0
        # The ACL lets the gateway's own user publish its answer-path probe.
        probe = await probe_came_back(gateway)
        assert probe.ok and probe.probes_lost == 0


async def test_the_embedded_acl_lets_devices_answer_on_a_per_gateway_topic(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    password_file: Path,
    http: object,
) -> None:
    with trio.fail_after(_GUARD):
        gateway = await start_gateway(
            broker={"auth": True, "password_file": str(password_file)},
            topics={"response": "/remote/{device}/response/{gateway}"},
            cluster={"gateway_id": "gw-7"},
            tasks={"default_timeout": 5},
        )
        simulator = await start_simulator(gateway, ["dev-a"], device_password=SECRET)
        client: httpx.AsyncClient = http(gateway)  # type: ignore[operator]
        job = await wait_final(client, (await post_job(client, entry("dev-a")))["id"])
        # The broker's ACL takes the answer topic with this gateway's id in it.
        assert job["status"] == "resolved" and job["finishCount"] == 1
        assert simulator.received_by("dev-a")[0]["tunnel"] == "/remote/dev-a/response/gw-7"
        assert (await probe_came_back(gateway)).ok


async def test_the_gateway_generates_its_own_broker_password(
    start_gateway: GatewayFactory, password_file: Path
) -> None:
    with trio.fail_after(_GUARD):
        gateway = await start_gateway(broker={"auth": True, "password_file": str(password_file)})
        assert gateway.mqtt is not None and gateway.mqtt.connected
        host, port = gateway.mqtt_host, gateway.mqtt_port
        assert await _connack_code(host, port, "guess", "$puppetmaster", "") == 5


# -- mosquitto: the documented password_file + acl_file -----------------------------------


def mosquitto_acl(gateway_user: str) -> str:
    """The acl_file of README's Security section (default topic templates)."""
    return (
        f"user {gateway_user}\n"
        "topic write /remote/+\n"
        "topic read /remote/+/response\n"
        "topic write /remote/~puppetmaster-probe/response\n"
        "topic read /remote/+/status\n"
        "\n"
        "pattern read /remote/%u\n"
        "pattern write /remote/%u/response\n"
        "pattern write /remote/%u/status\n"
    )


def _write_mosquitto_files(passwords: Path, acl: Path) -> None:
    """The password file (made by mosquitto_passwd) and the acl_file of README's example."""
    mosquitto_passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(mosquitto_passwd).exists():
        pytest.fail("mosquitto_passwd not found: it comes with the mosquitto package")
    users = {"gw": GATEWAY["password"], "dev-a": SECRET, "dev-b": SECRET, "dev-c": SECRET}
    for number, (user, password) in enumerate(users.items()):
        create = ["-c"] if number == 0 else []
        subprocess.run(
            [mosquitto_passwd, *create, "-b", str(passwords), user, password],
            check=True,
            capture_output=True,
        )
    acl.write_text(mosquitto_acl("gw"))


async def test_mosquitto_password_and_acl_files(
    mosquitto: MosquittoBroker,
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: object,
    tmp_path: Path,
) -> None:
    passwords, acl = tmp_path / "mosquitto.passwd", tmp_path / "mosquitto.acl"
    await trio.to_thread.run_sync(_write_mosquitto_files, passwords, acl)
    await trio.to_thread.run_sync(mosquitto.stop)
    # configure() writes "allow_anonymous true" first; mosquitto keeps the last value. Run as
    # root (CI containers), mosquitto would switch to user "mosquitto", which cannot read the
    # test's private temporary directory: "user root" keeps it as it is.
    stay_root = "user root\n" if os.geteuid() == 0 else ""
    mosquitto.configure(
        f"password_file {passwords}\nacl_file {acl}\nallow_anonymous false\n"
        f"use_username_as_clientid true\n{stay_root}"
    )
    await trio.to_thread.run_sync(mosquitto.start)
    host, port = mosquitto.host, mosquitto.port

    with trio.fail_after(_GUARD):
        assert await _connack_code(host, port, "anon", None, None) == 5
        assert await _connack_code(host, port, "wrong", "dev-a", "nope") == 5
        gateway = await start_gateway(
            broker={"embedded": False},
            mqtt={**GATEWAY, "host": host, "port": port},
            tasks={"default_timeout": 5},
        )
        await start_simulator(gateway, ["dev-a", "dev-b"], device_password=SECRET)
        client: httpx.AsyncClient = http(gateway)  # type: ignore[operator]
        job = await wait_final(client, (await post_job(client, entry(["dev-a", "dev-b"])))["id"])
        assert job["status"] == "resolved" and job["finishCount"] == 2
        # A device with valid credentials that uses the gateway's client id takes nothing over
        # (use_username_as_clientid: every client's id is its username). Without it mosquitto
        # closed the gateway's connection, counted before a later job's round trip ended.
        gateway_id = gateway.config.mqtt.client_id
        assert await _connack_code(host, port, gateway_id, "dev-c", SECRET) == 0
        job = await wait_final(client, (await post_job(client, entry("dev-b")))["id"])
        assert job["status"] == "resolved"
        assert gateway.mqtt is not None and gateway.mqtt.reconnects == 0
        # The status lines let the devices' births reach the gateway.
        assert gateway.engine is not None
        presence = gateway.engine.presence
        await poll_until(lambda: presence.presence("dev-b") is Presence.ONLINE)
        # The acl_file grants the probe's topic: without that line mosquitto drops the probe
        # silently, and the gateway would report its answer path lost.
        probe = await probe_came_back(gateway)
        assert probe.ok and probe.probes_lost == 0

        # dev-c (no simulated device: with use_username_as_clientid a second connection of
        # dev-a would close the simulator's) asks for dev-b's requests: mosquitto 2.0.11 grants
        # the SUBSCRIBE (MQTT 3.1.1) but must deliver nothing; dev-b (the simulator) still gets
        # and answers them.
        nosy = Inbox()
        async with open_mqtt_client(
            host, port, client_id="nosy-dev-c", on_message=nosy, username="dev-c", password=SECRET
        ) as intruder:
            await intruder.subscribe("/remote/dev-b", qos=1)
            await intruder.subscribe("/remote/+/response", qos=1)
            await intruder.subscribe("/remote/dev-c", qos=1)
            job = await wait_final(client, (await post_job(client, entry("dev-b")))["id"])
            assert job["status"] == "resolved"
            # A later request to dev-c itself is the first message it gets: mosquitto would
            # have delivered dev-b's request and answer before it.
            await post_job(client, entry("dev-c"))
            topic, _ = await nosy.receive.receive()
            assert topic == "/remote/dev-c"


# -- mosquitto: the cluster's acl_file (per-gateway answer topics, docs/scale-out.md) -------

CLUSTER_GATEWAYS = {"gw-1": "gateway-one-secret", "gw-2": "gateway-two-secret"}


def mosquitto_cluster_acl(gateway_users: list[str]) -> str:
    """The acl_file of docs/scale-out.md: each gateway reads only the answers addressed to
    it; a device answers on its own topic, to any gateway."""
    gateways = "".join(
        f"user {user}\n"
        "topic write /remote/+\n"
        f"topic read /remote/+/response/{user}\n"
        f"topic write /remote/~puppetmaster-probe/response/{user}\n"
        "topic read /remote/+/status\n\n"
        for user in gateway_users
    )
    return (
        gateways + "pattern read /remote/%u\n"
        "pattern write /remote/%u/response/+\n"
        "pattern write /remote/%u/status\n"
    )


def _write_cluster_mosquitto_files(passwords: Path, acl: Path) -> None:
    mosquitto_passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(mosquitto_passwd).exists():
        pytest.fail("mosquitto_passwd not found: it comes with the mosquitto package")
    users = {**CLUSTER_GATEWAYS, "dev-a": SECRET, "dev-b": SECRET, "dev-c": SECRET}
    for number, (user, password) in enumerate(users.items()):
        create = ["-c"] if number == 0 else []
        subprocess.run(
            [mosquitto_passwd, *create, "-b", str(passwords), user, password],
            check=True,
            capture_output=True,
        )
    acl.write_text(mosquitto_cluster_acl(list(CLUSTER_GATEWAYS)))


async def _published(client: MqttClient, topic: str, payload: bytes) -> None:
    """Publish at QoS 1 and wait for the broker's PUBACK: the broker has routed it then."""
    acknowledgement = client.publish_tracked(topic, payload, qos=1)
    assert acknowledgement is not None
    await poll_until(acknowledgement.is_published)


async def test_mosquitto_cluster_acl_keeps_answers_per_gateway_and_devices_apart(
    mosquitto: MosquittoBroker,
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    http: object,
    tmp_path: Path,
) -> None:
    passwords, acl = tmp_path / "mosquitto.passwd", tmp_path / "mosquitto.acl"
    await trio.to_thread.run_sync(_write_cluster_mosquitto_files, passwords, acl)
    await trio.to_thread.run_sync(mosquitto.stop)
    stay_root = "user root\n" if os.geteuid() == 0 else ""
    mosquitto.configure(
        f"password_file {passwords}\nacl_file {acl}\nallow_anonymous false\n"
        f"use_username_as_clientid true\n{stay_root}"
    )
    await trio.to_thread.run_sync(mosquitto.start)
    host, port = mosquitto.host, mosquitto.port

    with trio.fail_after(_GUARD):
        gateways = [
            await start_gateway(
                broker={"embedded": False},
                mqtt={"username": name, "password": password, "host": host, "port": port},
                topics={"response": "/remote/{device}/response/{gateway}"},
                cluster={"gateway_id": name},
                tasks={"default_timeout": 5},
            )
            for name, password in CLUSTER_GATEWAYS.items()
        ]
        first, second = gateways
        assert first.engine is not None and second.engine is not None
        assert second.mqtt is not None
        simulator = await start_simulator(first, ["dev-a", "dev-b"], device_password=SECRET)
        clients = [http(gateway) for gateway in gateways]  # type: ignore[operator]
        # Devices answer on /remote/<itself>/response/<gateway>: the ACL lets them, for
        # either gateway; each gateway's probe on its own answer topic comes back.
        for client in clients:
            job = await wait_final(
                client, (await post_job(client, entry(["dev-a", "dev-b"])))["id"]
            )
            assert job["status"] == "resolved" and job["finishCount"] == 2
        for gateway in gateways:
            probe = await probe_came_back(gateway)
            assert probe.ok and probe.probes_lost == 0

        # A gateway user reads only its own answers: gw-2 asks for gw-1's too; mosquitto
        # grants the SUBSCRIBE (MQTT 3.1.1) and delivers nothing of it. gw-1's answers from
        # dev-a leave before gw-2's (one device connection): had gw-2 received them, it would
        # have counted them ("foreign_topic": not its answer topic) by its own job's end.
        await second.mqtt.subscribe("/remote/+/response/gw-1", qos=1)
        for client in clients:
            job = await wait_final(client, (await post_job(client, entry("dev-a")))["id"])
            assert job["status"] == "resolved" and job["finishCount"] == 1
        assert dict(second.engine.fleet.dropped) == {}

        # A device cannot answer for another device, nor send another device requests: dev-c
        # (valid credentials) publishes a forged answer to gw-1 on dev-a's answer topic and a
        # request on dev-a's request topic, then an answer on its own topic, which gw-1 drops
        # as answering nothing ("unexpected_id"). One connection: gw-1 would have got the
        # forgery first.
        async with open_mqtt_client(
            host, port, client_id="dev-c", on_message=Inbox(), username="dev-c", password=SECRET
        ) as forger:
            forged = b'{"id": 999999, "code": 200}'
            await _published(forger, "/remote/dev-a/response/gw-1", forged)
            await _published(
                forger,
                "/remote/dev-a",
                b'{"id": 999998, "method": "get", "resource": "/x", "data": {}, '
                b'"tunnel": "/remote/dev-c/response/gw-1"}',
            )
            await _published(forger, "/remote/dev-c/response/gw-1", b'{"id": 1, "code": 200}')
            dropped = first.engine.fleet.dropped
            await poll_until(lambda: dropped["unexpected_id"] >= 1)
        # A last round trip through dev-a: the forged request, had mosquitto delivered it,
        # reached dev-a before this one (acknowledged, so routed, first).
        client = clients[0]
        job = await wait_final(client, (await post_job(client, entry("dev-a")))["id"])
        assert job["status"] == "resolved" and job["finishCount"] == 1
        assert dict(dropped) == {"unexpected_id": 1}
        assert 999998 not in [request["id"] for request in simulator.received_by("dev-a")]
