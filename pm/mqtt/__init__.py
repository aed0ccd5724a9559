"""An MQTT 3.1.1 client for trio: paho-mqtt driven by trio's I/O waits, no threads at steady state.

paho does the protocol (packet codec, QoS 1 bookkeeping, keepalive), except the packets of the
hot path (PUBLISH QoS 0/1 and PUBACK, both ways), coded by :mod:`pm.mqtt._packets` with far
fewer Python calls (docs/mqtt-client.md); this module does the I/O.
Once connected, one task calls ``loop_read()`` whenever the socket is readable and writes what
the packets it handled queued (PUBACKs, answers published from ``on_message``); another writes
what other tasks publish and whatever the kernel could not take at once (paho tells us through
its ``on_socket_register_write`` callback); the supervising task calls ``loop_misc()`` when a
keepalive is due. paho's callbacks therefore run on the trio thread, between checkpoints,
which is what lets :meth:`MqttClient.publish` be a plain synchronous call. Only the blocking TCP
connect runs in a worker thread.

Restart policy: every connection uses a fresh paho client with a clean session. When the
connection is lost (socket error, broker gone, keepalive timeout) the client logs it once,
reconnects forever with exponential backoff and jitter, re-subscribes to every filter that
:meth:`MqttClient.subscribe` ever granted, and only then reports itself connected and calls
``on_connect(generation)``. QoS 1 messages that were in flight when the connection dropped are
*not* resent by this module: republishing them is the caller's decision (the gateway does it
from ``on_connect``), which avoids a second, hidden copy.

A broker can also stop delivering a subscription while the connection stays up (keepalive
cannot see that): :func:`open_answer_path_probe` publishes a probe through the client's own
subscription and repairs a lost one, re-subscribing (:meth:`MqttClient.resubscribe`), then
reconnecting (:meth:`MqttClient.drop_connection`); see :mod:`pm.mqtt._probe`.
"""

from ._client import Acknowledgement, MqttClient
from ._connection import MqttError, MqttSubscribeError
from ._open_client import open_mqtt_client
from ._open_connection import LastWill
from ._probe import AnswerPathProbe, open_answer_path_probe

__all__ = [
    "Acknowledgement",
    "AnswerPathProbe",
    "LastWill",
    "MqttClient",
    "MqttError",
    "MqttSubscribeError",
    "open_answer_path_probe",
    "open_mqtt_client",
]
