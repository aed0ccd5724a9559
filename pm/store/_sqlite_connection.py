"""The SQLite engine (stdlib ``sqlite3``, WAL): opening a file, its dialect, its faults, and
opening the file again after one.

Error handling: a storage fault (see ``_STORAGE_FAULT_CODES``) makes the next use open the
database again by its path, like the PostgreSQL engine reconnects. An open file keeps pointing
at the filesystem it was opened on: after a filesystem turned read-only (a disk error) is
unmounted and mounted again, only a new open reaches the repaired one. Reopening never creates
a database: while nothing is at the path (between an unmount and a mount) it fails and is
retried.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._statements import WriteStatements, write_statements

IN_MEMORY = ":memory:"

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


def _rows_from(types: Sequence[str]) -> str:
    # SQLite keeps what JSON holds (integer, real, text, null) whatever the column's type.
    columns = ", ".join(f"json_extract(value, '$[{index}]')" for index in range(len(types)))
    return f"SELECT {columns} FROM json_each(?)"


STATEMENTS = write_statements(_rows_from)


def _statements_of(script: str) -> Iterator[str]:
    """The statements of a ``;``-separated script (a ``;`` in a literal or comment kept)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"incomplete statement at the end of a migration: {pending!r}")


class SqliteConnection:
    """A SQLite database file (or ``:memory:``) in autocommit mode: the store runs its own
    transactions. See :class:`pm.store._connection.Connection`."""

    engine = "SQLite"
    setting = "store.path"
    statements: WriteStatements = STATEMENTS
    error_types: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, connection: sqlite3.Connection, location: str) -> None:
        # None after a reopen failed (see _live).
        self._connection: sqlite3.Connection | None = connection
        self.location = location
        # An in-memory database does no disk I/O: running it on the trio thread costs less
        # than a thread hop, and keeps tests on trio's virtual clock deterministic (time
        # jumps while a worker thread runs).
        self.inline = location == IN_MEMORY
        # Set by a storage fault: the next use opens the file again (an in-memory database
        # cannot be opened again, and its faults do not come from a filesystem).
        self._reopen = False
        # Until a write works again, each write starts on a new open: a connection a read
        # opened during the fault may still be on the old filesystem.
        self._write_failed = False

    def _live(self) -> sqlite3.Connection:
        # Never in the middle of a transaction: it ends (rolled back) first.
        if self._reopen and not (self._connection is not None and self._connection.in_transaction):
            # The old files may sit on a dead filesystem: closing them may fail. Closed even
            # when no database can be opened at the path (the filesystem unmounted): as long
            # as a file on it is open, the kernel keeps the failed filesystem alive and its
            # disk in use, so the operator could neither check it nor mount it again.
            old, self._connection = self._connection, None
            if old is not None:
                with contextlib.suppress(sqlite3.Error):
                    old.close()
            # Raises (a storage fault, retried) while no database is at the path.
            self._connection = _configured(sqlite3.connect(
                Path(self.location).absolute().as_uri() + "?mode=rw",
                uri=True, isolation_level=None, check_same_thread=False,
            ))  # fmt: skip
            self._reopen = False
        assert self._connection is not None, "closed only while a reopen is due"
        return self._connection

    def _fault_seen(self, error: BaseException) -> None:
        if not self.inline and isinstance(error, sqlite3.Error) and self.is_storage_fault(error):
            self._reopen = True

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._live().execute(sql, parameters)
        except sqlite3.Error as error:
            self._fault_seen(error)
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self._reopen = self._reopen or self._write_failed
        self.execute("BEGIN")
        try:
            yield
            self.execute("COMMIT")
        except BaseException as error:
            self._roll_back()
            self._fault_seen(error)
            self._write_failed = self._reopen
            raise
        self._write_failed = False

    def _roll_back(self) -> None:
        # SQLite may already have rolled back (a full disk during COMMIT): a second ROLLBACK
        # would raise "no transaction is active" and hide the error that matters.
        if self._connection is not None and self._connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._connection.execute("ROLLBACK")

    @contextlib.contextmanager
    def migration(self) -> Iterator[None]:
        # IMMEDIATE takes the file's write lock before the schema version is read: another
        # process migrating the same file at once waits for it (busy timeout), then finds
        # the schema current. One SQLite file is one gateway's, but two `pm serve` started
        # on it together must not fail.
        self.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.execute("COMMIT")
        except BaseException:
            self._roll_back()
            raise

    def run_script(self, script: str) -> None:
        # One statement at a time: executescript() would commit the transaction under way.
        for statement in _statements_of(script):
            self.execute(statement)

    def is_storage_fault(self, error: Exception) -> bool:
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _STORAGE_FAULT_CODES

    def fault_reason(self, error: Exception) -> str:
        return f"{error} ({getattr(error, 'sqlite_errorname', type(error).__name__)})"

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def _configured(connection: sqlite3.Connection) -> sqlite3.Connection:
    """``connection`` set up as the store uses it; closed if that fails."""
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is on disk when it returns. Group commit keeps that to a few per
        # second.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        connection.close()
        raise
    return connection


def connect_sqlite(path: str | Path) -> SqliteConnection:
    """Open (creating) the database file at ``path`` and check that it takes writes.

    Error handling: raises ``OSError`` or ``sqlite3.Error`` (see :func:`open_failure`).
    """
    location = str(path)
    if location != IN_MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = _configured(
        sqlite3.connect(location, isolation_level=None, check_same_thread=False)
    )
    try:
        # Take the write lock once: a read-only file or filesystem fails here, at start,
        # and not at the first job's commit.
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except BaseException:
        connection.close()
        raise
    return SqliteConnection(connection, location)


def open_failure(error: OSError | sqlite3.Error) -> str:
    """Why a SQLite database could not be opened, for the one line ``pm serve`` prints."""
    if isinstance(error, FileExistsError | NotADirectoryError):
        return f"{error.filename} is not a directory"
    if isinstance(error, OSError):
        return f"{error.strerror}: {error.filename}" if error.filename else str(error)
    if getattr(error, "sqlite_errorcode", 0) & 0xFF in _STORAGE_FAULT_CODES:
        # SQLite's own message for most of these is "unable to open database file".
        return (
            f"{error}; its directory must be writable (SQLite also creates the -wal and -shm "
            "files there) and its filesystem not read-only"
        )
    return str(error)
