"""Job and task ids, unique across every gateway that shares the database.

Each id kind has a counter row (``counters``: the highest id ever reserved). A gateway
reserves a block of ids with ONE statement the database runs atomically::

    INSERT INTO counters (name, value) VALUES (?, ?)
    ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value RETURNING value

so two gateways (two stores on one PostgreSQL database) can never be handed overlapping
blocks: the row lock orders their reservations, and each learns the end of its own block
from ``RETURNING``. SQLite runs the same statement (``RETURNING`` needs SQLite 3.35; the
``sqlite3`` of Python 3.11 on Debian 12 is 3.40). The ids of a block are then handed out from
memory, no database round trip per job.

A restart, a crash or another gateway's reservation in between leaves the rest of a block
unused: gaps, never reuse. One gateway alone gets contiguous blocks, so its ids run on
without gaps, as they did when reservations went through the group commit.
"""

from __future__ import annotations

from ._connection import Connection

# Ids reserved per round trip to the database. A restart skips what was reserved but unused.
JOB_ID_BLOCK = 10_000
TASK_ID_BLOCK = 1_000_000

_BLOCKS = {"job": JOB_ID_BLOCK, "task": TASK_ID_BLOCK}

RESERVE_SQL = (
    "INSERT INTO counters (name, value) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
    " RETURNING value"
)


def reserve(connection: Connection, kind: str, amount: int) -> int:
    """Reserve ``amount`` more ids of ``kind``; returns the last id of the reserved block.

    One statement in autocommit mode: its own transaction, atomic on both engines. Read to
    the end: sqlite3 ends the statement (and so commits) only once its rows are exhausted.
    """
    ((high_water,),) = connection.execute(RESERVE_SQL, (kind, amount)).fetchall()
    return int(high_water)


class IdBlocks:
    """The ids this store reserved and has not handed out yet, per kind.

    Pure bookkeeping: the store runs :func:`reserve` (in its worker thread) and reports the
    result with :meth:`reserved`.
    """

    def __init__(self) -> None:
        self._next = {"job": 1, "task": 1}
        # The last id of the block in hand; 0 = none (a fresh start reserves first).
        self._last = {"job": 0, "task": 0}
        # Round trips to the database that reserved a block (tests and diagnostics).
        self.reservations = 0

    def shortfall(self, jobs: int, tasks: int) -> dict[str, int]:
        """The kinds whose block in hand cannot cover the request, with how many ids to
        reserve for each: the request plus a whole block ahead."""
        wanted = {}
        for kind, count in (("job", jobs), ("task", tasks)):
            if self._next[kind] + count - 1 > self._last[kind]:
                wanted[kind] = count + _BLOCKS[kind]
        return wanted

    def reserved(self, kind: str, amount: int, high_water: int) -> None:
        """Take the block ``high_water - amount + 1 .. high_water`` that :func:`reserve`
        returned."""
        first = high_water - amount + 1
        if first != self._last[kind] + 1:
            # Not right after our block (a restart, or another gateway reserved in between):
            # the rest of ours stays unused, since a job's tasks need consecutive ids.
            self._next[kind] = first
        self._last[kind] = high_water
        self.reservations += 1

    def take(self, jobs: int, tasks: int) -> tuple[int, int]:
        """Hand out ``jobs`` job ids and ``tasks`` task ids (:meth:`shortfall` must be empty);
        returns the first of each."""
        first_job, first_task = self._next["job"], self._next["task"]
        self._next["job"] += jobs
        self._next["task"] += tasks
        return first_job, first_task
