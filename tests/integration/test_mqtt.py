"""pm.mqtt against a real mosquitto: round trip, burst, reconnect (broker restart and silent
broker), refused subscriptions, callback failures, first-connect retries, shutdown.

Every test runs under an absolute ``fail_after`` far above its normal duration, so a hang fails
fast instead of blocking CI.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from pm.mqtt import MqttClient, MqttSubscribeError, open_mqtt_client
from tests.integration.brokers import Inbox, MosquittoBroker
from tests.waiting import poll_until

# Hang guard per test; each normally takes well under a second (the keepalive ones ~2.5 s).
_GUARD = 10.0
# Fast reconnects keep the reconnect test short; production defaults are 0.1-5 s.
_FAST_RECONNECT = {"reconnect_min_delay": 0.05, "reconnect_max_delay": 0.2}


async def _wait_until_disconnected(client: MqttClient) -> None:
    # Polling on purpose: MqttClient exposes no "lost" event, and the test must not need one.
    while client.connected:  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_qos1_request_response_round_trip(mosquitto: MosquittoBroker) -> None:
    host, port = mosquitto.host, mosquitto.port
    answers = Inbox()
    with trio.fail_after(_GUARD):
        async with open_mqtt_client(host, port, client_id="requester", on_message=answers) as req:
            responder: MqttClient | None = None

            def echo(topic: str, payload: bytes) -> None:
                assert responder is not None
                assert responder.publish("test/response", b"re:" + payload)

            async with open_mqtt_client(host, port, client_id="responder", on_message=echo) as rsp:
                responder = rsp
                await rsp.subscribe("test/request")
                await req.subscribe("test/response")
                for n in range(3):
                    assert req.publish("test/request", f"ping {n}".encode())
                    answer = await answers.receive.receive()
                    assert answer == ("test/response", f"re:ping {n}".encode())
                assert (req.generation, rsp.generation) == (1, 1)


async def test_burst_of_1000_qos1_messages_all_arrive(mosquitto: MosquittoBroker) -> None:
    host, port = mosquitto.host, mosquitto.port
    inbox = Inbox()
    count = 1000
    with trio.fail_after(_GUARD):
        async with (
            open_mqtt_client(host, port, client_id="sink", on_message=inbox) as sink,
            open_mqtt_client(host, port, client_id="source", on_message=inbox) as source,
        ):
            await sink.subscribe("burst/+")
            for n in range(count):
                assert source.publish(f"burst/{n % 7}", str(n).encode())
            received = {int((await inbox.receive.receive())[1]) for _ in range(count)}
            assert received == set(range(count))


async def test_burst_of_mixed_sizes_split_across_read_ahead_chunks(
    mosquitto: MosquittoBroker,
) -> None:
    # The client reads the socket 64 KiB at a time and serves paho's per-packet reads from
    # that: packets of 0-150 KB cut at every kind of boundary must all arrive intact.
    host, port = mosquitto.host, mosquitto.port
    inbox = Inbox()
    sizes = [(n * 7919) % 150_000 for n in range(120)] + [0, 1, 2, 127, 128, 16_383, 16_384]
    with trio.fail_after(_GUARD):
        async with (
            open_mqtt_client(host, port, client_id="sink", on_message=inbox) as sink,
            open_mqtt_client(host, port, client_id="source", on_message=inbox) as source,
        ):
            await sink.subscribe("sizes/+")
            for n, size in enumerate(sizes):
                assert source.publish(f"sizes/{n}", bytes([n % 251]) * size)
            received = dict([await inbox.receive.receive() for _ in sizes])
    assert received == {f"sizes/{n}": bytes([n % 251]) * size for n, size in enumerate(sizes)}


async def test_every_tracked_publish_of_a_burst_learns_of_its_puback(
    mosquitto: MosquittoBroker,
) -> None:
    # The client reads MQTT 3.1.1 PUBACKs itself (pm/mqtt/_paho.py), not through paho's
    # decoder: each must still mark its own message published, and only that one.
    with trio.fail_after(_GUARD):
        async with open_mqtt_client(
            mosquitto.host, mosquitto.port, client_id="acks", on_message=Inbox()
        ) as client:
            acknowledgements = [client.publish_tracked(f"acks/{n}", b"x") for n in range(500)]
            assert all(a is not None for a in acknowledgements)
            # No checkpoint since: no PUBACK can have been read yet.
            assert not any(a.is_published() for a in acknowledgements if a)
            await poll_until(lambda: all(a.is_published() for a in acknowledgements if a))


@pytest.mark.parametrize("max_inflight", [0, 3])
async def test_publishes_coded_here_and_by_paho_keep_their_order_and_the_inflight_cap(
    mosquitto: MosquittoBroker, max_inflight: int
) -> None:
    # publish() encodes its packets itself (pm/mqtt/_paho.py) and publish_tracked() through
    # paho: on one topic they must arrive in the order published, with paho's in-flight cap
    # (3: paho queues behind it) counting both and freeing every slot at its PUBACK.
    host, port = mosquitto.host, mosquitto.port
    inbox = Inbox()
    with trio.fail_after(_GUARD):
        async with (
            open_mqtt_client(host, port, client_id="sink", on_message=inbox) as sink,
            open_mqtt_client(
                host, port, client_id="source", on_message=Inbox(), max_inflight=max_inflight
            ) as source,
        ):
            await sink.subscribe("order", qos=1)
            acknowledgements = []
            for burst in range(3):  # a leaked slot would stall a later burst behind the cap
                for n in range(40):
                    payload = f"{burst}:{n}".encode()
                    if n % 7 == 3:
                        acknowledgements.append(source.publish_tracked("order", payload))
                    else:
                        assert source.publish("order", payload)
                received = [(await inbox.receive.receive())[1] for _ in range(40)]
                assert received == [f"{burst}:{n}".encode() for n in range(40)]
            await poll_until(
                lambda: all(a is not None and a.is_published() for a in acknowledgements)
            )


async def test_reconnects_after_broker_restart_and_restores_subscription(
    mosquitto: MosquittoBroker,
) -> None:
    host, port = mosquitto.host, mosquitto.port
    inbox = Inbox()
    generations: list[int] = []
    with trio.fail_after(_GUARD):
        async with (
            open_mqtt_client(
                host,
                port,
                client_id="survivor",
                on_message=inbox,
                on_connect=generations.append,
                **_FAST_RECONNECT,
            ) as client,
            open_mqtt_client(
                host, port, client_id="publisher", on_message=inbox, **_FAST_RECONNECT
            ) as publisher,
        ):
            await client.subscribe("restart/#")
            assert generations == [1]

            await trio.to_thread.run_sync(mosquitto.stop)
            await _wait_until_disconnected(client)
            assert client.publish("restart/x", b"lost") is False

            async with trio.open_nursery() as nursery:
                # Parked until the reconnect; "connected" includes the restored subscription,
                # so the client receives its own message.
                nursery.start_soon(client.publish_when_connected, "restart/self", b"queued")
                await trio.to_thread.run_sync(mosquitto.start)
                await client.wait_connected()
                await publisher.wait_connected()
            assert (client.generation, client.reconnects, generations) == (2, 1, [1, 2])
            assert await inbox.receive.receive() == ("restart/self", b"queued")

            # No subscribe() by hand: the client restored "restart/#" itself.
            assert publisher.publish("restart/again", b"hello")
            assert await inbox.receive.receive() == ("restart/again", b"hello")


async def test_silent_broker_is_detected_by_keepalive(mosquitto: MosquittoBroker) -> None:
    host, port = mosquitto.host, mosquitto.port
    with trio.fail_after(_GUARD):
        async with open_mqtt_client(
            host, port, client_id="watchful", on_message=Inbox(), keepalive=1, **_FAST_RECONNECT
        ) as client:
            mosquitto.pause()
            # The TCP connection stays up: only the missing PINGRESP can reveal the dead broker
            # (after 1-2 keepalives: loop_misc() runs when a keepalive is due).
            await _wait_until_disconnected(client)
            mosquitto.resume()
            await client.wait_connected()
            assert (client.generation, client.reconnects) == (2, 1)


class _SupervisorSteps(trio.abc.Instrument):
    """Counts the task steps of ``client``'s supervising task (where loop_misc() runs)."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        frame: Any = getattr(task.coro, "cr_frame", None)
        if frame is not None and frame.f_code.co_name == "_run":
            if frame.f_locals.get("self") is self.client:
                self.steps += 1


async def test_an_idle_connection_pings_on_time_waking_once_per_keepalive(
    mosquitto: MosquittoBroker,
) -> None:
    # loop_misc() runs when a keepalive has passed since the last packet (it ran four times
    # per keepalive): mosquitto drops a client silent for 1.5 keepalives, so two periods idle
    # show the PINGREQs still leave in time. Real time: paho and mosquitto time keepalive on
    # the system's clock, in whole seconds.
    host, port = mosquitto.host, mosquitto.port
    with trio.fail_after(_GUARD):
        async with open_mqtt_client(
            host, port, client_id="idle", on_message=Inbox(), keepalive=1
        ) as client:
            supervisor = _SupervisorSteps(client)
            trio.lowlevel.add_instrument(supervisor)
            try:
                await trio.sleep(2.2)
            finally:
                trio.lowlevel.remove_instrument(supervisor)
            assert client.connected
    assert (client.generation, client.reconnects) == (1, 0)
    # One wake-up per keepalive (a PINGREQ each), not four (8-9 in 2.2 s before).
    assert supervisor.steps <= 4


async def test_raising_on_message_is_logged_and_counted_not_fatal(
    mosquitto: MosquittoBroker,
) -> None:
    host, port = mosquitto.host, mosquitto.port
    inbox = Inbox()

    def fragile(topic: str, payload: bytes) -> None:
        if payload == b"boom":
            raise ValueError("handler bug")
        inbox(topic, payload)

    with trio.fail_after(_GUARD):
        async with (
            open_mqtt_client(host, port, client_id="fragile", on_message=fragile) as client,
            open_mqtt_client(host, port, client_id="sender", on_message=inbox) as sender,
        ):
            await client.subscribe("fragile")
            assert sender.publish("fragile", b"boom")
            assert sender.publish("fragile", b"fine")
            assert await inbox.receive.receive() == ("fragile", b"fine")
            assert client.connected
            assert client.callback_errors == 1
            assert client.generation == 1


async def test_refused_subscription_raises_now_and_after_reconnect(
    mosquitto: MosquittoBroker,
) -> None:
    host, port = mosquitto.host, mosquitto.port
    with trio.fail_after(_GUARD):
        with pytest.RaisesGroup(MqttSubscribeError, flatten_subgroups=True):
            async with open_mqtt_client(
                host, port, client_id="keeper", on_message=Inbox(), **_FAST_RECONNECT
            ) as keeper:
                await keeper.subscribe("qos/one", qos=1)
                # The broker comes back granting at most QoS 0 (mosquitto answers a QoS 1
                # SUBSCRIBE with "granted QoS 0"): restoring fails, and the client must stop
                # rather than carry on with a weaker subscription than it was granted.
                await trio.to_thread.run_sync(mosquitto.stop)
                mosquitto.configure("max_qos 0\n")
                await trio.to_thread.run_sync(mosquitto.start)
                await trio.sleep_forever()

        async with open_mqtt_client(host, port, client_id="nosy", on_message=Inbox()) as nosy:
            downgraded = "'qos/one' .asked QoS 1, got Granted QoS 0"
            with pytest.raises(MqttSubscribeError, match=downgraded):
                await nosy.subscribe("qos/one", qos=1)
            await nosy.subscribe("qos/zero", qos=0)
            assert nosy.connected


async def test_first_connection_is_retried_until_the_broker_is_up(
    mosquitto: MosquittoBroker,
) -> None:
    host, port = mosquitto.host, mosquitto.port
    mosquitto.stop()
    with trio.fail_after(_GUARD):
        async with trio.open_nursery() as nursery:
            # Start the broker only once the client is already retrying.
            nursery.start_soon(trio.to_thread.run_sync, mosquitto.start)
            async with open_mqtt_client(
                host, port, client_id="early", on_message=Inbox(), **_FAST_RECONNECT
            ) as client:
                assert client.connected
                assert client.generation == 1


async def test_exit_disconnects_and_wakes_waiters(mosquitto: MosquittoBroker) -> None:
    host, port = mosquitto.host, mosquitto.port
    with trio.fail_after(_GUARD):
        async with open_mqtt_client(host, port, client_id="leaver", on_message=Inbox()) as client:
            pass
        assert not client.connected
        assert client.publish("after/exit", b"x") is False
        try:
            await client.wait_connected()
        except trio.ClosedResourceError:
            pass
        else:
            raise AssertionError("wait_connected() returned on a closed client")


async def test_diverted_topic_tracked_publish_resubscribe_and_forced_reconnect(
    mosquitto: MosquittoBroker,
) -> None:
    # What the answer-path probe uses: one exact topic goes to its own handler, every message
    # is counted, a tracked publish learns of its PUBACK, and a re-subscribe on the live
    # connection restores a subscription the broker forgot (here: unsubscribed behind the
    # client's back).
    host, port = mosquitto.host, mosquitto.port
    inbox, diverted = Inbox(), Inbox()
    with trio.fail_after(_GUARD):
        async with open_mqtt_client(host, port, client_id="prober", on_message=inbox) as client:
            await client.subscribe("probe/+")
            client.divert("probe/self", diverted)
            acknowledgement = client.publish_tracked("probe/self", b"1")
            assert acknowledgement is not None
            assert client.publish("probe/other", b"2")
            assert await diverted.receive.receive() == ("probe/self", b"1")
            assert await inbox.receive.receive() == ("probe/other", b"2")
            assert acknowledgement.is_published() and client.messages_received == 2

            assert client._connection is not None
            client._connection.paho.unsubscribe("probe/+")
            assert client.publish("probe/lost", b"3")
            assert await client.resubscribe()
            assert client.publish("probe/found", b"4")
            # In order on one connection: the message sent while unsubscribed never comes.
            assert await inbox.receive.receive() == ("probe/found", b"4")
            client.divert("probe/self", None)
            assert client.publish("probe/self", b"5")
            assert await inbox.receive.receive() == ("probe/self", b"5")
            assert client.generation == 1 and client.reconnects == 0
            # The last resort: a fresh connection, whose subscriptions are restored.
            client.drop_connection("test: forced")
            assert not client.connected
            await client.wait_connected()
            assert client.generation == 2 and client.reconnects == 1
            assert client.publish("probe/again", b"6")
            assert await inbox.receive.receive() == ("probe/again", b"6")
