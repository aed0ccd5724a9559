"""The SQLite schema and its forward migrations.

``MIGRATIONS[n]`` takes a database at version ``n`` to ``n + 1``; a database is always
migrated forward in order, inside one transaction per step, and its version is recorded in
``schema_version``. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3

from ._errors import StoreOpenError

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the first release.
    """
    CREATE TABLE jobs (
        id            INTEGER PRIMARY KEY,
        created_at    REAL NOT NULL,
        finish_at     REAL,
        timeout       REAL,
        status        TEXT NOT NULL,
        total_count   INTEGER NOT NULL,
        finish_count  INTEGER NOT NULL,
        error_count   INTEGER NOT NULL,
        progress      INTEGER NOT NULL
    );
    CREATE TABLE entries (
        job_id    INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        position  INTEGER NOT NULL,
        method    TEXT NOT NULL,
        resource  TEXT NOT NULL,
        data      TEXT NOT NULL,
        PRIMARY KEY (job_id, position)
    );
    CREATE TABLE tasks (
        id         INTEGER PRIMARY KEY,
        job_id     INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        entry      INTEGER NOT NULL,
        device     TEXT NOT NULL,
        timeout    REAL NOT NULL,
        status     TEXT NOT NULL,
        progress   INTEGER NOT NULL,
        result     TEXT,
        finish_at  REAL
    );
    CREATE INDEX tasks_by_job ON tasks (job_id, id);
    CREATE TABLE counters (
        name   TEXT PRIMARY KEY,
        value  INTEGER NOT NULL
    );
    """,
    # 1 -> 2: listing at scale. `GET /jobs?status=` pages newest first and counts per status;
    # retention finds finished jobs by age.
    """
    CREATE INDEX jobs_by_status ON jobs (status, id);
    CREATE INDEX jobs_by_finish ON jobs (finish_at) WHERE finish_at IS NOT NULL;
    """,
    # 2 -> 3: device presence (kept across restarts) and a device's tasks across jobs
    # (`GET /devices/{id}/tasks`, newest first; per-device counts by status).
    """
    CREATE TABLE devices (
        id               TEXT PRIMARY KEY,
        presence         TEXT NOT NULL,
        last_seen        REAL,
        connected_at     REAL,
        disconnected_at  REAL
    );
    CREATE INDEX tasks_by_device ON tasks (device, id);
    """,
    # 3 -> 4: queues that never wedge. A task unsent by `expires_at` (epoch seconds) ends
    # "expired"; a job counts its pending, sent and expired tasks (filled in from the tasks of
    # jobs stored before); GET /jobs/{id}/tasks filters a job's tasks by status and device.
    """
    ALTER TABLE tasks ADD COLUMN expires_at REAL;
    ALTER TABLE jobs ADD COLUMN pending_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN sent_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN expired_count INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET
        pending_count = (SELECT count(*) FROM tasks WHERE job_id = jobs.id AND status = 'pending'),
        sent_count = (SELECT count(*) FROM tasks WHERE job_id = jobs.id AND status = 'sent');
    CREATE INDEX tasks_by_job_status ON tasks (job_id, status, id);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(StoreOpenError):
    """The database was written by a newer puppetmaster; refusing to touch it."""


def schema_version(connection: sqlite3.Connection) -> int:
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def migrate(connection: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database forward to ``target``; returns the version it started at.

    Error handling: raises :class:`SchemaTooNew` for a database from a newer release.
    """
    start = schema_version(connection)
    if start > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {start} is newer than this release ({SCHEMA_VERSION})"
        )
    for version in range(start, target):
        # One transaction per step, version bump included: a failed step leaves the database
        # at the previous version, never half-migrated.
        connection.executescript(
            "BEGIN;"
            + MIGRATIONS[version]
            + f";DELETE FROM schema_version; INSERT INTO schema_version VALUES ({version + 1});"
            + "COMMIT;"
        )
    return start
