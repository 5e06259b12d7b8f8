"""Named, ordered schema migrations of the catalog (``PRAGMA user_version``).

Append a migration to add a schema change; never edit one that has shipped.
An index whose version is newer than ``LATEST_VERSION`` is refused with
:class:`~clipdex.errors.IndexVersionError`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable

from clipdex.store.guard import retry_busy

DEFAULT_LIMIT_MEGAPIXELS = 178.0  # the limit every run used before --max-megapixels was recorded
_LIMIT = re.compile(r"(\d+(?:\.\d+)?)-megapixel limit")


def classify_old_failure(reason: str) -> tuple[str, float | None]:
    """The failure kind (and megapixel limit) of a failure recorded before kinds existed,
    from its reason text: read errors were transient, the megapixel limit a limit."""
    if "cannot be read (" in reason:
        return "transient", None
    if "megapixel limit" in reason:
        found = _LIMIT.search(reason)
        return "limit", float(found.group(1)) if found else DEFAULT_LIMIT_MEGAPIXELS
    return "permanent", None


def _classify_old_failures(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT id, reason FROM files WHERE status = 'failed' "
                        "AND failure_kind IS NULL").fetchall()
    conn.executemany("UPDATE files SET failure_kind = ?, failure_limit = ? WHERE id = ?",
                     [(*classify_old_failure(reason or ""), file_id) for file_id, reason in rows])


def _add_probe_columns(conn: sqlite3.Connection) -> None:
    """models.probe and models.probe_sources, each added where the table lacks it: a catalog whose
    version was set back by hand (to run an older migration again) keeps the columns it has."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(models)")}
    for column, kind in (("probe", "BLOB"), ("probe_sources", "TEXT")):
        if column not in present:
            conn.execute(f"ALTER TABLE models ADD COLUMN {column} {kind}")


def _add_videos(conn: sqlite3.Connection) -> None:
    """Frames of videos as rows of files (video_id, frame_t), the videos' sampling, and a trigger
    that takes a video's frames and sampling with it, however its row is deleted. Each step is
    skipped where it was made already (a catalog whose version was set back by hand)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
    for column, kind in (("video_id", "INTEGER"), ("frame_t", "REAL"), ("frame_scene", "INTEGER")):
        if column not in present:
            conn.execute(f"ALTER TABLE files ADD COLUMN {column} {kind}")
    conn.execute("CREATE INDEX IF NOT EXISTS files_video ON files (video_id)")
    conn.execute("""
        CREATE TABLE IF NOT EXISTS videos (
            file_id INTEGER PRIMARY KEY,
            duration REAL NOT NULL,
            interval REAL NOT NULL,
            frames INTEGER NOT NULL,
            codec TEXT,
            fps REAL,
            sampled_at REAL NOT NULL
        )""")
    conn.execute("""
        CREATE TRIGGER IF NOT EXISTS video_deleted AFTER DELETE ON files WHEN OLD.video_id IS NULL
        BEGIN
            DELETE FROM files WHERE video_id = OLD.id;
            DELETE FROM videos WHERE file_id = OLD.id;
        END""")
    # However a video's row comes to say it failed, or to hold other content (a broken link found by
    # the walk, a Ray run's failure row), its frames go: they are moments of what it held.
    conn.execute("""
        CREATE TRIGGER IF NOT EXISTS video_replaced AFTER UPDATE OF status, content_hash ON files
        WHEN OLD.video_id IS NULL AND (NEW.status != 'ok' OR NEW.content_hash IS NOT OLD.content_hash)
        BEGIN
            DELETE FROM files WHERE video_id = OLD.id;
            DELETE FROM videos WHERE file_id = OLD.id;
        END""")


Migration = str | Callable[[sqlite3.Connection], None]  # SQL statements, or a function run in the transaction

MIGRATIONS: list[tuple[str, Migration]] = [
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
    ("005_kinds_of_old_failures", _classify_old_failures),
    ("006_scale", """
        ALTER TABLE files ADD COLUMN taken_at TEXT;
        ALTER TABLE files ADD COLUMN taken_source TEXT;
        UPDATE files SET taken_at = strftime('%Y-%m-%dT%H:%M:%S', mtime_ns / 1000000000, 'unixepoch',
                                             'localtime'), taken_source = 'mtime'
            WHERE status = 'ok' AND mtime_ns > 0;
        CREATE INDEX files_taken_at ON files (taken_at);
        CREATE INDEX embeddings_row ON embeddings (model_id, row);
        ALTER TABLE models ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE models ADD COLUMN storage TEXT NOT NULL DEFAULT 'f32';
        ALTER TABLE models ADD COLUMN checked_rows INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE roots ADD COLUMN kind TEXT NOT NULL DEFAULT 'folder';
        CREATE TABLE imports (
            model_id INTEGER NOT NULL REFERENCES models (id),
            source TEXT NOT NULL,
            shard TEXT NOT NULL,
            rows INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,
            done_at REAL NOT NULL,
            PRIMARY KEY (model_id, source, shard)
        );
    """),
    ("007_precisions", """
        ALTER TABLE embeddings ADD COLUMN precision TEXT;
        CREATE TABLE precision_choices (
            model_id INTEGER NOT NULL REFERENCES models (id),
            host TEXT NOT NULL,
            precision TEXT NOT NULL,
            runtime TEXT NOT NULL,
            reason TEXT NOT NULL,
            cosine REAL,
            speedup REAL,
            photos INTEGER NOT NULL,
            min_cosine REAL NOT NULL,
            chosen_at REAL NOT NULL,
            PRIMARY KEY (model_id, host)
        );
    """),
    ("008_logit_bias", """
        ALTER TABLE models ADD COLUMN logit_bias REAL;
    """),
    ("009_model_probe", _add_probe_columns),
    ("010_duplicates", """
        CREATE TABLE IF NOT EXISTS phashes (
            content_hash TEXT PRIMARY KEY,
            phash TEXT,
            computed_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS duplicate_rules (
            model_id INTEGER PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
            rule TEXT NOT NULL,
            calibrated_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS keepers (
            path TEXT PRIMARY KEY,
            content_hash TEXT NOT NULL,
            marked_at REAL NOT NULL
        )
    """),
    ("011_videos", _add_videos),
]
# 004: raw_path holds the exact bytes of a path that is not valid UTF-8 (``path`` then
# holds its display form, \xNN escaped); failure_kind is 'transient' (an OS read error,
# retried on the next run), 'limit' (over failure_limit megapixels, retried when the limit
# is raised) or 'permanent' (the file itself is bad).
# 005: failures recorded before 004 had no kind, so every one stayed permanent (a photo on a
# disk that was briefly unmounted was never retried): their kind is read from the reason.
# 006: files.taken_at is when a photo was taken, local wall-clock time as EXIF gives it
# ('YYYY-MM-DDTHH:MM:SS'; taken_source 'exif'), else its file's mtime ('mtime') or what an
# import said ('import'); filters by date use it. embeddings_row maps a search's rows back to
# photos. models.generation is bumped whenever row numbers change meaning (compaction, a
# repair that shrinks the file): whatever was built on row numbers (the ANN index) is rebuilt.
# models.storage is how the vector file stores rows ('f32', 'f16'); models.checked_rows how many
# of its rows a full check found sound (an index run checks only the rows after them). roots.kind is 'folder'
# (indexed from disk: hidden while it is missing) or 'import' (adopted embeddings, whose
# images may live elsewhere: never hidden). imports records the shards an import finished.
# 007: embeddings.precision is the precision a vector was computed in ('fp32', 'bf16', 'fp16',
# 'int8'; NULL: the model's own models.precision, as every vector before 007). An index
# continued on another machine may hold vectors of several full precisions under one model:
# they agree to cosine >= 0.999 and are searched together. precision_choices records what
# `--precision auto` chose for a model on one kind of host (device, CPU features, runtimes),
# why, and the fidelity it measured: the check runs once per model and kind of host.
# 008: models.logit_bias is the bias of a model trained with a sigmoid loss (SigLIP): its
# classification scores each label on its own, sigmoid(logit_scale * cosine + logit_bias).
# NULL for a softmax model (CLIP), as every model registered before 008 (softmax over labels).
# 009: models.probe is the model's vectors for clipdex.models.probe's fixed probe (little-endian
# float32 rows of dim: the probe image's, then the three probe texts'), recorded by the first
# encoder that adds vectors; models.probe_sources a JSON list of the sources (runtime, export,
# folder, hub repository) found to give the same probe, each {"source", "towers" (checked on:
# "image", "text"), "cosine" (least probe cosine; null for the source that recorded it), "at"}.
# A source new to the model is checked before its vectors join the index's. NULL for both:
# no probe yet (every model before 009); the next encoder that adds vectors records one.
# 010: `clipdex duplicates`. phashes caches a photo's perceptual signature by content hash (64 hex
# digits: four of imagehash's 64-bit pHashes, of the photo with uniform borders trimmed, its mirror,
# the frame's centre and its mirror; NULL: the image could not be decoded), computed only for
# candidate pairs; a value of another length is an older recipe and is computed again.
# duplicate_rules holds the rule a model's calibration chose (JSON: the cosine above which two
# photos are copies, the lower band a pHash distance confirms, and the estimates measured), one per
# model. keepers holds the photos a person marked to keep (web page, by path, with the content hash
# the photo had when marked): `--move-extras` never moves them. A mark whose path now holds other
# content (the file was replaced or edited, then indexed again) no longer counts.
# 011: videos. A video is a row of files (its path, size, mtime and content hash, status as a
# photo's) with a row of videos: its duration, the --video-interval it was sampled at, how many
# frames were kept, codec and frame rate. Each kept frame is a row of files too, with video_id
# (the video's files.id), frame_t (seconds from its start) and frame_scene (its shot: 0, 1, ... as
# the sampler found scene changes; hits in one shot close in time are one moment); its path is the video's with a
# '#t=SECONDS' suffix and its content_hash '<video's hash>@SECONDS' (clipdex.video), the key of its
# vector in embeddings. A video's own content hash has no vector. Deleting a video's row deletes
# its frames and its videos row (trigger video_deleted); NULL video_id, frame_t and frame_scene: a photo or a video.
LATEST_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply every migration the catalog lacks, each in its own transaction.

    The version is read again inside each write transaction: when two first runs
    open a new index at once, the second finds the first's migrations applied
    and skips them (instead of failing on "table roots already exists").
    """
    while True:
        retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current >= LATEST_VERSION:
                conn.execute("COMMIT")
                return
            step = MIGRATIONS[current][1]
            if isinstance(step, str):
                for statement in filter(str.strip, step.split(";")):
                    conn.execute(statement)
            else:
                step(conn)
            conn.execute(f"PRAGMA user_version = {current + 1}")
        except BaseException:
            if conn.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
