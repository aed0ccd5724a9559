"""Shards for the tasks stored without one: a database a single gateway wrote (its tasks'
``shard`` is NULL, schema 9) joining a cluster.

The shard is a BLAKE2b hash the two engines cannot compute in SQL, so a migration cannot
fill it; a clustered gateway does at start, before it reads its shards' tasks, in batches
of :data:`BATCH` tasks (one short transaction each, so gateways starting together interleave
instead of waiting for one long one; two that fill the same rows write the same values).
Only unfinished tasks (pending, sent) are filled: no gateway reads a finished task's shard.

Error handling: the database's errors propagate (the start fails, as for any other step).
"""

from __future__ import annotations

import msgspec

from ..store._connection import Connection
from ..store._postgres_connection import rows_from
from ..store._statements import INTEGER
from ._shards import shard_of

BATCH = 1000

_FILL = (
    f"UPDATE tasks SET shard = u.shard FROM ({rows_from([INTEGER, INTEGER])}) AS u (id, shard)"
    " WHERE tasks.id = u.id"
)


def fill_missing_shards(connection: Connection, shards: int) -> int:
    """Give every unfinished task without a shard its own; returns how many were filled."""
    filled = 0
    while True:
        with connection.transaction():
            rows = connection.execute(
                "SELECT id, device FROM tasks WHERE shard IS NULL"
                " AND status IN ('pending', 'sent') ORDER BY id LIMIT ?",
                (BATCH,),
            ).fetchall()
            if not rows:
                return filled
            updates = [(task_id, shard_of(device, shards)) for task_id, device in rows]
            connection.execute(_FILL, (msgspec.json.encode(updates).decode(),))
        filled += len(rows)
