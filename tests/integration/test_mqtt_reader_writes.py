"""pm.mqtt against a real mosquitto: what a connection's reader queues while it handles packets
(answers published from ``on_message``, PUBACKs) it writes itself, without waking the writer
task; what the kernel cannot take at once is left to the writer, in order.

Every test runs under an absolute ``fail_after`` far above its normal duration.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from pm.mqtt import MqttClient, open_mqtt_client
from tests.integration.brokers import Inbox, MosquittoBroker

_GUARD = 10.0


class WriterSteps(trio.abc.Instrument):
    """Counts the task steps of the writer task of ``client``'s connections."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        frame: Any = getattr(task.coro, "cr_frame", None)
        if frame is None or frame.f_code.co_name != "write_loop":
            return
        if getattr(frame.f_locals.get("self"), "owner", None) is self.client:
            self.steps += 1


def _echo_to(responder: list[MqttClient], size: int) -> Any:
    def echo(topic: str, payload: bytes) -> None:
        answer = payload + b"." * size
        assert responder[0].publish("answers", answer)

    return echo


async def test_an_answer_published_from_on_message_leaves_without_waking_the_writer(
    mosquitto: MosquittoBroker,
) -> None:
    host, port = mosquitto.host, mosquitto.port
    answers = Inbox()
    responder: list[MqttClient] = []
    with trio.fail_after(_GUARD):
        async with (
            open_mqtt_client(host, port, client_id="asker", on_message=answers) as asker,
            open_mqtt_client(
                host, port, client_id="device", on_message=_echo_to(responder, 0)
            ) as device,
        ):
            responder.append(device)
            await device.subscribe("requests")
            await asker.subscribe("answers")
            writer = WriterSteps(device)
            trio.lowlevel.add_instrument(writer)
            try:
                for n in range(20):
                    assert asker.publish("requests", str(n).encode())
                    assert await answers.receive.receive() == ("answers", str(n).encode())
            finally:
                trio.lowlevel.remove_instrument(writer)
    # Each answer and the request's PUBACK left in the reader's own step (before: one writer
    # wake-up per request).
    assert writer.steps == 0


async def test_answers_larger_than_the_kernel_takes_at_once_arrive_whole_and_in_order(
    mosquitto: MosquittoBroker,
) -> None:
    # Answers of 256 KiB through a send buffer of a few KiB: the reader's write leaves most of
    # each answer queued, the writer task waits for room and writes the rest, in order.
    host, port = mosquitto.host, mosquitto.port
    answers = Inbox()
    responder: list[MqttClient] = []
    size = 256 * 1024
    count = 16
    with trio.fail_after(_GUARD):
        async with (
            open_mqtt_client(host, port, client_id="asker", on_message=answers) as asker,
            open_mqtt_client(
                host, port, client_id="device", on_message=_echo_to(responder, size)
            ) as device,
        ):
            responder.append(device)
            connection = device._connection
            assert connection is not None
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await device.subscribe("requests")
            await asker.subscribe("answers")
            writer = WriterSteps(device)
            trio.lowlevel.add_instrument(writer)
            try:
                for n in range(count):
                    assert asker.publish("requests", b"%03d" % n)
                received = [(await answers.receive.receive())[1] for _ in range(count)]
            finally:
                trio.lowlevel.remove_instrument(writer)
    assert received == [b"%03d" % n + b"." * size for n in range(count)]
    # The kernel's buffer filled: the writer did write (this test covers its path).
    assert writer.steps > 0


async def test_pubacks_alone_are_left_to_the_writer(mosquitto: MosquittoBroker) -> None:
    # A read that only acknowledges (the gateway's answers, handed to tasks that publish next)
    # wakes the writer as before, so the PUBACKs leave with what those tasks publish.
    host, port = mosquitto.host, mosquitto.port
    received = Inbox()
    with trio.fail_after(_GUARD):
        async with (
            open_mqtt_client(host, port, client_id="asker", on_message=Inbox()) as asker,
            open_mqtt_client(host, port, client_id="gateway", on_message=received) as gateway,
        ):
            await gateway.subscribe("answers")
            writer = WriterSteps(gateway)
            trio.lowlevel.add_instrument(writer)
            try:
                for n in range(5):
                    assert asker.publish("answers", str(n).encode())
                    assert await received.receive.receive() == ("answers", str(n).encode())
            finally:
                trio.lowlevel.remove_instrument(writer)
    # At least one wake-up of the writer for them (written by the reader itself: none). Not one
    # per message: under load one wake-up of the writer has been seen to carry two.
    assert writer.steps >= 1
