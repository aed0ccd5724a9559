"""The restart policy of the embedded broker: when to start the next child after one died.

Pure arithmetic, no clock and no I/O: :func:`pm.broker.run_embedded_broker` passes the uptime.
"""

from __future__ import annotations

RESTART_MIN_DELAY = 0.1
RESTART_MAX_DELAY = 5.0
HEALTHY_UPTIME = 60.0  # a child that ran this long resets the restart delay


class RestartBackoff:
    """The delay before restarting a broker that exited unexpectedly.

    The first restart waits ``min_delay``; each following one doubles it up to ``max_delay``.
    A child that ran for ``healthy_uptime`` seconds or more counts as healthy: its restart
    starts again from ``min_delay``. Pure arithmetic, no clock: the caller passes the uptime.

    Args:
      min_delay: first delay, seconds.
      max_delay: cap, seconds.
      healthy_uptime: uptime that resets the sequence, seconds.
    """

    def __init__(
        self,
        min_delay: float = RESTART_MIN_DELAY,
        max_delay: float = RESTART_MAX_DELAY,
        healthy_uptime: float = HEALTHY_UPTIME,
    ) -> None:
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.healthy_uptime = healthy_uptime
        self._next = min_delay

    def next_delay(self, uptime: float) -> float:
        """Return the delay before the next restart, given how long the last child ran.

        Args:
          uptime: seconds the child was running (0 if it never became ready).

        Returns:
          Seconds to wait before starting the next child.
        """
        if uptime >= self.healthy_uptime:
            self._next = self.min_delay
        delay = self._next
        self._next = min(self._next * 2, self.max_delay)
        return delay
