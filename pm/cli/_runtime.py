"""Process-wide settings for the long-running commands (``pm serve``, ``pm simulate``).

Kept out of the library: an application embedding the gateway owns its interpreter's
garbage collector settings, a process started by ``pm`` is ours to tune.
"""

from __future__ import annotations

import gc

# CPython collects its youngest generation every 700 net allocations by default. A gateway
# with 10,000 live device actors holds ~700k tracked objects, and the default thresholds
# made the collector's full passes (~0.3 s each) cost 30-45% of the gateway's CPU in a
# 10k-task job (measured with gc.callbacks; bench/README.md). Young collections are rare
# too: a job's tasks in flight keep their objects alive (records, requests, cancel scopes,
# coroutines) and each young collection examined them all again for nothing (none of them
# garbage). At 10,000 allocations that was 15-17 young collections of 10,000-80,000
# objects per four 10k-task jobs, ~12 us of the gateway's CPU a task (~12%); at 100,000,
# one, ~2.3 us (`python -m bench.cpu_per_task --collector gateway --jobs 4 [--young N]`).
# Cyclic garbage still gets collected, in fewer, longer pauses (tens of milliseconds).
YOUNG_GENERATION_THRESHOLD = 100_000
MIDDLE_GENERATION_THRESHOLD = 20
OLD_GENERATION_THRESHOLD = 100


def tune_garbage_collector() -> None:
    """Call once, after the imports and before serving: what exists now (modules, classes,
    the config) is moved out of the collector's sight for good, and the thresholds above
    apply from then on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(
        YOUNG_GENERATION_THRESHOLD, MIDDLE_GENERATION_THRESHOLD, OLD_GENERATION_THRESHOLD
    )
