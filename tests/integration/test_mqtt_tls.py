"""MQTT over TLS: with ``broker.certfile`` and ``broker.keyfile`` set, the embedded broker's
listener speaks only TLS; the gateway and the simulated devices connect with TLS, trusting the
broker's self-signed certificate (made per test with ``openssl``)."""

from __future__ import annotations

import socket
import ssl
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from pm.mqtt import open_mqtt_client
from tests.integration.gateways import GatewayFactory, SimulatorFactory
from tests.integration.mqtt_packets import connect_packet, publish_qos0_packet
from tests.job_api import entry, post_job, wait_final
from tests.waiting import poll_until

DEVICES = [f"tls-{number:02d}" for number in range(20)]
TASKS_PER_DEVICE = 10  # 200 tasks: many answers per TLS read, the SSL-pending path

_PLAIN_CONNECT = connect_packet("plain", keepalive=30)


def _plain_tcp_gets_no_connack(host: str, port: int) -> bytes:
    """Send a plain MQTT CONNECT; return what came back before the broker closed or went
    silent (a CONNACK would start with 0x20)."""
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.sendall(_PLAIN_CONNECT)
        received = b""
        try:
            while chunk := sock.recv(1024):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


async def test_devices_and_gateway_speak_mqtt_over_tls(
    start_gateway: GatewayFactory,
    start_simulator: SimulatorFactory,
    certificate: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    certfile, keyfile = certificate
    with trio.fail_after(15):
        gateway = await start_gateway(broker={"certfile": str(certfile), "keyfile": str(keyfile)})
        assert gateway.mqtt is not None and gateway.mqtt.connected
        simulator = await start_simulator(gateway, DEVICES, tls_ca_file=str(certfile))
        entries = [
            entry(DEVICES, f"/tls/{index}", data={"index": index})
            for index in range(TASKS_PER_DEVICE)
        ]
        async with httpx.AsyncClient(base_url=gateway.http_url, timeout=10) as client:
            created = await post_job(client, *entries)
            job = await wait_final(client, created["id"])
        assert job["status"] == "resolved", job["status"]
        assert job["totalCount"] == job["doneCount"] == len(DEVICES) * TASKS_PER_DEVICE
        assert job["errorCount"] == 0
        assert {task["__task"]["status"] for task in job["collection"]} == {"resolved"}
        assert simulator.stats.answered == len(DEVICES) * TASKS_PER_DEVICE
        # The listener speaks no plain MQTT: no CONNACK for a plain CONNECT.
        answer = await trio.to_thread.run_sync(
            _plain_tcp_gets_no_connack, gateway.mqtt_host, gateway.mqtt_port
        )
        assert not answer.startswith(b"\x20"), answer

        # A TLS client that does not trust the certificate never gets connected: its attempt
        # fails on the certificate (it would retry for ever; the test stops it there).
        async def connect_untrusting() -> None:
            async with open_mqtt_client(
                gateway.mqtt_host,
                gateway.mqtt_port,
                client_id="untrusting",
                on_message=lambda topic, payload: None,
                tls=True,
            ):
                pytest.fail("connected without trusting the broker's certificate")

        def refused_on_the_certificate() -> bool:
            return any(
                "untrusting" in record.getMessage()
                and "CERTIFICATE_VERIFY_FAILED" in record.getMessage()
                for record in caplog.records
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(connect_untrusting)
            await poll_until(refused_on_the_certificate)
            nursery.cancel_scope.cancel()


async def test_packets_left_decrypted_in_the_ssl_object_are_read(
    certificate: tuple[Path, Path],
) -> None:
    """A TLS record holding many MQTT packets: paho reads the first, the rest sits decrypted
    in the SSL object while the socket has nothing left to read. Waiting for the socket would
    stall until the broker's next record; the read loop must drain ``SSLSocket.pending()``."""
    certfile, keyfile = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(certfile), str(keyfile))
    count = 50
    # CONNACK (session present 0, accepted), then the PUBLISHes: one write, one TLS record.
    burst = bytes([0x20, 2, 0, 0]) + b"".join(
        publish_qos0_packet("burst", str(number).encode()) for number in range(count)
    )
    received: list[bytes] = []
    all_received = trio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        received.append(payload)
        if len(received) == count:
            all_received.set()

    async def serve_one(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server_context, server_side=True)
        await tls.receive_some(1024)  # the CONNECT
        await tls.send_all(burst)
        await trio.sleep_forever()  # silent from now on (keepalive 30 s)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            async with open_mqtt_client(
                "127.0.0.1",
                port,
                client_id="burst",
                on_message=on_message,
                tls_ca_file=str(certfile),
            ):
                with trio.move_on_after(3):
                    await all_received.wait()
                assert received == [str(number).encode() for number in range(count)]
            nursery.cancel_scope.cancel()
