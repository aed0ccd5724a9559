"""The embedded broker's amqtt fixes (pm/broker/amqtt/) through a real broker child and real
MQTT clients; the index, filters and pacers they rely on are unit-tested in
tests/test_broker_amqtt.py (their amqtt internals are pinned by tests/test_private_names.py)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Any

import trio

from pm.broker import run_embedded_broker
from pm.broker._protocol import ReadyLine, parse_ready_line
from pm.config import BrokerConfig
from pm.mqtt import open_mqtt_client
from tests.integration.mqtt_packets import (
    connect_packet,
    puback_packet,
    publish_qos0_packet,
    publish_qos1_packet,
    read_packet,
    subscribe_packet,
    subscriber_and_publisher,
)
from tests.waiting import poll_until

# Seconds amqtt 0.12.1 waited for a PUBACK, hard-coded.
AMQTT_PUBACK_WAIT = 5.0
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
DISCONNECT = b"\xe0\x00"


async def test_a_connecting_client_gets_no_retained_message_of_other_filters() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(run_embedded_broker, BrokerConfig(port=0))
            seen_by_a: list[str] = []
            seen_by_b: list[str] = []
            async with (
                open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="a",
                    on_message=lambda t, p: seen_by_a.append(t),
                ) as device_a,
                open_mqtt_client(
                    broker.host, broker.port, client_id="gw", on_message=lambda t, p: None
                ) as gateway,
            ):
                await device_a.subscribe("/remote/a")
                assert gateway.publish("/remote/a", b'{"id": 1}', retain=True)
                await poll_until(lambda: bool(seen_by_a))
                # A newcomer subscribed to its own topic only: amqtt 0.12.1 would also hand it
                # the retained request of device a (its connect-time loop over all filters).
                async with open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="b",
                    on_message=lambda t, p: seen_by_b.append(t),
                ) as device_b:
                    await device_b.subscribe("/remote/b")
                    assert gateway.publish("/remote/b", b'{"id": 2}')
                    # A retained copy handed over at connect would have arrived before this.
                    await poll_until(lambda: "/remote/b" in seen_by_b)
                assert seen_by_b == ["/remote/b"]
                # The legitimate path still works: subscribing gets the filter's retained copy.
                async with open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="a2",
                    on_message=lambda t, p: seen_by_b.append(t),
                ) as late_a:
                    await late_a.subscribe("/remote/a")
                    await poll_until(lambda: len(seen_by_b) >= 2)
                assert seen_by_b == ["/remote/b", "/remote/a"]
            nursery.cancel_scope.cancel()


async def test_many_devices_each_get_only_their_own_requests_through_the_index() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(run_embedded_broker, BrokerConfig(port=0))
            seen: dict[str, list[bytes]] = {}
            async with (
                open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="mux",
                    on_message=lambda t, p: seen.setdefault(t, []).append(p),
                ) as devices,
                open_mqtt_client(
                    broker.host,
                    broker.port,
                    client_id="gw",
                    on_message=lambda t, p: seen.setdefault("gw:" + t, []).append(p),
                ) as gateway,
            ):
                for n in range(50):
                    await devices.subscribe(f"/remote/d{n}")
                await gateway.subscribe("/remote/+/response")
                for n in range(50):
                    assert gateway.publish(f"/remote/d{n}", str(n).encode())
                    assert devices.publish(f"/remote/d{n}/response", str(n).encode())
                await poll_until(lambda: len(seen) == 100)
                # Each client's last message: a duplicate or a misrouted copy of the ones
                # before would have reached its subscriber ahead of it.
                assert gateway.publish("/remote/d0", b"last")
                assert devices.publish("/remote/d0/response", b"last")
                await poll_until(
                    lambda: seen["/remote/d0"][-1] == seen["gw:/remote/d0/response"][-1] == b"last"
                )
            assert seen["/remote/d0"].pop() == seen["gw:/remote/d0/response"].pop() == b"last"
            assert len(seen) == 100
            assert all(seen[f"/remote/d{n}"] == [str(n).encode()] for n in range(50))
            assert all(seen[f"gw:/remote/d{n}/response"] == [str(n).encode()] for n in range(50))
            nursery.cancel_scope.cancel()


async def test_what_a_client_published_before_disconnecting_is_all_delivered() -> None:
    """amqtt's message loop ended at the DISCONNECT and dropped the messages still queued
    for delivery: a client that published a batch and disconnected lost its tail."""
    messages = 500
    received: list[bytes] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(run_embedded_broker, BrokerConfig(port=0))
            async with open_mqtt_client(
                broker.host,
                broker.port,
                client_id="listener",
                on_message=lambda t, p: received.append(p),
            ) as listener:
                await listener.subscribe("batch/x")
                publisher = await trio.open_tcp_stream(broker.host, broker.port)
                buffer = bytearray()
                await publisher.send_all(connect_packet("batcher"))
                assert (await _receive_packet(publisher, buffer))[:1] == b"\x20"  # CONNACK
                await publisher.send_all(
                    b"".join(publish_qos0_packet("batch/x", b"%d" % n) for n in range(messages))
                    + DISCONNECT
                )
                await publisher.aclose()
                await poll_until(lambda: len(received) == messages)
            nursery.cancel_scope.cancel()
    assert received == [b"%d" % n for n in range(messages)]


async def _receive_packet(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """The next whole MQTT packet from ``stream`` (``buffer`` keeps what came after it)."""
    while True:
        if len(buffer) >= 2:
            length, multiplier, index = 0, 1, 1
            while index < len(buffer):
                digit = buffer[index]
                length += (digit & 0x7F) * multiplier
                multiplier *= 128
                index += 1
                if not digit & 0x80:
                    if len(buffer) >= index + length:
                        packet = bytes(buffer[: index + length])
                        del buffer[: index + length]
                        return packet
                    break
        chunk = await stream.receive_some(65536)
        assert chunk, "the broker closed the connection"
        buffer += chunk


async def _start_broker_child(*, stderr: int = subprocess.PIPE) -> tuple[trio.Process, ReadyLine]:
    """``python -m pm.broker.amqtt`` on a free port, its stdout piped (and its stderr unless
    told otherwise: a pipe nobody reads blocks a chatty broker); returns once it printed its
    ready line."""
    broker = await trio.lowlevel.open_process(
        [sys.executable, "-m", "pm.broker.amqtt", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    assert broker.stdout is not None
    ready_text = b""
    while b"\n" not in ready_text:
        chunk = await broker.stdout.receive_some(4096)
        assert chunk, "the broker exited before it was ready"
        ready_text += chunk
    ready = parse_ready_line(ready_text.decode().splitlines()[0])
    assert ready is not None, ready_text
    return broker, ready


async def test_a_burst_acknowledged_late_is_not_timed_out() -> None:
    """A burst whose PUBACKs reach the broker more than 5 s after their PUBLISH: amqtt 0.12.1
    gave up on each (a warning each, counted in the child's "PUBACK waits exceeded" line).

    Under a real burst it is the broker's own loop that falls that far behind; here the
    subscriber holds its PUBACKs back for 6 s, which puts every wait in the same place on
    demand. The broker child's stderr is read to its end, after its stop (which reports what
    is left to report)."""
    burst = 200
    with trio.fail_after(40):
        broker, ready = await _start_broker_child()
        assert broker.stderr is not None
        try:
            subscriber = await trio.open_tcp_stream(ready.host, ready.port)
            publisher = await trio.open_tcp_stream(ready.host, ready.port)
            received, published = bytearray(), bytearray()
            await subscriber.send_all(connect_packet("late-acker"))
            assert (await _receive_packet(subscriber, received))[:1] == b"\x20"  # CONNACK
            await subscriber.send_all(subscribe_packet("burst/late", 1, qos=1))
            assert (await _receive_packet(subscriber, received))[:1] == b"\x90"  # SUBACK
            await publisher.send_all(connect_packet("burster"))
            assert (await _receive_packet(publisher, published))[:1] == b"\x20"
            await publisher.send_all(
                b"".join(
                    publish_qos1_packet("burst/late", n, b"request %d" % n)
                    for n in range(1, burst + 1)
                )
            )
            packet_ids = []
            while len(packet_ids) < burst:
                packet = await _receive_packet(subscriber, received)
                assert packet[0] & 0xF6 == 0x32, packet  # PUBLISH, QoS 1
                topic_length = int.from_bytes(packet[2:4], "big")
                variable = packet[4 + topic_length :]
                packet_ids.append(int.from_bytes(variable[:2], "big"))
            await trio.sleep(AMQTT_PUBACK_WAIT + 1.0)  # the lag under test, not a wait for it
            await subscriber.send_all(b"".join(puback_packet(n) for n in packet_ids))
            # Read in order: once the PINGRESP is back, every PUBACK has been handled.
            await subscriber.send_all(PINGREQ)
            assert await _receive_packet(subscriber, received) == PINGRESP
            for stream in (subscriber, publisher):
                await stream.aclose()
        finally:
            broker.send_signal(signal.SIGTERM)
            await broker.wait()
        stderr = b""
        while chunk := await broker.stderr.receive_some(65536):
            stderr += chunk
    assert broker.returncode == 0, stderr
    assert b"PUBACK waits exceeded" not in stderr, stderr.decode()


async def test_connections_arriving_while_the_broker_is_busy_are_queued_not_dropped() -> None:
    """amqtt listened with asyncio's default backlog of 100: while the broker could not accept
    (a reconnect storm, a loop seconds behind; here: stopped), the kernel dropped the SYN of
    every connection beyond that and the device retried 1, 3, 7 s later."""
    connections = 300
    streams: list[trio.SocketStream] = []
    with trio.fail_after(30):
        # Its stderr is not read: 300 connections that never send CONNECT log 600 lines.
        broker, ready = await _start_broker_child(stderr=subprocess.DEVNULL)
        try:
            broker.send_signal(signal.SIGSTOP)
            try:

                async def connect() -> None:
                    # Queued connections complete at once; a dropped SYN's retries would all
                    # meet the same full queue within this window.
                    with trio.move_on_after(5):
                        streams.append(await trio.open_tcp_stream(ready.host, ready.port))

                async with trio.open_nursery() as nursery:
                    for _ in range(connections):
                        nursery.start_soon(connect)
            finally:
                broker.send_signal(signal.SIGCONT)
            assert len(streams) == connections
        finally:
            for stream in streams:
                await stream.aclose()
            broker.send_signal(signal.SIGTERM)
            await broker.wait()


def test_a_qos1_stream_arms_no_timer_per_packet_and_keeps_its_order() -> None:
    """amqtt armed a timer for every packet read (``asyncio.wait_for`` with the keepalive)
    and re-armed one for every packet sent: each a push onto the heap of every connection's
    timers. Counted here on the broker's own loop, run in this process on real sockets; what
    is left is the PUBACK wait of each QoS 1 message the broker sends."""
    asyncio.run(_check_timers_per_message(200))


async def _check_timers_per_message(messages: int) -> None:
    from pm.broker.amqtt._broker import PuppetmasterBroker
    from pm.broker.amqtt._config import amqtt_config, bound_endpoint

    broker = PuppetmasterBroker(amqtt_config("127.0.0.1", 0))
    broker.plugins_manager._is_topic_filtering_enabled = False
    await broker.start()
    try:
        host, port = bound_endpoint(broker)
        subscriber, publisher = await subscriber_and_publisher(host, port, "burst/x")

        loop = asyncio.get_running_loop()
        timers = 0
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            nonlocal timers
            timers += 1
            return call_at(when, callback, *args, **kwargs)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        try:
            publisher[1].write(
                b"".join(
                    publish_qos1_packet("burst/x", n, b"%d" % n) for n in range(1, messages + 1)
                )
            )
            payloads = []
            for _ in range(messages):
                packet = await read_packet(subscriber[0])
                assert packet[0] & 0xF6 == 0x32, packet  # PUBLISH, QoS 1
                topic_length = int.from_bytes(packet[2:4], "big")
                packet_id = packet[4 + topic_length : 6 + topic_length]
                payloads.append(packet[6 + topic_length :])
                subscriber[1].write(puback_packet(int.from_bytes(packet_id, "big")))
            acknowledged = [await read_packet(publisher[0]) for _ in range(messages)]
            # The subscriber's PUBACKs are handled once its PINGREQ is answered (in order).
            subscriber[1].write(PINGREQ)
            assert await read_packet(subscriber[0]) == PINGRESP
        finally:
            loop.call_at = call_at  # type: ignore[method-assign]
        assert payloads == [b"%d" % n for n in range(1, messages + 1)]
        assert acknowledged == [puback_packet(n) for n in range(1, messages + 1)]
        # amqtt's: ~5 per message (2 packets read, 2 sent, the PUBACK wait). Ours: the wait.
        assert timers <= messages * 1.2, timers
        for _, writer in (subscriber, publisher):
            writer.close()
    finally:
        await broker.shutdown()
