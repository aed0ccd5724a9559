"""A paced job's window and rate across a cluster, as grants to its shards (pure: counts and
times in, the next grants out; the database side is :mod:`pm.cluster._grant_rows`).

A job with ``rollout`` runs as one part per device shard, on whichever gateways hold those
shards. Its **coordinator** (the gateway holding the lease of shard ``job_id % shards``:
already leased and fenced, so no lease of its own) gives each shard a cumulative **grant**:
the shard's part may have at most ``granted`` of its tasks *used*, a task being used once it
is final (whatever ended it) or handed to its device and not back. So a shard has at most
``granted - final`` tasks in flight, and the coordinator keeps

    sum over shards of max(0, granted - final) <= window

where ``final`` is the count of the shard's final tasks it read from the database. That
count lags the truth (what is settled but not committed yet) and never exceeds it, and each
shard's owner counts its own finals at least as far (it alone settles the shard's tasks:
the fence refuses a former owner's writes), so job-wide tasks in flight never exceed the
window, whichever gateway holds what, across a handover or a coordinator's death: a grant
is a row, and a shard's new owner reads it with the shard.

Grants accrue at the rate (job-wide sends a minute): the coordinator keeps an *anchor* (a
wall-clock time, stored with the job) and may grant ``floor((now - anchor) * rate / 60)``
more, moving the anchor by what it granted. Unused time is not saved up beyond one send and
a round's catch-up (``catch_up``: the anchor never falls further behind ``now``), as
:class:`pm.rollout.Pacer` spaces a single gateway's sends. So over any span of ``t``
seconds the job gets at most ``(t + catch_up) * rate / 60 + 1`` new grants, and a grant is
used by one task once (a re-send of the same task after a handover uses none). The anchor
is on the coordinator's wall clock: gateways' clocks that disagree move it by their skew at
a coordinator change.

The ramp grows the window and the rate from the job-wide count of resolved tasks
(:func:`pm.rollout.ramp_steps_after`), as a single gateway's pacer does one outcome at a time.

Where grants go: one at a time to the shard with work left (tasks not yet used) that holds
the least room (``granted - final``), then the one that waited longest since its last
grant, then the one with the most work left: shards with work take turns, none starves.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import NamedTuple

from ..job_options import RolloutOptions
from ..rollout import ramp_steps_after, ramped
from ..schemas import WaitingReason


class ShardGrant(NamedTuple):
    """One shard's part of a paced job, as the coordinator reads it."""

    shard: int
    total: int  # the job's tasks on the shard (fixed once the job is stored)
    unfinished: int  # of them pending or sent, as committed
    granted: int  # the cumulative grant so far
    granted_at: float  # wall-clock time of its last grant (-inf: never)

    @property
    def final(self) -> int:
        return self.total - self.unfinished

    @property
    def room(self) -> int:
        """What the shard may have in flight now (what counts against the window)."""
        return max(0, self.granted - self.final)

    @property
    def work_left(self) -> int:
        """Its tasks no grant covers yet."""
        return self.total - max(self.granted, self.final)


class GrantRound(NamedTuple):
    """What one round of the coordinator decided."""

    grants: dict[int, int]  # shard -> its new cumulative grant (only the shards that got more)
    rate_anchor: float | None  # the anchor to store (None: the job has no rate)
    ramp_steps: int
    window: int | None
    rate: float | None
    # What held back grants that shards had work for (None: nothing did).
    limited_by: WaitingReason | None


def grant_round(
    options: RolloutOptions,
    shards: Sequence[ShardGrant],
    *,
    resolved: int,
    rate_anchor: float | None,
    now: float,
    catch_up: float = 0.0,
) -> GrantRound:
    """The next grants of a job paced by ``options`` (see the module docstring).

    Args:
      options: the job's ``rollout``.
      shards: every shard with tasks of the job, as read now.
      resolved: the job's resolved tasks, as committed (the ramp's count).
      rate_anchor: the stored anchor (None: the first round, one send allowed at once).
      now: wall-clock epoch seconds.
      catch_up: seconds of grants a round may give beyond one send when the previous round
        was that long ago (the coordinator's rounds come every poll interval, or later
        under load); a longer gap (no coordinator for a while) is not made up for.
    """
    steps = ramp_steps_after(options, resolved)
    window, rate = ramped(options, steps)
    room = math.inf if window is None else max(0, window - sum(s.room for s in shards))
    tokens: float = math.inf
    interval = 0.0
    if rate is not None:
        interval = 60.0 / rate
        earliest = now - interval - catch_up
        rate_anchor = earliest if rate_anchor is None else max(rate_anchor, earliest)
        tokens = max(0, math.floor((now - rate_anchor) / interval))
    budget = min(room, tokens)
    # (room held, last grant, -work left, shard): the smallest goes next.
    turns = [(s.room, s.granted_at, -s.work_left, s.shard) for s in shards if s.work_left > 0]
    heapq.heapify(turns)
    given: dict[int, int] = {}
    handed = 0
    while turns and handed < budget:
        held, _, work_left, shard = heapq.heappop(turns)
        given[shard] = given.get(shard, 0) + 1
        handed += 1
        if work_left < -1:  # work left after this one
            heapq.heappush(turns, (held + 1, now, work_left + 1, shard))
    limited_by: WaitingReason | None = None
    if turns:
        limited_by = "rollout-window" if room <= tokens else "rollout-rate"
    if rate_anchor is not None:
        # Moved by what was granted; idle time is not saved beyond one send.
        rate_anchor = max(rate_anchor + handed * interval, now - interval)
    by_shard = {s.shard: s for s in shards}
    grants = {
        shard: max(by_shard[shard].granted, by_shard[shard].final) + count
        for shard, count in given.items()
    }
    return GrantRound(grants, rate_anchor, steps, window, rate, limited_by)
