"""The rich console every command prints through."""

from __future__ import annotations

from rich.console import Console


def stdout_console() -> Console:
    """A console on stdout that never hard-wraps (pipes and logs get whole lines, which
    grep and tests can match) and does not colour numbers and paths it guesses at.

    Rich still detects whether stdout is a terminal: no colours or live redraws otherwise.
    """
    return Console(soft_wrap=True, highlight=False)
