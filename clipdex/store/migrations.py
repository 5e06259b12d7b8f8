"""Named, ordered schema migrations of the catalog (``PRAGMA user_version``).

Append a migration to add a schema change; never edit one that has shipped.
An index whose version is newer than ``LATEST_VERSION`` is refused with
:class:`~clipdex.errors.IndexVersionError`.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[str, str]] = [
    ("001_initial", """
        CREATE TABLE roots (
            path TEXT PRIMARY KEY,
            added_at REAL NOT NULL,
            last_indexed_at REAL
        );
        CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            content_hash TEXT,
            width INTEGER,
            height INTEGER,
            status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
            reason TEXT,
            indexed_at REAL NOT NULL
        );
        CREATE INDEX files_content_hash ON files (content_hash);
        CREATE TABLE models (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            spec TEXT NOT NULL,
            dim INTEGER NOT NULL,
            logit_scale REAL NOT NULL,
            rows INTEGER NOT NULL,
            precision TEXT NOT NULL,
            vectors_file TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE embeddings (
            model_id INTEGER NOT NULL REFERENCES models (id),
            content_hash TEXT NOT NULL,
            row INTEGER NOT NULL,
            PRIMARY KEY (model_id, content_hash)
        );
    """),
    ("002_classifications", """
        CREATE TABLE label_sets (
            id INTEGER PRIMARY KEY,
            model_id INTEGER NOT NULL REFERENCES models (id),
            name TEXT NOT NULL,
            definition TEXT NOT NULL,
            labels TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (model_id, name)
        );
        CREATE TABLE predictions (
            set_id INTEGER NOT NULL REFERENCES label_sets (id) ON DELETE CASCADE,
            content_hash TEXT NOT NULL,
            label TEXT NOT NULL,
            prob REAL NOT NULL,
            probs BLOB NOT NULL,
            PRIMARY KEY (set_id, content_hash)
        );
    """),
    ("003_corrections", """
        CREATE TABLE corrections (
            model_id INTEGER NOT NULL REFERENCES models (id),
            set_name TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            label TEXT NOT NULL,
            corrected_at REAL NOT NULL,
            PRIMARY KEY (model_id, set_name, content_hash)
        );
    """),
    ("004_raw_paths_and_failure_kinds", """
        ALTER TABLE files ADD COLUMN raw_path BLOB;
        ALTER TABLE files ADD COLUMN failure_kind TEXT;
        ALTER TABLE files ADD COLUMN failure_limit REAL;
    """),
]
# 004: raw_path holds the exact bytes of a path that is not valid UTF-8 (``path`` then
# holds its display form, \xNN escaped); failure_kind is 'transient' (an OS read error,
# retried on the next run), 'limit' (over failure_limit megapixels, retried when the limit
# is raised) or 'permanent' (the file itself is bad).
LATEST_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply every migration the catalog lacks, each in its own transaction.

    The version is read again inside each write transaction: when two first runs
    open a new index at once, the second finds the first's migrations applied
    and skips them (instead of failing on "table roots already exists").
    """
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current >= LATEST_VERSION:
                conn.execute("COMMIT")
                return
            for statement in filter(str.strip, MIGRATIONS[current][1].split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {current + 1}")
        except BaseException:
            if conn.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
