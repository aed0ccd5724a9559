"""The PostgreSQL engine (psycopg 3, its synchronous API in the store's worker thread):
connecting, the dialect, which errors are faults, and reconnecting after one.

psycopg is an optional dependency (``pip install 'sanji-puppetmaster[postgres]'``): it is
imported only when ``store.url`` is set, so ``pm`` runs without it on SQLite.

Its asynchronous API runs on asyncio only; the synchronous one in a worker thread is what the
SQLite store does too, so both engines share the store's thread, limiter and group commit.

Error handling: an error of the connection (the server restarted, the network dropped, the
server shutting down, a disk full on the server: psycopg's ``OperationalError``) or a
read-only transaction (a standby after a fail-over) is a storage fault, retried like a full
disk; the connection is opened again on the next use. A session the server ended while idle
is replaced before it is used, without an error. Any other error (a constraint, a syntax
error) is a bug.
"""

from __future__ import annotations

import re
import select
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._errors import StoreOpenError
from ._statements import INTEGER, REAL, WriteStatements, write_statements

if TYPE_CHECKING:
    import psycopg

URL_SCHEMES = ("postgresql://", "postgres://")
# Seconds to wait for the server when (re)connecting: a commit blocked longer than this on an
# unreachable server fails and is retried, rather than hanging the store's thread.
CONNECT_TIMEOUT = 5

# The advisory lock key of schema migrations (any constant that no other user of the database
# takes; advisory locks are per database): "pm" "migr" in ASCII.
MIGRATION_LOCK = 0x706D_6D69_6772

_POSTGRES_TYPES = {INTEGER: "BIGINT", REAL: "DOUBLE PRECISION"}
_TYPE_WORDS = re.compile(r"\b(INTEGER|REAL)\b")


def is_postgres_url(location: str) -> bool:
    return location.startswith(URL_SCHEMES)


def translate_for_postgres(script: str) -> str:
    """A migration of ``pm.store._schema`` as PostgreSQL runs it: ``INTEGER`` is 64-bit
    (``BIGINT``: task ids pass 2**31 in time) and ``REAL`` is ``DOUBLE PRECISION`` (SQLite's
    REAL is 8 bytes; PostgreSQL's is 4)."""
    return _TYPE_WORDS.sub(lambda word: _POSTGRES_TYPES[word.group(1)], script)


def _placeholders(sql: str) -> str:
    # The queries use SQLite's "?"; psycopg binds "%s" (and reads "%" as its own).
    return sql.replace("%", "%%").replace("?", "%s")


def rows_from(types: Sequence[str]) -> str:
    # ->> gives text; each column is cast to its type (text needs none).
    columns = ", ".join(
        f"(value->>{index})::{_POSTGRES_TYPES[kind]}" if kind in _POSTGRES_TYPES
        else f"value->>{index}"
        for index, kind in enumerate(types)
    )  # fmt: skip
    return f"SELECT {columns} FROM json_array_elements(?::json) AS rows (value)"


STATEMENTS = write_statements(rows_from)


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class PostgresConnection:
    """One psycopg connection in autocommit mode (the store runs its own transactions),
    opened again when the server dropped it. See :class:`pm.store._connection.Connection`."""

    engine = "PostgreSQL"
    setting = "store.url"
    inline = False
    statements: WriteStatements = STATEMENTS

    def __init__(self, url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self._url = url
        self.location = redacted(url)
        self.error_types: tuple[type[Exception], ...] = (psycopg.Error,)
        self._translated: dict[str, str] = {}
        self._connection = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        return self._psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)

    def _live(self) -> psycopg.Connection[Any]:
        if not self._connection.closed and self._spoke_while_idle():
            # The server ended the session while it sat idle (a restart, a fail-over, an
            # idle timeout): it sends its reason and closes. Found here, before a commit
            # would fail on it and wait out a retry.
            self._connection.close()
        if self._connection.closed:
            # Dropped by the server or the network: an error was reported if it happened
            # during a statement; this use tries again.
            self._connection = self._connect()
        return self._connection

    def _spoke_while_idle(self) -> bool:
        """Whether the server sent something on a session with nothing under way: we never
        LISTEN, so that is the end of the session (or, rarely, a notice: reconnecting then
        costs one connection)."""
        idle = self._psycopg.pq.TransactionStatus.IDLE
        if self._connection.info.transaction_status != idle:
            return False
        readable, _, _ = select.select([self._connection.fileno()], [], [], 0)
        return bool(readable)

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        translated = self._translated.get(sql)
        if translated is None:
            translated = self._translated[sql] = _placeholders(sql)
        return self._live().execute(translated, tuple(parameters))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._live().transaction():
            yield

    @contextmanager
    def migration(self) -> Iterator[None]:
        with self.transaction():
            # Held to the end of the transaction: a gateway starting meanwhile waits here,
            # then finds the schema current. (Without it, two concurrent CREATE TABLEs of
            # one name fail on a unique index of PostgreSQL's catalog.)
            self.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            yield

    def run_script(self, script: str) -> None:
        # No parameters: psycopg sends the script as is, several statements at once.
        self._connection.execute(translate_for_postgres(script))  # type: ignore[arg-type]

    def is_storage_fault(self, error: Exception) -> bool:
        errors = self._psycopg.errors
        return isinstance(error, self._psycopg.OperationalError | errors.ReadOnlySqlTransaction)

    def fault_reason(self, error: Exception) -> str:
        # libpq's messages run over several lines ("server closed the connection
        # unexpectedly\n\tThis probably means..."): one line for the log and /readyz.
        message = " ".join(str(error).split())
        sqlstate = getattr(error, "sqlstate", None)
        return f"{message} ({sqlstate or type(error).__name__})"

    def close(self) -> None:
        self._connection.close()


def driver_errors() -> tuple[type[Exception], ...]:
    """psycopg's errors, once :func:`connect_postgres` has shown the driver is installed."""
    import psycopg

    return (psycopg.Error,)


def connect_postgres(url: str) -> PostgresConnection:
    """Connect to the database at ``url`` and check that it takes writes.

    Error handling: raises :class:`~pm.store.StoreOpenError` when psycopg is not installed
    or when the database refuses writes (a standby); psycopg's errors otherwise.
    """
    try:
        import psycopg  # noqa: F401 - only whether it is there
    except ImportError:
        raise StoreOpenError(
            f"store.url is set ({redacted(url)}) but the PostgreSQL driver is not installed: "
            "pip install 'sanji-puppetmaster[postgres]'"
        ) from None
    connection = PostgresConnection(url)
    try:
        # A standby (or a database set read-only) fails here, at start, and not at the first
        # job's commit.
        (read_only,) = connection.execute("SHOW transaction_read_only").fetchone()
        if read_only == "on":
            raise StoreOpenError(
                f"cannot use the database {connection.location!r} (store.url): it is "
                "read-only (a standby, or default_transaction_read_only is on)"
            )
    except BaseException:
        connection.close()
        raise
    return connection
