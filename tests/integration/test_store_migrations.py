"""Migration 005: failures recorded before failure kinds existed get their kind from their reason."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clipdex import Index
from clipdex.store import Store
from clipdex.store.migrations import LATEST_VERSION, MIGRATIONS

OLD_FAILURES = {
    "a.jpg": ("cannot be read (No such file or directory)", "transient", None),
    "b.jpg": ("image is 20000x20000 (400.0 megapixels), above the 178-megapixel limit that guards "
              "against decompression bombs", "limit", 178.0),
    "c.jpg": ("image is 9000x9000 (81.0 megapixels), above the 50.5-megapixel limit; index it with "
              "--max-megapixels 82", "limit", 50.5),
    "d.jpg": ("over the megapixel limit", "limit", 178.0),
    "e.jpg": ("not an image (cannot identify image file)", "permanent", None),
    "f.jpg": ("", "permanent", None),
}


def _catalog_at_version_3(folder: Path) -> None:
    """A catalog as clipdex wrote it before migration 004, with failures of every kind."""
    folder.mkdir()
    conn = sqlite3.connect(folder / "catalog.sqlite", isolation_level=None)
    for _, sql in MIGRATIONS[:3]:
        assert isinstance(sql, str)
        for statement in filter(str.strip, sql.split(";")):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.executemany("INSERT INTO files (path, size, mtime_ns, status, reason, indexed_at) "
                     "VALUES (?, 1, 1, 'failed', ?, 0)",
                     [(f"/photos/{name}", reason) for name, (reason, _, _) in OLD_FAILURES.items()])
    conn.execute("INSERT INTO files (path, size, mtime_ns, content_hash, status, indexed_at) "
                 "VALUES ('/photos/ok.jpg', 1, 1, 'h', 'ok', 0)")
    conn.close()


def test_old_failures_are_classified_by_their_reason(tmp_path: Path) -> None:
    _catalog_at_version_3(tmp_path / "idx")
    store = Store.open(tmp_path / "idx")
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION == 11
        kinds = {f.path.rsplit("/", 1)[1]: (f.failure_kind, f.failure_limit) for f in store.failures()}
        assert kinds == {name: (kind, limit) for name, (_, kind, limit) in OLD_FAILURES.items()}
        assert store.file_by_path("/photos/ok.jpg").failure_kind is None  # type: ignore[union-attr]
    finally:
        store.close()


def test_an_old_read_error_is_retried_by_the_next_run(tmp_path: Path, photos: Path,
                                                      model_kwargs: dict[str, str]) -> None:
    idx = tmp_path / "idx"
    with Index.open(idx, create=True, **model_kwargs) as index:
        index.add(photos)
    photo = str(photos / "trip" / "photo-000.jpg")
    conn = sqlite3.connect(idx / "catalog.sqlite", isolation_level=None)
    conn.execute("UPDATE files SET status = 'failed', reason = 'cannot be read (Input/output error)', "
                 "content_hash = NULL, failure_kind = NULL WHERE path = ?", (photo,))
    classify_old = MIGRATIONS[4][1]  # 005, as it runs on a failure recorded before 004
    assert callable(classify_old)
    classify_old(conn)
    conn.close()
    with Index.open(idx, **model_kwargs) as index:
        (failed,) = index.failures()
        assert failed.failure_kind == "transient"
        report = index.add(photos)
        assert report.retried == 1 and not report.failed and index.status().indexed == 12


@pytest.mark.parametrize("reason", ["cannot be read (No such file or directory)"])
def test_failures_with_a_kind_are_left_alone(tmp_path: Path, reason: str) -> None:
    _catalog_at_version_3(tmp_path / "idx")
    conn = sqlite3.connect(tmp_path / "idx" / "catalog.sqlite", isolation_level=None)
    for _, sql in MIGRATIONS[3:4]:
        assert isinstance(sql, str)
        for statement in filter(str.strip, sql.split(";")):
            conn.execute(statement)
    conn.execute("UPDATE files SET failure_kind = 'permanent' WHERE reason = ?", (reason,))
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    store = Store.open(tmp_path / "idx")
    try:
        assert store.file_by_path("/photos/a.jpg").failure_kind == "permanent"  # type: ignore[union-attr]
    finally:
        store.close()
