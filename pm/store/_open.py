"""Opening the database: connect (SQLite file or PostgreSQL URL), check that it takes writes,
migrate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from ._connection import Connection
from ._errors import StoreOpenError
from ._postgres_connection import connect_postgres, driver_errors, is_postgres_url, redacted
from ._schema import SchemaTooNew, migrate
from ._sqlite_connection import connect_sqlite, open_failure
from ._store import Store


async def open_store(location: str | Path, *, commit_interval: float) -> Store:
    """Open (creating and migrating as needed) the database at ``location``: a SQLite file
    path (``":memory:"`` ok) or a ``postgresql://`` URL.

    Error handling: raises :class:`~pm.store.StoreOpenError` naming the database
    (``store.path`` or ``store.url``, without a password) and the reason when it cannot be
    created, opened, written or migrated (an unwritable directory or file, a file that is not
    a database, a server that refuses the connection or is read-only, the PostgreSQL driver
    not installed), and its subclass :class:`~pm.store.SchemaTooNew` for a database from a
    newer release. The gateway then refuses to start, rather than failing at its first commit.
    """
    if isinstance(location, str) and is_postgres_url(location):
        return await trio.to_thread.run_sync(_open_postgres, location, commit_interval)
    return await trio.to_thread.run_sync(_open_sqlite, location, commit_interval)


def _open_sqlite(path: str | Path, commit_interval: float) -> Store:
    named = f"the database {str(path)!r} (store.path)"
    try:
        connection = connect_sqlite(path)
    except (OSError, sqlite3.Error) as error:
        raise StoreOpenError(f"cannot use {named}: {open_failure(error)}") from error
    return _ready(connection, named, commit_interval)


def _open_postgres(url: str, commit_interval: float) -> Store:
    named = f"the database {redacted(url)!r} (store.url)"
    try:
        connection = connect_postgres(url)
    except StoreOpenError:
        raise
    except driver_errors() as error:
        # The server refused or is gone (libpq's message runs over several lines).
        raise StoreOpenError(f"cannot use {named}: {' '.join(str(error).split())}") from error
    return _ready(connection, named, commit_interval)


def _ready(connection: Connection, named: str, commit_interval: float) -> Store:
    """Migrate; the connection is closed if that fails."""
    try:
        migrate(connection)
        store = Store(connection, commit_interval)
    except SchemaTooNew as error:
        connection.close()
        raise SchemaTooNew(f"cannot use {named}: {error}") from None
    except connection.error_types as error:
        connection.close()
        raise StoreOpenError(f"cannot use {named}: {_one_line(error)}") from error
    except BaseException:
        connection.close()
        raise
    return store


def _one_line(error: Exception) -> str:
    if isinstance(error, sqlite3.Error):
        return open_failure(error)
    return " ".join(str(error).split())
