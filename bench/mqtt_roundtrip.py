"""QoS request/response round trips per second between two pm.mqtt clients.

A requester publishes to ``bench/request/<n>``, a responder subscribed to ``bench/request/+``
echoes to ``bench/response``, and the requester waits for that echo before sending the next one:
the figure is the latency-bound rate one gateway-device exchange can reach through the broker.
With ``--burst`` the requester publishes all N at once and waits for every echo (the shape of
a job's dispatch).

Usage (mosquitto started by hand, e.g. ``mosquitto -c bench.conf`` with
``set_tcp_nodelay true``)::

    .venv/bin/python -m bench.mqtt_roundtrip [HOST] [PORT] [-n 2000] [--qos 1]

or through the gateway's embedded amqtt broker, started on a free port for the run::

    .venv/bin/python -m bench.mqtt_roundtrip --embedded [-n 2000]

``--without-nodelay`` turns TCP_NODELAY off again on both clients' sockets (what paho does
by default), ``--max-inflight K`` caps paho's unacknowledged QoS 1 messages (paho's default
is 20; the gateway sets 0, no cap): both show what the client settings are worth
(docs/mqtt-client.md).
"""

from __future__ import annotations

import argparse
import math
import socket
from functools import partial
from typing import Any

import trio

from pm.broker import run_embedded_broker
from pm.config import BrokerConfig
from pm.mqtt import MqttClient, open_mqtt_client


def _disable_nodelay(client: MqttClient) -> None:
    # Benchmark-only reach into the live connection: pm.mqtt always sets TCP_NODELAY, and the
    # point here is to measure what that is worth.
    connection = client._connection
    assert connection is not None
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)


async def measure(
    host: str,
    port: int,
    count: int,
    qos: int,
    *,
    burst: bool = False,
    max_inflight: int = 0,
    nodelay: bool = True,
) -> float:
    """Run ``count`` round trips (in sequence, or all at once if ``burst``); returns round
    trips per second.

    Error handling: raises :exc:`TimeoutError` if a single answer takes more than 5 s (lost
    message or dead broker; in a burst: the whole burst more than 5 s plus 10 ms per message)
    or the broker cannot be reached within 10 s.
    """
    answered = trio.Event()
    answers = 0
    responder: MqttClient | None = None

    def on_answer(topic: str, payload: bytes) -> None:
        nonlocal answers
        answers += 1
        if not burst or answers == count:
            answered.set()

    def on_request(topic: str, payload: bytes) -> None:
        assert responder is not None
        responder.publish("bench/response", payload, qos)

    with trio.fail_after(10) as connect_guard:
        async with (
            open_mqtt_client(
                host,
                port,
                client_id="bench-requester",
                on_message=on_answer,
                max_inflight=max_inflight,
            ) as requester,
            open_mqtt_client(
                host, port, client_id="bench-responder", on_message=on_request
            ) as responder_client,
        ):
            responder = responder_client
            await responder.subscribe("bench/request/+", qos)
            await requester.subscribe("bench/response", qos)
            if not nodelay:
                _disable_nodelay(requester)
                _disable_nodelay(responder_client)
            # Connected: from here on only the per-request guard applies.
            connect_guard.deadline = math.inf
            started = trio.current_time()
            if burst:
                for n in range(count):
                    requester.publish(f"bench/request/{n}", b"x" * 64, qos)
                with trio.fail_after(5 + count / 100):
                    await answered.wait()
                return count / (trio.current_time() - started)
            for n in range(count):
                answered = trio.Event()
                requester.publish(f"bench/request/{n}", b"x" * 64, qos)
                with trio.fail_after(5):
                    await answered.wait()
            return count / (trio.current_time() - started)


async def measure_embedded(count: int, qos: int, **options: Any) -> tuple[float, int]:
    """Start the embedded broker (child process, free port), measure through it."""
    async with trio.open_nursery() as nursery:
        broker = await nursery.start(run_embedded_broker, BrokerConfig(port=0))
        rate = await measure(broker.host, broker.port, count, qos, **options)
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
    parser.add_argument("--burst", action="store_true", help="publish all N at once")
    parser.add_argument(
        "--max-inflight", type=int, default=0, help="paho's cap on unacknowledged QoS 1 (0: none)"
    )
    parser.add_argument(
        "--without-nodelay", action="store_true", help="turn TCP_NODELAY off on both clients"
    )
    args = parser.parse_args()
    options = {
        "burst": args.burst,
        "max_inflight": args.max_inflight,
        "nodelay": not args.without_nodelay,
    }
    if args.embedded:
        rate, args.port = trio.run(partial(measure_embedded, args.count, args.qos, **options))
        args.host = "embedded amqtt 127.0.0.1"
    else:
        rate = trio.run(partial(measure, args.host, args.port, args.count, args.qos, **options))
    shape = "burst of" if args.burst else "sequential"
    settings = (
        f"max_inflight {args.max_inflight}, TCP_NODELAY {'off' if args.without_nodelay else 'on'}"
    )
    print(
        f"{shape} {args.count} QoS {args.qos} round trips via {args.host}:{args.port} "
        f"({settings}): {rate:.0f} rt/s"
    )


if __name__ == "__main__":
    main()
