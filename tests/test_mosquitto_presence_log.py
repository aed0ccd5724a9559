"""Presence read from mosquitto's log (pm.broker.mosquitto._presence_log): pure, lines in,
announcements out. The lines are mosquitto 2.0.11's own, as its log printed them here
(``log_timestamp false``); the real mosquitto is in tests/integration/test_presence.py."""

from __future__ import annotations

from pm.broker._presence import PresenceTopics
from pm.broker.mosquitto._presence_log import MosquittoLogPresence

TOPICS = PresenceTopics(request="/remote/{device}", status="/remote/{device}/status")
ONLINE = b"online"
OFFLINE = b"offline"


def _feed(reader: MosquittoLogPresence, *lines: str) -> list[tuple[str, bytes]]:
    announced: list[tuple[str, bytes]] = []
    for line in lines:
        result = reader.feed(line)
        assert result is not None, line
        announced += result
    return announced


def test_a_subscription_to_a_request_topic_is_online_until_the_connection_ends() -> None:
    reader = MosquittoLogPresence(TOPICS)
    assert _feed(
        reader,
        "New connection from 127.0.0.1:38913 on port 18999.",
        "New client connected from 127.0.0.1:38913 as sim-mux-1 (p2, c1, k60).",
        "sim-mux-1 1 /remote/d1",
        "sim-mux-1 1 /remote/d2",
        "sim-mux-1 0 /remote/+/response",  # a wildcard names no device
    ) == [("/remote/d1/status", ONLINE), ("/remote/d2/status", ONLINE)]
    assert _feed(reader, "sim-mux-1 /remote/d1") == [("/remote/d1/status", OFFLINE)]
    assert _feed(reader, "Client sim-mux-1 closed its connection.") == [
        ("/remote/d2/status", OFFLINE)
    ]


def test_every_way_a_connection_ends_takes_its_devices_offline() -> None:
    endings = [
        "Client {} closed its connection.",
        "Client {} disconnected.",
        "Client {} disconnected: connection lost.",
        "Client {} disconnected due to protocol error.",
        "Client {} disconnected, not authorised.",
        "Client {} has exceeded timeout, disconnecting.",
        "Client {} been disconnected by administrative action.",
        "Client {} already connected, closing old connection.",
        "Bad socket read/write on client {}: Connection reset by peer",
    ]
    for ending in endings:
        reader = MosquittoLogPresence(TOPICS)
        client = "a device with spaces"
        _feed(reader, f"New client connected from 127.0.0.1:1 as {client} (p2, c1, k30, u'x').")
        assert _feed(reader, f"{client} 1 /remote/dev") == [("/remote/dev/status", ONLINE)]
        assert _feed(reader, ending.format(client)) == [("/remote/dev/status", OFFLINE)], ending


def test_two_clients_holding_one_device_keep_it_online_until_both_let_go() -> None:
    reader = MosquittoLogPresence(TOPICS)
    assert _feed(reader, "old 1 /remote/dev", "new 1 /remote/dev") == [
        ("/remote/dev/status", ONLINE)
    ]
    assert _feed(reader, "Client old disconnected.") == []
    assert _feed(reader, "Client new disconnected.") == [("/remote/dev/status", OFFLINE)]


def test_a_persistent_session_is_online_again_when_it_reconnects_without_subscribing() -> None:
    reader = MosquittoLogPresence(TOPICS)
    _feed(reader, "New client connected from 127.0.0.1:1 as keeps (p2, c0, k60).")
    assert _feed(reader, "keeps 1 /remote/dev") == [("/remote/dev/status", ONLINE)]
    assert _feed(reader, "Client keeps disconnected.") == [("/remote/dev/status", OFFLINE)]
    assert _feed(reader, "New client connected from 127.0.0.1:2 as keeps (p2, c0, k60).") == [
        ("/remote/dev/status", ONLINE)
    ]
    # Connecting with a clean session drops what mosquitto kept: nothing to announce.
    _feed(reader, "Client keeps disconnected.")
    assert _feed(reader, "New client connected from 127.0.0.1:3 as keeps (p2, c1, k60).") == []


def test_other_lines_are_not_presence_and_startup_notices_are_dropped() -> None:
    reader = MosquittoLogPresence(TOPICS)
    for quiet in (
        "mosquitto version 2.0.11 starting",
        "Config loaded from /tmp/pm-mosquitto-x/mosquitto.conf.",
        "Opening ipv4 listen socket on port 18999.",
        "mosquitto version 2.0.11 running",
        "New connection from 127.0.0.1:40477 on port 18999.",
        "pm-gateway 1 /remote/+/response",  # the gateway's own subscriptions
        "somebody 0 not/a/request/topic",
    ):
        assert reader.feed(quiet) == [], quiet
    for forwarded in (
        "Error: Address already in use",
        "Warning: Outgoing messages are being dropped for client x.",
        "somebody not/a/request/topic",  # an UNSUBSCRIBE, or any two words: passed on
    ):
        assert reader.feed(forwarded) is None, forwarded
