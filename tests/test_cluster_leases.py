"""Device-shard leases among several gateways on the real PostgreSQL (pm/cluster/_leases.py):
a fair split, takeover of a gateway that stopped renewing, fencing of its late writes, and a
rejoining gateway that gets shards only as they free up.

Time is stepped, not waited for: each round is given its "now" (epoch seconds), counted from
the server's clock at the start of the test, so a lease "expires" by passing a later now. The
fence reads the server's real clock; leases it must accept therefore end in the real future.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from pm.cluster import FENCE, LeaseBook, ShardCountMismatch, ShardLease
from pm.cluster._leases import FORGET_AFTER_TTLS
from pm.store._postgres_connection import PostgresConnection, connect_postgres
from tests.racing import Racer, race

SHARDS = 256
TTL = 10.0
GUARD = 30.0


@pytest.fixture
def url(migrated_postgres_url: str) -> str:
    return migrated_postgres_url


@pytest.fixture
def books(url: str) -> Iterator[dict[str, LeaseBook]]:
    """Lease books of gateways "a", "b" and "c", each on its own connection (not joined)."""
    connections = {name: connect_postgres(url) for name in "abc"}
    yield {
        name: LeaseBook(connection, name, lease_ttl=TTL, shards=SHARDS)
        for name, connection in connections.items()
    }
    for connection in connections.values():
        connection.close()


def server_now(url: str) -> float:
    with psycopg.connect(url) as connection:
        (now,) = connection.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
    return float(now)


def owners(url: str) -> dict[int, tuple[str | None, int]]:
    """Each shard's owner and epoch, as the database has them."""
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT shard, owner, epoch FROM shard_leases").fetchall()
    return {shard: (owner, epoch) for shard, owner, epoch in rows}


def all_rounds(books: dict[str, LeaseBook], names: str, now: float) -> dict[str, set[int]]:
    return {name: {lease.shard for lease in books[name].round(now)} for name in names}


def split_among_three(books: dict[str, LeaseBook], start: float) -> dict[str, set[int]]:
    for book in books.values():
        book.join(start)
    all_rounds(books, "abc", start + 1)
    return all_rounds(books, "abc", start + 2)


def c_stops_renewing(
    books: dict[str, LeaseBook], start: float
) -> tuple[float, dict[str, set[int]]]:
    """After :func:`split_among_three`, "a" and "b" go on renewing and "c" does not, until
    the leases of "c" have run out; returns that time and the rounds of "a" and "b" at it."""
    all_rounds(books, "ab", start + 2 + TTL / 2)
    later = start + 2 + TTL + 1
    return later, all_rounds(books, "ab", later)


def test_three_gateways_split_the_shards_fairly(url: str, books: dict[str, LeaseBook]) -> None:
    held = split_among_three(books, server_now(url))
    assert sorted(len(shards) for shards in held.values()) == [84, 86, 86]
    assert held["a"] | held["b"] | held["c"] == set(range(SHARDS))
    assert not (held["a"] & held["b"] or held["b"] & held["c"] or held["a"] & held["c"])
    # The database agrees, and each shard was acquired once: epoch 1.
    assert {owner for owner, _ in owners(url).values()} == {"a", "b", "c"}
    assert {epoch for _, epoch in owners(url).values()} == {1}


def test_a_gateway_that_stops_renewing_loses_its_shards_to_the_others(
    url: str, books: dict[str, LeaseBook]
) -> None:
    start = server_now(url)
    before = split_among_three(books, start)
    # "c" stops renewing (dead, or paused); past its leases' expiry the others take them.
    _, after = c_stops_renewing(books, start)
    assert len(after["a"]) == len(after["b"]) == SHARDS // 2
    assert after["a"] | after["b"] == set(range(SHARDS))
    taken_over = before["c"]
    assert taken_over <= after["a"] | after["b"]
    table = owners(url)
    # Every acquisition raised the epoch: the shards of "c" are at 2, the others still at 1.
    assert {table[shard][1] for shard in taken_over} == {2}
    assert {table[shard][1] for shard in before["a"] | before["b"]} == {1}


def fenced_write(url: str, lease: ShardLease, value: str) -> int:
    """A write on behalf of ``lease``'s shard, fenced; returns the rows it changed."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(
            "UPDATE fenced_probe SET value = %s WHERE shard = %s AND " + FENCE.replace("?", "%s"),
            (value, lease.shard, *lease.fence()),
        )
        return cursor.rowcount


def test_the_fence_refuses_the_writes_of_a_gateway_that_lost_its_lease(
    url: str, books: dict[str, LeaseBook]
) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE fenced_probe (shard BIGINT PRIMARY KEY, value TEXT)")
        connection.execute("INSERT INTO fenced_probe SELECT s, '' FROM generate_series(0, 255) s")
    start = server_now(url)
    # "c" acquired its shards in the past: by the server's clock they ran out already, while
    # nobody has taken them yet. Its epoch is still current, but its lease is over.
    books["c"].join(start - 3 * TTL)
    stale = books["c"].round(start - 3 * TTL)
    assert len(stale) == SHARDS  # alone and live then: it took everything
    assert fenced_write(url, stale[0], "c, paused past its ttl") == 0
    # "c" comes back and acquires its shards again, at a new epoch: a write it made under
    # the old lease (delayed in the network, or from a thread that did not notice) is
    # refused although the owner is the same; one under the new lease lands.
    books["c"].join()
    current = {lease.shard: lease for lease in books["c"].round()}
    assert current[stale[0].shard].epoch == stale[0].epoch + 1
    assert fenced_write(url, stale[0], "c, old epoch") == 0
    assert fenced_write(url, current[stale[0].shard], "c, current epoch") == 1
    with psycopg.connect(url) as connection:
        (value,) = connection.execute(
            "SELECT value FROM fenced_probe WHERE shard = %s", (stale[0].shard,)
        ).fetchone()
    assert value == "c, current epoch"


def test_a_rejoining_gateway_gets_shards_only_as_they_free_up(
    url: str, books: dict[str, LeaseBook]
) -> None:
    start = server_now(url)
    split_among_three(books, start)
    later, _ = c_stops_renewing(books, start)  # "a" and "b" took over the shards of "c"
    # "c" comes back: live again, but every shard is held, so it takes none.
    books["c"].join(later + 1)
    assert books["c"].round(later + 1) == []
    # "a" sees three live gateways and sets its excess aside: no longer its to serve, but
    # not free before a's next round, so "a" has stopped serving it before "c" can start.
    held_by_a = {lease.shard for lease in books["a"].round(later + 2)}
    assert len(held_by_a) == 86
    assert books["c"].round(later + 2) == []
    assert {lease.shard for lease in books["a"].round(later + 3)} == held_by_a  # releases
    assert len(books["c"].round(later + 3)) == SHARDS // 2 - 86
    assert len(books["b"].round(later + 4)) == 86
    assert len(books["b"].round(later + 5)) == 86  # releases its excess
    held = all_rounds(books, "c", later + 5)
    assert len(held["c"]) == SHARDS - 2 * 86
    table = owners(url)
    # Owners agree with what each book holds; the shards "c" got back went round twice more.
    assert {shard for shard, (owner, _) in table.items() if owner == "c"} == held["c"]
    assert min(table[shard][1] for shard in held["c"]) >= 2


def test_a_clean_stop_frees_the_shards_at_once(url: str, books: dict[str, LeaseBook]) -> None:
    start = server_now(url)
    held = split_among_three(books, start)
    books["c"].release_all()
    # No wait for the ttl: the next rounds of the others split everything between them.
    after = all_rounds(books, "ab", start + 3)
    assert len(after["a"]) == len(after["b"]) == SHARDS // 2
    assert held["c"] <= after["a"] | after["b"]


def test_gateways_long_silent_are_forgotten(url: str, books: dict[str, LeaseBook]) -> None:
    start = server_now(url)
    split_among_three(books, start)
    # "c" crashed long ago (a generated id never comes back); "b" is silent, not yet forgotten.
    all_rounds(books, "b", start + FORGET_AFTER_TTLS * TTL)
    all_rounds(books, "a", start + 2 + FORGET_AFTER_TTLS * TTL + 1)
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT id FROM gateways ORDER BY id").fetchall()
    assert rows == [("a",), ("b",)]


def test_a_gateway_with_another_shard_count_refuses_to_join(
    url: str, books: dict[str, LeaseBook]
) -> None:
    books["a"].join()
    connection = connect_postgres(url)
    try:
        fewer = LeaseBook(connection, "b", lease_ttl=TTL, shards=SHARDS // 2)
        with pytest.raises(ShardCountMismatch, match="cluster.shards is 128 but .* has 256"):
            fewer.join()
        # More is refused too (it was once taken as the first gateway's and added to).
        more = LeaseBook(connection, "b", lease_ttl=TTL, shards=SHARDS * 2)
        with pytest.raises(ShardCountMismatch, match="cluster.shards is 512 but .* has 256"):
            more.join()
    finally:
        connection.close()
    assert len(owners(url)) == SHARDS
    # Nothing of the refused gateway was recorded: it never joined.
    with psycopg.connect(url) as admin:
        assert admin.execute("SELECT id FROM gateways").fetchall() == [("a",)]


def test_gateways_racing_for_shards_never_both_hold_one(url: str) -> None:
    """Six gateways run rounds at the same time from threads, on the server's clock: no
    shard is ever held by two (each round's result is what the gateway holds until its
    next round; a ttl far longer than the test keeps every lease unexpired)."""
    names = [f"g{n}" for n in range(6)]
    connections: list[PostgresConnection] = [connect_postgres(url) for _ in names]
    racing = [
        LeaseBook(connection, name, lease_ttl=3600.0, shards=SHARDS)
        for connection, name in zip(connections, names, strict=True)
    ]
    last: dict[str, set[int]] = {}

    def racer(book: LeaseBook) -> Racer:
        def run(released: Callable[[], None]) -> None:
            book.join()
            released()
            for _ in range(15):
                last[book.gateway_id] = {lease.shard for lease in book.round()}

        return run

    try:
        race([racer(book) for book in racing], GUARD)
        held = [shards for shards in last.values()]
        assert sum(len(shards) for shards in held) == len(set().union(*held))
        # Settled with one more round each, in turn: everything held, within the fair share.
        for book in racing:
            last[book.gateway_id] = {lease.shard for lease in book.round()}
        assert set().union(*last.values()) == set(range(SHARDS))
        assert max(len(shards) for shards in last.values()) <= 43  # ceil(256 / 6)
    finally:
        for connection in connections:
            connection.close()


def test_a_fenced_write_racing_a_takeover_waits_for_it_and_is_refused(
    url: str, books: dict[str, LeaseBook]
) -> None:
    """The fence locks the lease row (FOR SHARE): a write that meets a takeover under way
    waits for it, then reads the new epoch and changes nothing. A plain read of the lease
    would see the old epoch in its snapshot and let the stale write through."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE fenced_probe (shard BIGINT PRIMARY KEY, value TEXT)")
        connection.execute("INSERT INTO fenced_probe VALUES (0, '')")
    books["c"].join()
    lease = books["c"].round()[0]
    written: list[int] = []
    with psycopg.connect(url) as takeover:
        # Another gateway takes shard 0 over; its transaction is still open.
        takeover.execute(
            "UPDATE shard_leases SET owner = 'a', epoch = epoch + 1 WHERE shard = %s",
            (lease.shard,),
        )
        writer = threading.Thread(target=lambda: written.append(fenced_write(url, lease, "c")))
        writer.start()
        waiting = False
        for _ in range(int(GUARD / 0.01)):
            (blocked,) = takeover.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
            ).fetchone()
            waiting = blocked > 0
            if waiting or not writer.is_alive():
                break
            threading.Event().wait(0.01)
        takeover.commit()
    writer.join(GUARD)
    assert waiting, "the fenced write did not wait for the takeover"
    assert written == [0]
