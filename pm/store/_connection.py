"""What the store needs from a database engine: one connection, its SQL dialect and how its
errors read. :class:`pm.store._sqlite_connection.SqliteConnection` and
:class:`pm.store._postgres_connection.PostgresConnection` implement it; everything else in the
store (group commit, pending changes, rows, queries, migrations) is written once against it.

The queries are written once, in the SQL both engines run, with ``?`` placeholders; an engine
that spells them otherwise translates them in :meth:`Connection.execute`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ._statements import WriteStatements


class Cursor(Protocol):
    """The rows of one statement (what ``sqlite3`` and ``psycopg`` cursors both offer)."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection, used from one thread at a time (the store's limiter sees to it).

    Error handling: every method raises the engine's own errors (``error_types``); the store
    asks :meth:`is_storage_fault` whether one is worth retrying.
    """

    # "SQLite" or "PostgreSQL", and the setting that names the database (messages say both).
    engine: str
    setting: str
    # What the database is: the path, or the URL without its password.
    location: str
    # Run on the trio thread instead of a worker thread (an in-memory SQLite: no I/O).
    inline: bool
    statements: WriteStatements
    error_types: tuple[type[Exception], ...]

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        """One statement with ``?`` placeholders, in the transaction under way if any."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """A block that commits on success and rolls back on any exception (re-raised)."""
        ...

    def migration(self) -> AbstractContextManager[None]:
        """The transaction :func:`pm.store._schema.migrate` runs in, holding the engine's
        lock that makes every other connection's migration wait until it ends (several
        gateways starting at once on one database migrate it once)."""
        ...

    def run_script(self, script: str) -> None:
        """Run one migration script of ``pm.store._schema.MIGRATIONS`` (several statements,
        no parameters) in the transaction under way."""
        ...

    def is_storage_fault(self, error: Exception) -> bool:
        """Whether ``error`` is the storage refusing writes for now (retried), not a bug."""
        ...

    def fault_reason(self, error: Exception) -> str:
        """``error`` as one line for the log, ``/readyz`` and 503s."""
        ...

    def close(self) -> None: ...
