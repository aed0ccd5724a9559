"""Race a few functions against each other from threads, for the tests of what several
gateways do at the same instant on one database (ids, migrations, leases)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

# A racer gets ``released``: it sets itself up (opens its connection...), then calls it, and
# returns only once every racer is set up, so that their real work starts together.
Racer = Callable[[Callable[[], None]], None]


def race(racers: Sequence[Racer], guard: float) -> None:
    """Run each racer in its own thread until all end (at most ``guard`` seconds each).

    Error handling: the first exception a racer raised is raised here (not lost in its
    thread); a racer still running after ``guard`` fails the test.
    """
    start = threading.Barrier(len(racers))
    failures: list[BaseException] = []

    def run(racer: Racer) -> None:
        try:
            racer(lambda: start.wait(timeout=guard))
        except BaseException as error:  # reported below, not lost in the thread
            failures.append(error)

    threads = [threading.Thread(target=run, args=(racer,)) for racer in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(guard)
    assert not any(thread.is_alive() for thread in threads), f"a racer ran over {guard} s"
    if failures:
        raise failures[0]
