"""Opening the database: create, check that it takes writes, migrate, load the id counters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from ._errors import StoreOpenError, is_storage_fault
from ._schema import SchemaTooNew, migrate
from ._sqlite import Store

IN_MEMORY = ":memory:"


async def open_store(path: str | Path, *, commit_interval: float) -> Store:
    """Open (creating and migrating as needed) the database at ``path`` (``":memory:"`` ok).

    Error handling: raises :class:`~pm.store.StoreOpenError` naming the path and the reason
    when the database cannot be created, opened, written or migrated (an unwritable
    directory or file, a file that is not a database), and its subclass
    :class:`~pm.store.SchemaTooNew` for a database from a newer release. The gateway then
    refuses to start, rather than failing at its first commit.
    """

    def connect() -> Store:
        in_memory = str(path) == IN_MEMORY
        connection: sqlite3.Connection | None = None
        try:
            if not in_memory:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: the store issues BEGIN/COMMIT itself (group commit).
            connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk when it returns. Group commit keeps that to a few per
            # second.
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            # Take the write lock once: a read-only file or filesystem fails here, at start,
            # and not at the first job's commit.
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            migrate(connection)
            store = Store(connection, commit_interval, in_memory=in_memory)
            store.load_counters()
        except SchemaTooNew as error:
            _close(connection)
            raise SchemaTooNew(
                f"cannot use the database {str(path)!r} (store.path): {error}"
            ) from None
        except (OSError, sqlite3.Error) as error:
            _close(connection)
            raise StoreOpenError(
                f"cannot use the database {str(path)!r} (store.path): {_reason(error)}"
            ) from error
        except BaseException:
            _close(connection)
            raise
        return store

    return await trio.to_thread.run_sync(connect)


def _reason(error: OSError | sqlite3.Error) -> str:
    if isinstance(error, FileExistsError | NotADirectoryError):
        return f"{error.filename} is not a directory"
    if isinstance(error, OSError):
        return f"{error.strerror}: {error.filename}" if error.filename else str(error)
    if is_storage_fault(error):
        # SQLite's own message for most of these is "unable to open database file".
        return (
            f"{error}; its directory must be writable (SQLite also creates the -wal and -shm "
            "files there) and its filesystem not read-only"
        )
    return str(error)


def _close(connection: sqlite3.Connection | None) -> None:
    if connection is not None:
        connection.close()
