"""Sequential QoS request/response round trips per second between two pm.mqtt clients.

A requester publishes to ``bench/request/<n>``, a responder subscribed to ``bench/request/+``
echoes to ``bench/response``, and the requester waits for that echo before sending the next one:
the figure is the latency-bound rate one gateway-device exchange can reach through the broker.

Usage (mosquitto started by hand, e.g. ``mosquitto -c bench.conf`` with
``set_tcp_nodelay true``)::

    .venv/bin/python bench/mqtt_roundtrip.py [HOST] [PORT] [-n 2000] [--qos 1]

or through the gateway's embedded amqtt broker, started on a free port for the run::

    .venv/bin/python bench/mqtt_roundtrip.py --embedded [-n 2000]
"""

from __future__ import annotations

import argparse
import math

import trio

from pm.broker import run_embedded_broker
from pm.config import BrokerConfig
from pm.mqtt import MqttClient, open_mqtt_client


async def measure(host: str, port: int, count: int, qos: int) -> float:
    """Run ``count`` sequential round trips; returns round trips per second.

    Error handling: raises :exc:`TimeoutError` if a single answer takes more than 5 s (lost
    message or dead broker) or the broker cannot be reached within 10 s.
    """
    answered = trio.Event()
    responder: MqttClient | None = None

    def on_answer(topic: str, payload: bytes) -> None:
        answered.set()

    def on_request(topic: str, payload: bytes) -> None:
        assert responder is not None
        responder.publish("bench/response", payload, qos)

    with trio.fail_after(10) as connect_guard:
        async with (
            open_mqtt_client(
                host, port, client_id="bench-requester", on_message=on_answer
            ) as requester,
            open_mqtt_client(
                host, port, client_id="bench-responder", on_message=on_request
            ) as responder_client,
        ):
            responder = responder_client
            await responder.subscribe("bench/request/+", qos)
            await requester.subscribe("bench/response", qos)
            # Connected: from here on only the per-request guard applies.
            connect_guard.deadline = math.inf
            started = trio.current_time()
            for n in range(count):
                answered = trio.Event()
                requester.publish(f"bench/request/{n}", b"x" * 64, qos)
                with trio.fail_after(5):
                    await answered.wait()
            return count / (trio.current_time() - started)


async def measure_embedded(count: int, qos: int) -> tuple[float, int]:
    """Start the embedded broker (child process, free port), measure through it."""
    async with trio.open_nursery() as nursery:
        broker = await nursery.start(run_embedded_broker, BrokerConfig(port=0))
        rate = await measure(broker.host, broker.port, count, qos)
        nursery.cancel_scope.cancel()
    return rate, broker.port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=1883)
    parser.add_argument("-n", "--count", type=int, default=2000)
    parser.add_argument("--qos", type=int, default=1, choices=(0, 1))
    parser.add_argument(
        "--embedded", action="store_true", help="start the embedded amqtt broker and use it"
    )
    args = parser.parse_args()
    if args.embedded:
        rate, args.port = trio.run(measure_embedded, args.count, args.qos)
        args.host = "embedded amqtt 127.0.0.1"
    else:
        rate = trio.run(measure, args.host, args.port, args.count, args.qos)
    print(
        f"{args.count} sequential QoS {args.qos} round trips via {args.host}:{args.port}: "
        f"{rate:.0f} rt/s"
    )


if __name__ == "__main__":
    main()
