"""The database side of paced jobs in a cluster (:mod:`pm.cluster._grants`): which unfinished
jobs are paced, a coordinator's round for one job, and the grants a gateway's shard parts read.

Plain functions of a connection, run in a worker thread on the dispatch path's connection
(pm/shard_dispatch.py), like :mod:`pm.store._shard_tasks`. PostgreSQL only (``ANY`` of an
array parameter, ``FOR SHARE`` in the fence, ``jsonb_set``).

Error handling: the database's errors propagate (the dispatcher retries at its next turn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from ..job_options import JobOptions, RolloutOptions
from ..store._connection import Connection
from ..store._postgres_connection import rows_from
from ..store._statements import INTEGER, REAL
from ._grants import GrantRound, ShardGrant, grant_round
from ._leases import FENCE, ShardLease

_decode_options = msgspec.json.Decoder(JobOptions).decode
_encode = msgspec.json.encode

# Run first in a round's transaction: its FOR SHARE holds the coordinating lease until the
# commit (a takeover waits for it), so the writes that follow need no fence of their own.
_HOLDS_LEASE = f"SELECT {FENCE}"

_STORED_GRANTS = (
    "SELECT shard, granted, total, granted_at FROM job_grants WHERE job_id = ? ORDER BY shard"
)
# Tasks a single gateway stored have no shard; a clustered one gives one to the unfinished
# ones only (pm/cluster/_backfill.py): the finished ones are in no shard's part.
_TASKS_BY_SHARD = (
    "SELECT shard, count(*) FROM tasks WHERE job_id = ? AND shard IS NOT NULL GROUP BY shard"
)
_UNFINISHED_BY_SHARD = (
    "SELECT shard, count(*) FROM tasks WHERE job_id = ? AND status IN ('pending', 'sent')"
    " GROUP BY shard"
)
_JOB = (
    "SELECT j.finish_count, j.finish_at, p.rate_anchor,"
    " CAST(CAST(j.rollout_state AS JSONB)->>'ramp_steps' AS BIGINT) FROM jobs AS j"
    " LEFT JOIN job_pacing AS p ON p.job_id = j.id WHERE j.id = ?"
)
_SAVE_GRANTS = f"""
INSERT INTO job_grants (job_id, shard, granted, total, granted_at)
SELECT ?, g.shard, g.granted, g.total, g.granted_at
FROM ({rows_from([INTEGER, INTEGER, INTEGER, REAL])}) AS g (shard, granted, total, granted_at)
ON CONFLICT (job_id, shard) DO UPDATE SET
    granted = excluded.granted, granted_at = excluded.granted_at
"""
_SAVE_ANCHOR = """
INSERT INTO job_pacing (job_id, rate_anchor) VALUES (?, ?)
ON CONFLICT (job_id) DO UPDATE SET rate_anchor = excluded.rate_anchor
"""
# Only the ramp's field of the stored state: the rest of it is not the coordinator's.
_SAVE_RAMP_STEPS = """
UPDATE jobs SET rollout_state = CAST(jsonb_set(
    coalesce(CAST(rollout_state AS JSONB), CAST('{}' AS JSONB)),
    '{ramp_steps}', to_jsonb(CAST(? AS BIGINT))) AS TEXT)
WHERE id = ?
"""
_GRANTS_OF_PARTS = (
    "SELECT job_id, shard, granted, total FROM job_grants"
    " WHERE job_id = ANY(CAST(? AS BIGINT[])) AND shard = ANY(CAST(? AS BIGINT[]))"
)


def paced_jobs(connection: Connection, job_ids: Sequence[int]) -> dict[int, RolloutOptions]:
    """The ``rollout`` of those of ``job_ids`` that have one."""
    rows = connection.execute(
        "SELECT id, options FROM jobs WHERE id = ANY(CAST(? AS BIGINT[])) AND options IS NOT NULL",
        (list(job_ids),),
    ).fetchall()
    paced = {}
    for job_id, options in rows:
        rollout = _decode_options(options).rollout
        if rollout is not None:
            paced[int(job_id)] = rollout
    return paced


def coordinate(
    connection: Connection,
    job_id: int,
    options: RolloutOptions,
    lease: ShardLease,
    now: float,
    catch_up: float,
) -> GrantRound | None:
    """One coordinator round for ``job_id`` under ``lease`` (the lease of its coordinating
    shard), in one transaction: read the shards' counts, decide, write (``catch_up``: see
    :func:`~pm.cluster._grants.grant_round`). Returns the round,
    or ``None`` when the lease is no longer held (nothing written) or the job has ended."""
    with connection.transaction():
        if not connection.execute(_HOLDS_LEASE, lease.fence()).fetchone()[0]:
            return None
        job = connection.execute(_JOB, (job_id,)).fetchone()
        if job is None or job[1] is not None:
            return None
        resolved, _, anchor, stored_steps = job
        stored = connection.execute(_STORED_GRANTS, (job_id,)).fetchall()
        new_rows = not stored
        if new_rows:  # the first round: one row per shard with tasks of the job
            stored = [
                (shard, 0, total, None)
                for shard, total in connection.execute(_TASKS_BY_SHARD, (job_id,))
            ]
        unfinished = dict(connection.execute(_UNFINISHED_BY_SHARD, (job_id,)).fetchall())
        shards = [
            ShardGrant(
                shard,
                total,
                unfinished.get(shard, 0),
                granted,
                -math.inf if granted_at is None else granted_at,
            )
            for shard, granted, total, granted_at in stored
        ]
        decided = grant_round(
            options, shards, resolved=resolved, rate_anchor=anchor, now=now, catch_up=catch_up
        )
        rows = [
            (s.shard, decided.grants[s.shard], s.total, now)
            if s.shard in decided.grants
            else (s.shard, s.granted, s.total, None if s.granted_at == -math.inf else s.granted_at)
            for s in shards
            if new_rows or s.shard in decided.grants
        ]
        if rows:
            connection.execute(_SAVE_GRANTS, (job_id, _encode(rows).decode()))
        if decided.rate_anchor != anchor:
            connection.execute(_SAVE_ANCHOR, (job_id, decided.rate_anchor))
        if decided.ramp_steps != (stored_steps or 0):
            connection.execute(_SAVE_RAMP_STEPS, (decided.ramp_steps, job_id))
    return decided


def grants_of_parts(
    connection: Connection, job_ids: Sequence[int], shards: Sequence[int]
) -> dict[tuple[int, int], tuple[int, int]]:
    """The stored grant and task count of each (job, shard) of ``job_ids`` x ``shards``."""
    return {
        (int(job_id), int(shard)): (int(granted), int(total))
        for job_id, shard, granted, total in connection.execute(
            _GRANTS_OF_PARTS, (list(job_ids), list(shards))
        )
    }
