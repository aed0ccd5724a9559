"""Each device's recent answer latencies, for ``latencyP50`` in ``GET /devices``.

Pure bookkeeping, no I/O and no clock: the caller passes the seconds from publishing a request
to its device's final answer (:class:`pm.in_flight.InFlightRequests` does, on trio's clock).

Kept in memory only, not in the store: a median of the last few answers describes the device
now, and after a restart it fills again with the next answers (null until then). Memory: one
window of :data:`WINDOW` 4-byte floats per device that ever answered (~350 bytes each with its
dict entry; ~3.5 MB for 10,000 devices); devices are never forgotten, like their presence.
"""

from __future__ import annotations

import statistics
from array import array

# Answers per device the median is taken over.
WINDOW = 32


class _Window:
    """The last :data:`WINDOW` latencies of one device, oldest overwritten first."""

    __slots__ = ("next", "values")

    def __init__(self) -> None:
        self.values = array("f")
        self.next = 0  # where the next value goes once the window is full


class AnswerLatencies:
    """Request-to-final-answer seconds of each device's last :data:`WINDOW` answered tasks.

    Error handling: none needed; a negative duration (it cannot happen on a monotonic clock)
    is stored as 0.
    """

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def record(self, device: str, seconds: float) -> None:
        """One task of ``device`` got its final answer ``seconds`` after it was published."""
        window = self._windows.get(device)
        if window is None:
            window = self._windows[device] = _Window()
        # _Window.add, inlined: this runs once per answered task.
        values = window.values
        if len(values) < WINDOW:
            values.append(max(seconds, 0.0))
            return
        values[window.next] = max(seconds, 0.0)
        window.next = (window.next + 1) % WINDOW

    def p50(self, device: str) -> float | None:
        """The median of the device's window in seconds (rounded to the millisecond), or
        ``None`` if it never answered since the gateway started."""
        window = self._windows.get(device)
        if window is None:
            return None
        return round(statistics.median(window.values), 3)
