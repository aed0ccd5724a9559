"""A plain threaded paho requester: the other candidate for the true ceiling of scenario (1).

paho-mqtt as most Python programs use it: ``loop_start()`` runs the network loop in its own
thread, the caller publishes from its thread, answers arrive in ``on_message`` on paho's
thread. QoS 1 both ways, like the gateway; no cap on messages in flight or queued;
``TCP_NODELAY`` set (paho leaves it off, and Nagle with delayed ACKs would measure the kernel,
not the client). Answers are counted by the ``"id":`` digits, as :mod:`bench._fast_requester`
does. The issue that asked for a true ceiling measured one like it at 2,092 round trips/s on
10,000 devices.

Error handling: a refused connection or an unknown answer id raises
:exc:`~bench._fast_requester.FastRequesterError`; a run longer than ``timeout`` raises
:exc:`TimeoutError`. Blocking: call it in a worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
import uuid
from typing import Any

import msgspec
import paho.mqtt.client as paho

from bench._fast_requester import ANSWER_FILTER, FastRequesterError, answer_id

_request_ids = itertools.count(4 * 10**12)
_encode = msgspec.json.Encoder().encode


def paho_threaded_round_trips(
    port: int, devices: list[str], *, host: str = "127.0.0.1", timeout: float = 600.0
) -> float:
    """One request to each device at once; returns round trips per second, first publish to
    the last answer."""
    requests = []
    for device in devices:
        request_id = next(_request_ids)
        body = {
            "id": request_id,
            "method": "get",
            "resource": "/bench",
            "data": {},
            "tunnel": f"/bench/{device}/answer",
        }
        requests.append((request_id, f"/remote/{device}", _encode(body)))
    unanswered = {request_id for request_id, _, _ in requests}
    lock = threading.Lock()
    subscribed = threading.Event()
    answered = threading.Event()
    problems: list[str] = []

    def on_connect(client: paho.Client, _data: Any, _flags: Any, code: Any, _p: Any) -> None:  # noqa: ANN401
        if code.is_failure:
            problems.append(f"CONNECT refused: {code}")
            subscribed.set()
            return
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(ANSWER_FILTER, 1)

    def on_subscribe(*_args: Any) -> None:  # noqa: ANN401
        subscribed.set()

    def on_message(_client: paho.Client, _data: Any, message: paho.MQTTMessage) -> None:  # noqa: ANN401
        request_id = answer_id(message.payload)
        with lock:
            if request_id not in unanswered:
                problems.append(f"answer to an unknown request {request_id}")
            unanswered.discard(request_id)
            if not unanswered:
                answered.set()

    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"bench-paho-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv311,
    )
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    client.loop_start()
    try:
        if not subscribed.wait(30) or problems:
            raise FastRequesterError(problems[0] if problems else "no SUBACK in 30 s")
        started = time.perf_counter()
        for _request_id, topic, payload in requests:
            if client.publish(topic, payload, 1).rc != paho.MQTT_ERR_SUCCESS:
                raise FastRequesterError("paho refused a publish")
        if not answered.wait(timeout):
            raise TimeoutError(f"{len(unanswered)} of {len(devices)} unanswered after {timeout} s")
        seconds = time.perf_counter() - started
        if problems:
            raise FastRequesterError(problems[0])
        return len(devices) / seconds
    finally:
        client.disconnect()
        client.loop_stop()
