"""Waiting in tests for state that no event reports."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def poll_until(condition: Callable[[], bool], interval: float = 0.005) -> None:
    """Wait until ``condition()`` holds: a counter or status owned by another part of the
    system (an engine's job, a simulator's statistics) that offers nothing to wait on. Only for
    things that must happen; callers bound it with their test's hang guard."""
    while not condition():  # noqa: ASYNC110 - nothing to wait on but the state itself
        await trio.sleep(interval)
