"""What the store raises: a database it cannot open, and a database it cannot write to now;
and how a transaction that failed is undone without hiding its error."""

from __future__ import annotations

import contextlib
import sqlite3

# SQLite's primary result codes for a storage that cannot take a write right now (disk full,
# read-only file or filesystem, I/O error, locked by another process). Anything else (a
# constraint, a syntax error) is a bug and is not retried.
# https://www.sqlite.org/rescode.html
_STORAGE_FAULT_CODES = frozenset(
    {
        3,  # SQLITE_PERM
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
    }
)


class StoreOpenError(Exception):
    """The database cannot be used at all; the message names ``store.path`` and why.

    The gateway does not start: ``pm serve`` prints the message as its one line.
    """


class StoreUnavailable(Exception):
    """The store cannot commit right now (disk full, read-only file...); the message says
    why. Raised to callers that need a change on disk (a new job's ids); the store keeps
    every change in memory and retries until the storage takes writes again."""


def is_storage_fault(error: sqlite3.Error) -> bool:
    """Whether ``error`` is the storage refusing writes (worth retrying), not a bug."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _STORAGE_FAULT_CODES


def roll_back(connection: sqlite3.Connection) -> None:
    """Roll back the transaction under way, if SQLite has not already."""
    # SQLite may already have rolled back (a full disk during COMMIT): a second ROLLBACK
    # would raise "no transaction is active" and hide the error that matters.
    if connection.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
