"""Garbage-collection pacing for a broker child that holds thousands of sessions."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes() -> int:
    """This process's resident memory (one read of ``/proc/self/statm``); 0 if unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


class GcPacer:
    """Keeps CPython's full (generation 2) collections from rescanning every session.

    Each amqtt connection holds ~330 GC-tracked objects (its ``Session`` with a
    ``transitions`` state machine, handler, tasks, queues): ~3.3 million with 10,000 devices.
    CPython 3.11 runs a full collection whenever the objects that reached the oldest generation
    grew by 25%, and each one walks all of them: measured with ``gc.callbacks`` while 10,000
    devices connected, 17 full collections took ~11 s of the 48 s, the last ones 1.5-3 s each,
    and one that lands during traffic stalls every message for seconds (a 10,000-connection
    round-trip run that most likely met one fell from ~110 to ~20 rt/s, its broker CPU per
    round trip tripled).

    After each full collection the survivors are frozen (``gc.freeze``: moved to the permanent
    generation, which no collection walks), so the next full collection only walks what was
    created since. Freezing does not stop reference counting (which frees most garbage), only
    the cycle collector; the cyclic garbage that matters is a closed connection's session and
    handler (state machines refer back to their model). So everything is unfrozen, hence
    walked by the next full collection, once ``closed_connections()`` grew by half the
    connections open at the last walk of everything (at least :attr:`min_closed`), or, for
    cyclic garbage of any other origin, once the resident memory exceeds :attr:`growth` times
    what the last walk left plus :attr:`CONNECTION_BYTES` per connection opened since (a
    heap-growth pacer: garbage stays below the size of the live heap). A steady fleet costs no
    full walk at all. (The frozen set's size is not a usable signal: ``gc.get_freeze_count``
    walks the whole list: 100-200 ms for 3 million objects on a busy machine.)

    Young collections are made rarer too (:attr:`YOUNG_THRESHOLD`). A burst keeps every
    delivery alive until its PUBACK (~25 tracked objects each: its task and coroutine,
    futures, the message and its packet; ``tests/integration/test_amqtt_bursts.py`` measures
    it), and each young collection that runs during a burst examines all of them again. With
    one connection per device those objects point into every session's memory, so each
    examination misses the caches: with CPython's threshold of 700, 1,000 requests to 1,000
    device connections spent ~17% of the broker's CPU in collections (0.64 s of 3.9 s over 6
    bursts, timed with ``gc.callbacks`` and ``time.thread_time``), against ~3% over one
    connection. At 10,000 allocations the young generation still overflowed during a burst of
    1,000 (its ~25,000 deliveries' objects): 6-11 young collections per 6,000 round trips,
    20-40 ms each, 25,000-67,000 objects each, 7-14% of the broker's CPU over 1,000
    connections against ~0.3% over one. The threshold now holds the deliveries of a burst of
    10,000 requests, so a burst runs without young collections; the collections that remain
    (connections arriving, ~330 objects each) cost the same in total, in fewer, longer pauses.
    Cyclic garbage, which only collections free, is rare per message in amqtt (0-1,100
    objects found per collection).
    """

    CONNECTION_BYTES = 64 * 1024  # resident memory of an idle connection: ~54 KiB measured
    # Allocations (net of frees) between young collections; CPython's default is 700. A burst
    # of 10,000 requests keeps ~250,000 tracked objects alive until its PUBACKs arrive.
    YOUNG_THRESHOLD = 300_000

    def __init__(
        self,
        closed_connections: Callable[[], int],
        open_connections: Callable[[], int],
        *,
        growth: float = 2.0,
        min_closed: int = 1000,
    ) -> None:
        self._closed = closed_connections
        self._open = open_connections
        self.growth = growth
        self.min_closed = min_closed
        self._closed_at_walk = 0
        self._open_at_walk = 0
        self._resident_at_walk = 0
        self._walked_everything = True  # nothing is frozen yet
        self.full_walks = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        # gc callbacks run once the collection is complete: moving generations is safe here.
        gc.freeze()
        open_now = self._open()
        if self._walked_everything:
            self._closed_at_walk = self._closed()
            self._open_at_walk = open_now
            self._resident_at_walk = _resident_bytes()
            self._walked_everything = False
            self.full_walks += 1
            return
        closed = self._closed() - self._closed_at_walk
        expected = self._resident_at_walk + self.CONNECTION_BYTES * max(
            0, open_now - self._open_at_walk
        )
        if (
            closed > max(self.min_closed, self._open_at_walk // 2)
            or _resident_bytes() > self.growth * expected
        ):
            # The next full collection comes soon (its trigger is relative to the objects
            # the last one walked, now few) and walks everything.
            gc.unfreeze()
            self._walked_everything = True

    def install(self) -> None:
        gc.callbacks.append(self)
        gc.set_threshold(self.YOUNG_THRESHOLD, *gc.get_threshold()[1:])
