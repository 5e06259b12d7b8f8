"""The catalog seen from the vector file: which rows a search may return, and whose photos they are.

A search ranks rows of a model's vector file (:mod:`clipdex.search.engine`);
these queries turn a :class:`~clipdex.search.filters.SearchFilter` into the
rows it allows, and the rows a search returned into photos. Each costs what it
touches: a folder is a range of the path index, a date range one of the
``taken_at`` index, the rows of a page one lookup through ``embeddings_row``.
Nothing here reads every file of a large index unless a filter matches them all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clipdex.discover import display_path
from clipdex.labels import MULTI_SEPARATOR
from clipdex.search.filters import SearchFilter
from clipdex.store.catalog import ModelRecord, Store

SQL_CHUNK = 500  # values bound in one IN (...) list


@dataclass(frozen=True)
class RowPhoto:
    """An indexed photo behind a row of the vector file."""

    row: int
    file_id: int
    path: str
    raw_path: bytes | None
    video_id: int | None = None  # a frame of a video: the video's id
    frame_t: float | None = None  # a frame of a video: seconds from its start
    frame_scene: int | None = None  # a frame of a video: its shot

    @property
    def fs_path(self) -> str:
        return os.fsdecode(self.raw_path) if self.raw_path is not None else self.path


def _folder_range(folder: str, column: str) -> tuple[str, list[object]]:
    """Rows whose ``column`` lies under ``folder``: a range of the path index (the prefix
    ``folder/`` up to ``folder0``, '0' being the character after '/')."""
    prefix = display_path(folder).rstrip(os.sep) + os.sep
    upper = prefix[:-1] + chr(ord(os.sep) + 1)
    return f"({column} >= ? AND {column} < ?)", [prefix, upper]


def filter_sql(store: Store, model: ModelRecord | None, filters: SearchFilter | None,
               hidden_roots: Sequence[str]) -> tuple[str, list[object]]:
    """SQL conditions (each `` AND …``) on ``files f`` for a filter and the hidden folders
    (a label filter needs the ``model`` whose label sets it reads)."""
    where: list[str] = []
    args: list[object] = []
    for root in hidden_roots:
        condition, more = _folder_range(root, "f.path")
        where.append(f"NOT {condition}")
        args += more
    if filters and filters.folders:
        parts = [_folder_range(folder, "f.path") for folder in filters.folders]
        where.append("(" + " OR ".join(p for p, _ in parts) + ")")
        args += [a for _, more in parts for a in more]
    if filters and filters.media:
        where.append("f.video_id IS NULL" if filters.media == "photos" else "f.video_id IS NOT NULL")
    if filters and filters.after:
        where.append("f.taken_at >= ?")
        args.append(filters.after)
    if filters and filters.before:
        where.append("f.taken_at < ?")
        args.append(filters.before)
    if filters and filters.label:
        assert model is not None, "a label filter reads one model's label sets"
        name, label = filters.label
        row = store.conn.execute("SELECT id FROM label_sets WHERE model_id = ? AND name = ?",
                                 (model.id, name)).fetchone()
        set_id = row[0] if row else -1
        # A person's correction wins over the prediction; a multi-label cell holds labels
        # joined by MULTI_SEPARATOR (as Classification.effective_labels reads them).
        where.append(
            "f.content_hash IN (SELECT p.content_hash FROM predictions p LEFT JOIN corrections c "
            "ON c.model_id = ? AND c.set_name = ? AND c.content_hash = p.content_hash "
            "WHERE p.set_id = ? AND instr(? || COALESCE(c.label, p.label) || ?, ?) > 0)")
        sep = MULTI_SEPARATOR
        args += [model.id, name, set_id, sep, sep, f"{sep}{label}{sep}"]
    return "".join(f" AND {w}" for w in where), args


def allowed_rows(store: Store, model: ModelRecord, filters: SearchFilter | None,
                 hidden_roots: Sequence[str]) -> np.ndarray:
    """Sorted unique rows of ``model``'s vector file that some photo passing the filter uses."""
    where, args = filter_sql(store, model, filters, hidden_roots)
    cursor = store.conn.cursor()
    cursor.row_factory = None
    # A folder or a date range is a range of an index on files: walk it first (CROSS JOIN
    # fixes SQLite's join order), then each photo's vector row by the embeddings key.
    join = "CROSS JOIN" if filters and (filters.folders or filters.after or filters.before) else "JOIN"
    rows = cursor.execute(
        f"SELECT e.row FROM files f {join} embeddings e ON e.model_id = ? "
        f"AND e.content_hash = f.content_hash WHERE f.status = 'ok'{where}", (model.id, *args))
    return np.unique(np.fromiter((r[0] for r in rows), dtype=np.int64))  # copies share a row


def photos_of_rows(store: Store, model: ModelRecord, rows: np.ndarray, filters: SearchFilter | None,
                   hidden_roots: Sequence[str]) -> list[RowPhoto]:
    """The photos behind ``rows`` that pass the filter (a row may have several: copies)."""
    where, args = filter_sql(store, model, filters, hidden_roots)
    wanted = [int(r) for r in rows]
    found: list[RowPhoto] = []
    cursor = store.conn.cursor()
    cursor.row_factory = None
    for start in range(0, len(wanted), SQL_CHUNK):
        chunk = wanted[start:start + SQL_CHUNK]
        found += [RowPhoto(*r) for r in cursor.execute(
            "SELECT e.row, f.id, f.path, f.raw_path, f.video_id, f.frame_t, f.frame_scene FROM embeddings e "
            "JOIN files f "
            "ON f.content_hash = e.content_hash "
            f"WHERE e.model_id = ? AND e.row IN ({', '.join('?' * len(chunk))}) AND f.status = 'ok'{where}",
            (model.id, *chunk, *args))]
    return found


def row_of_file(store: Store, model: ModelRecord, file_id: int) -> int | None:
    """The vector row of an indexed photo (None when it has no vector of ``model``)."""
    row = store.conn.execute(
        "SELECT e.row FROM files f JOIN embeddings e ON e.content_hash = f.content_hash AND e.model_id = ? "
        "WHERE f.id = ? AND f.status = 'ok'", (model.id, file_id)).fetchone()
    return None if row is None else int(row[0])


def indexed_paths(store: Store, hidden_roots: Sequence[str]) -> list[str]:
    """The paths of every indexed photo outside ``hidden_roots``, sorted (no vector is read):
    neither videos nor their frames (a phone's IMG_0001.JPG and IMG_0001.MOV are one name to a
    table keyed by stem; a video's row is joined by its own path, :mod:`clipdex.video_labels`)."""
    where, args = filter_sql(store, None, SearchFilter(media="photos"), hidden_roots)
    cursor = store.conn.cursor()
    cursor.row_factory = None
    return [r[0] for r in cursor.execute(f"SELECT f.path FROM files f WHERE f.status = 'ok'{where} "
                                         "AND f.id NOT IN (SELECT file_id FROM videos) ORDER BY f.path", args)]


def holds_photos_under(store: Store, folder: str) -> bool:
    """Whether any indexed photo lies under ``folder`` (one step of the path index)."""
    condition, args = _folder_range(folder, "path")
    return store.conn.execute(f"SELECT 1 FROM files WHERE status = 'ok' AND {condition} LIMIT 1",
                              args).fetchone() is not None
