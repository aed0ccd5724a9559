"""The amqtt child's presence bookkeeping (pure; the broker around it is tested end to end in
tests/integration/test_presence.py)."""

from __future__ import annotations

import pytest

from pm.broker._presence import BrokerPresence, PresenceTopics

TOPICS = PresenceTopics(request="/remote/{device}", status="/remote/{device}/status")


def test_a_subscription_to_a_request_topic_makes_its_device_online_once() -> None:
    presence = BrokerPresence(TOPICS)
    assert presence.subscribed("c1", "/remote/aa") == "aa"
    assert presence.subscribed("c2", "/remote/aa") is None  # already online
    assert presence.unsubscribed("c1", "/remote/aa") is None  # c2 still listens
    assert presence.unsubscribed("c2", "/remote/aa") == "aa"
    assert len(presence) == 0


@pytest.mark.parametrize(
    "topic_filter", ["/remote/+", "/remote/#", "/remote/aa/response", "/other/aa", "/remote/"]
)
def test_only_exact_request_topics_name_a_device(topic_filter: str) -> None:
    presence = BrokerPresence(TOPICS)
    assert presence.subscribed("gateway", topic_filter) is None
    assert len(presence) == 0


def test_a_connection_that_ends_takes_its_devices_offline() -> None:
    presence = BrokerPresence(TOPICS)
    for device in ("aa", "bb"):
        presence.subscribed("mux", f"/remote/{device}")
    presence.subscribed("other", "/remote/cc")
    assert presence.disconnected("mux") == ["aa", "bb"]
    assert presence.disconnected("mux") == []
    # Its subscriptions deleted afterwards (a clean session's cleanup) announce nothing more.
    assert presence.unsubscribed("mux", "/remote/aa") is None
    assert len(presence) == 1
    assert presence.status_topic("aa") == "/remote/aa/status"


def test_a_takeover_whose_old_connection_ends_late_leaves_the_device_online() -> None:
    # amqtt waits for the old connection of a client id to end only so long: under load the
    # new one subscribed first, and the old one's end took the device offline for good (a
    # job's tasks stayed `sent` to devices the gateway held offline).
    presence = BrokerPresence(TOPICS)
    old = presence.connected("dev")
    assert presence.subscribed("dev", "/remote/aa") == "aa"
    new = presence.connected("dev")
    assert presence.subscribed("dev", "/remote/aa") is None  # online already
    assert presence.disconnected("dev", old) == []
    assert len(presence) == 1
    assert presence.disconnected("dev", new) == ["aa"]
    # The usual order (the old connection ends first) is unchanged.
    first = presence.connected("dev")
    presence.subscribed("dev", "/remote/aa")
    assert presence.disconnected("dev", first) == ["aa"]
    presence.connected("dev")
    assert presence.subscribed("dev", "/remote/aa") == "aa"


def test_topics_from_the_command_line_are_checked() -> None:
    assert PresenceTopics.from_json('{"request": "r/{device}", "status": "s/{device}"}') == (
        PresenceTopics(request="r/{device}", status="s/{device}")
    )
    for bad in ("[]", '{"request": "r"}', '{"request": "r", "status": "s/{device}"}', "{"):
        with pytest.raises(ValueError, match="--presence"):
            PresenceTopics.from_json(bad)
