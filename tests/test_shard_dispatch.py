"""The shard dispatcher of a clustered gateway (pm/shard_dispatch.py) on the real PostgreSQL,
in one process, with a recording publisher standing in for the MQTT client: it finds jobs
stored by any gateway, survives a failed read, and stops a shard whose writes the fence
refused (not serving it again under that lease)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
import pytest
import trio

from pm.cluster import LeaseBook, ShardLease
from pm.cluster._writes import ClusterWrites
from pm.config import Config
from pm.devices import Fleet
from pm.presence import PresenceBook
from pm.protocol import TopicTemplates
from pm.shard_dispatch import ShardDispatcher
from pm.status_topic import StatusTopicSource
from pm.store import Store
from pm.store._postgres_connection import PostgresConnection, connect_postgres
from tests.fakes import RecordingPublisher
from tests.stores import batch, create_job, read, running_store
from tests.waiting import poll_until

SHARDS = 4
GUARD = 30.0


class FlakyConnection(PostgresConnection):
    """A reader whose next statements containing ``fail_on`` fail as a lost server would."""

    fail_on = ""
    failures = 0

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:  # noqa: ANN401
        if self.failures and self.fail_on in sql:
            self.failures -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return super().execute(sql, parameters)


@dataclass
class Cluster:
    store: Store
    writes: ClusterWrites
    dispatcher: ShardDispatcher
    publisher: RecordingPublisher
    reader: FlakyConnection
    leases: list[ShardLease]

    def answer_everything(self) -> int:
        """Answer every request published so far (once); returns how many were new."""
        answered = 0
        for _, request in self.publisher.published:
            if not request.get("answered"):
                request["answered"] = True
                payload = json.dumps({"id": request["id"], "code": 200, "data": {}})
                self.dispatcher.on_mqtt_message(request["tunnel"], payload.encode())
                answered += 1
        return answered


@pytest.fixture
async def cluster(migrated_postgres_url: str, nursery: trio.Nursery) -> AsyncIterator[Cluster]:
    url = migrated_postgres_url
    config = msgspec.convert(
        {"store": {"url": url, "commit_interval": 0.01}, "cluster": {"shards": SHARDS}}, Config
    )
    book_connection = connect_postgres(url)
    book = LeaseBook(book_connection, "gw-a", lease_ttl=30, shards=SHARDS)
    book.join()
    leases = book.round()
    book_connection.close()
    reader = FlakyConnection(url)
    topics = TopicTemplates(config.topics.request, config.topics.response, config.topics.status)
    publisher = RecordingPublisher()
    presence = PresenceBook()
    async with running_store(url, window=0.01) as store:
        writes = ClusterWrites("gw-a", SHARDS)
        store.attach_cluster(writes)
        fallback = Fleet(nursery, publisher, topics, mailbox_size=16, idle_timeout=60)
        dispatcher = ShardDispatcher(
            config=config,
            publisher=publisher,
            topics=topics,
            presence=presence,
            status_topic=StatusTopicSource(presence, topics, fallback.dropped),
            fallback=fallback,
            writes=writes,
            connection=reader,
        )
        async with trio.open_nursery() as inner:
            await inner.start(dispatcher.run)
            yield Cluster(store, writes, dispatcher, publisher, reader, leases)
            inner.cancel_scope.cancel()
    reader.close()


def unresolved(url: str) -> set[str]:
    return {device for device, status in read(url, "SELECT device, status FROM tasks")
            if status != "resolved"}  # fmt: skip


async def serve(dispatcher: ShardDispatcher, leases: list[ShardLease]) -> None:
    """Report ``leases`` held; returns once the dispatcher applied them (two turns later)."""
    turns = dispatcher.turns
    dispatcher.leases_changed(leases)
    await poll_until(lambda: dispatcher.turns >= turns + 2)


async def test_a_job_stored_by_any_gateway_is_found_even_after_a_failed_read(
    cluster: Cluster, migrated_postgres_url: str
) -> None:
    devices = [f"d{n}" for n in range(12)]
    with trio.fail_after(GUARD):
        await serve(cluster.dispatcher, cluster.leases)
        # The read of the new job's tasks fails once: the next poll must find it again.
        cluster.reader.fail_on, cluster.reader.failures = "shard = ANY", 1
        record = await create_job(cluster.store, batch((devices, "/r")))
        await cluster.store.sync()
        await poll_until(lambda: len(cluster.publisher.published) == len(devices))
        assert cluster.reader.failures == 0
        assert cluster.answer_everything() == len(devices)
        await poll_until(
            lambda: read(migrated_postgres_url, "SELECT status FROM jobs") == [("resolved",)]
        )
    assert sorted(r["id"] for _, r in cluster.publisher.published) == [t.id for t in record.tasks]


async def test_a_shard_whose_writes_are_refused_stops_and_is_not_served_again_at_its_epoch(
    cluster: Cluster, migrated_postgres_url: str
) -> None:
    url = migrated_postgres_url
    devices = [f"d{n}" for n in range(12)]
    with trio.fail_after(GUARD):
        await serve(cluster.dispatcher, cluster.leases)
        await create_job(cluster.store, batch((devices, "/r")))
        await cluster.store.sync()
        await poll_until(lambda: len(cluster.publisher.published) == len(devices))
        # Another gateway took shard 0 (a pause of this one past the ttl, say).
        taken = 0
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(
                "UPDATE shard_leases SET owner = 'gw-b', epoch = epoch + 1 WHERE shard = %s",
                (taken,),
            )
        cluster.answer_everything()
        await poll_until(lambda: taken not in cluster.dispatcher.services)
        # The keeper has not noticed (its lease list is unchanged): still not served.
        await serve(cluster.dispatcher, cluster.leases)
    assert set(cluster.dispatcher.services) == set(range(SHARDS)) - {taken}
    on_taken = [d for d in devices if cluster.writes.shard_of(d) == taken]
    assert on_taken, "no device on the taken shard: no test"
    # Each refused write of their tasks counted (their "sent", maybe, and their answer).
    assert len(on_taken) <= cluster.writes.refused_rows <= 2 * len(on_taken)
    # The other shards' answers reach the database (their job parts apply them, then the
    # store commits); the taken shard's tasks stay as they were.
    with trio.fail_after(GUARD):
        await poll_until(lambda: unresolved(url) == set(on_taken))
