"""StatusTopicSource: status-topic messages to presence, bad ones counted."""

from __future__ import annotations

from collections import Counter

import pytest

from pm.presence import DevicePresence, Presence, PresenceBook
from pm.protocol import TopicTemplates
from pm.status_topic import BAD_STATUS, DeviceMessages, StatusTopicSource

TOPICS = TopicTemplates("/remote/{device}", "/remote/{device}/response", "/remote/{device}/status")


def _source() -> tuple[StatusTopicSource, PresenceBook, Counter[str]]:
    book, dropped = PresenceBook(), Counter[str]()
    return StatusTopicSource(book, TOPICS, dropped, wall_clock=lambda: 100.0), book, dropped


def test_births_and_wills_set_presence_with_normalized_ids() -> None:
    source, book, dropped = _source()
    assert source.on_message("/remote/00-0C-29-1C-E8-01/status", b"online")
    assert book.presence("00:0c:29:1c:e8:01") is Presence.ONLINE
    assert source.on_message("/remote/000c291ce801/status", b"offline\n")
    record = book.record("00:0c:29:1c:e8:01")
    assert record is not None and record.presence is Presence.OFFLINE
    assert record.disconnected_at == 100.0 and not dropped


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("/remote/dev/status", b"up"),
        ("/remote/dev/status", b'{"status": "online"}'),
        ("/remote/dev/status", b"\xff\xfe"),
        ("/remote/not a valid id/status", b"online"),
    ],
)
def test_bad_status_messages_are_ignored_and_counted(topic: str, payload: bytes) -> None:
    source, book, dropped = _source()
    assert source.on_message(topic, payload)
    assert dropped == Counter({BAD_STATUS: 1})
    assert len(book) == 0


def test_a_cleared_retained_status_is_ignored_without_counting() -> None:
    source, book, dropped = _source()
    assert source.on_message("/remote/dev/status", b"")
    assert not dropped and len(book) == 0


def test_other_topics_are_left_to_the_answer_path() -> None:
    source, book, dropped = _source()
    assert not source.on_message("/remote/dev/response", b"online")
    assert not source.on_message("/remote/a/b/status", b"online")
    assert not dropped
    # The answer moved its device's lastSeen (not its presence); the other topic nothing.
    assert book.record("dev") == DevicePresence(
        id="dev", presence=Presence.UNKNOWN, last_seen=100.0
    )
    assert len(book) == 1


def test_any_answer_moves_last_seen_and_an_invalid_id_moves_nothing() -> None:
    source, book, dropped = _source()
    book.update("00:0c:29:1c:e8:01", Presence.ONLINE, at=50.0)
    assert not source.on_message("/remote/000C291CE801/response", b"not even JSON")
    record = book.record("00:0c:29:1c:e8:01")
    assert record is not None and record.last_seen == 100.0
    assert record.presence is Presence.ONLINE and record.connected_at == 50.0
    assert not source.on_message("/remote/not valid/response", b"{}")
    assert len(book) == 1 and not dropped  # the fleet counts what it drops


class _Answers:
    """Records what DeviceMessages hands the fleet."""

    def __init__(self) -> None:
        self.routed: list[tuple[str, str, bytes]] = []

    def on_answer(self, topic: str, payload: bytes) -> None:
        self.routed.append(("topic", topic, payload))

    def on_device_answer(self, device: str, payload: bytes) -> None:
        self.routed.append(("device", device, payload))


@pytest.mark.parametrize(
    "topics", [TOPICS, TopicTemplates("/r/{device}", "/r/{device}/x", "/r/a/{device}")]
)
def test_device_messages_route_statuses_answers_and_the_rest(topics: TopicTemplates) -> None:
    book, dropped, answers = PresenceBook(), Counter[str](), _Answers()
    status = StatusTopicSource(book, topics, dropped, wall_clock=lambda: 100.0)
    route = DeviceMessages(topics, status, answers).route
    route(topics.response_topic("dev"), b"{}")
    route(topics.status_topic("x"), b"online")
    route("/elsewhere", b"{}")
    # An answer reaches the fleet once, after moving lastSeen; a status only presence.
    assert answers.routed[0] in {
        ("device", "dev", b"{}"),
        ("topic", topics.response_topic("dev"), b"{}"),
    }
    assert answers.routed[1:] == [("topic", "/elsewhere", b"{}")]
    assert book.record("dev") == DevicePresence(
        id="dev", presence=Presence.UNKNOWN, last_seen=100.0
    )
    assert book.presence("x") is Presence.ONLINE and not dropped


def test_a_topic_that_is_both_a_status_and_an_answer_is_a_status() -> None:
    # "/r/a/x" is the answer topic of "a" and the status topic of "x".
    topics = TopicTemplates("/r/{device}", "/r/{device}/x", "/r/a/{device}")
    book, answers = PresenceBook(), _Answers()
    status = StatusTopicSource(book, topics, Counter(), wall_clock=lambda: 100.0)
    DeviceMessages(topics, status, answers).route("/r/a/x", b"online")
    assert book.presence("x") is Presence.ONLINE
    assert answers.routed == []
