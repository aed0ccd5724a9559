"""What the store raises: a database it cannot open, and a database it cannot write to now."""

from __future__ import annotations


class StoreOpenError(Exception):
    """The database cannot be used at all; the message names ``store.path`` (or
    ``store.url``) and why.

    The gateway does not start: ``pm serve`` prints the message as its one line.
    """


class StoreUnavailable(Exception):
    """The store cannot commit right now (disk full, read-only file, database server gone...);
    the message says why. Raised to callers that need a change on disk (a new job's ids); the
    store keeps every change in memory and retries until the storage takes writes again."""
