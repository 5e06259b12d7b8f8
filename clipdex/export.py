"""Tables out: predictions as CSV or Parquet, and predictions joined onto the user's table.

Column order of a predictions table (fixed)::

    path, photo_id,
    then for each label set, in the order given:
        <set>, <set>_prob, <set>_prob_<label> for every label in the set's order

Sets with corrections made in the web app add ``<set>_truth`` (the person's
label, empty where none) after their probabilities (and after ``<set>_top``).
``photo_id`` is the file name without its extension. ``<set>`` is the
predicted label (``uncertain`` below ``--min-prob``; labels joined by ``;`` in
multi-label mode); ``<set>_prob`` is the probability of the predicted (best) label.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from clipdex.classify import Classification
from clipdex.errors import TableError

PROB_DIGITS = 6


def prediction_columns(results: Sequence[Classification], top_k: int | None = None) -> list[str]:
    """The columns the label sets add, in the documented order."""
    columns: list[str] = []
    for result in results:
        name = result.label_set.name
        columns += [name, f"{name}_prob"] + [f"{name}_prob_{label}" for label in result.labels]
        if top_k:
            columns.append(f"{name}_top")
        if result.truth is not None:
            columns.append(f"{name}_truth")
    return columns


def prediction_cells(results: Sequence[Classification], top_k: int | None = None) -> dict[str, list[str]]:
    """path -> the cells of :func:`prediction_columns` for that photo (blank where a set lacks it)."""
    positions = [{path: i for i, path in enumerate(r.paths)} for r in results]
    tops = [r.top_k(top_k) if top_k else [] for r in results]
    rows: dict[str, list[str]] = {}
    for path in set().union(*(r.paths for r in results)):
        cells: list[str] = []
        for result, position, top in zip(results, positions, tops):
            i = position.get(path)
            if i is None:
                cells += [""] * (2 + len(result.labels) + (1 if top_k else 0)
                                 + (1 if result.truth is not None else 0))
                continue
            cells += [result.predicted[i], _fmt(result.confidence[i])]
            cells += [_fmt(p) for p in result.probs[i]]
            if top_k:
                cells.append(";".join(f"{label}:{prob:.3f}" for label, prob in top[i]))
            if result.truth is not None:
                cells.append(result.truth[i])
        rows[path] = cells
    return rows


def _fmt(value: float) -> str:
    return f"{float(value):.{PROB_DIGITS}f}"


def write_predictions(results: Sequence[Classification], out: str | os.PathLike[str],
                      top_k: int | None = None) -> int:
    """Write one row per photo (path, photo_id, then each set's columns); return the row count."""
    cells = prediction_cells(results, top_k)
    header = ["path", "photo_id"] + prediction_columns(results, top_k)
    rows = [[path, PurePath(path).stem] + cells[path] for path in sorted(cells)]
    write_table(out, header, rows)
    return len(rows)


def write_table(out: str | os.PathLike[str], header: list[str], rows: list[list[str]]) -> None:
    """CSV, or Parquet when ``out`` ends in .parquet (probability columns become floats)."""
    path = Path(out)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise TableError(str(path), "writing Parquet needs pyarrow",
                             "pip install 'clipdex[parquet]', or write a .csv file.") from None
        columns = {}
        for j, name in enumerate(header):
            values = [row[j] for row in rows]
            if "_prob" in name and all(_is_number(v) for v in values):
                columns[name] = pa.array([float(v) if v != "" else None for v in values], pa.float32())
            else:
                columns[name] = pa.array(values, pa.string())
        pq.write_table(pa.table(columns), path)
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _is_number(value: str) -> bool:
    if value == "":
        return True
    try:
        float(value)
    except ValueError:
        return False
    return True


@dataclass
class JoinReport:
    """How a metadata table and the index's photos matched."""

    rows: int = 0
    matched: int = 0
    rows_without_image: int = 0
    images_without_row: list[str] = field(default_factory=list)
    key_mode: str = "stem"


def read_table(path: str | os.PathLike[str], key: str) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file's header and rows (as strings), checking that ``key`` is a column."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as e:
        raise TableError(str(path), f"cannot be read ({e.strerror or e})", "Check the path.") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise TableError(str(path), f"is not a readable CSV file ({e})",
                         "Save it as UTF-8 CSV with a header row.") from None
    if not header:
        raise TableError(str(path), "has no header row", "The first row must name the columns.")
    if key not in header:
        raise TableError(str(path), f"has no column {key!r}",
                         f"Columns: {', '.join(header[:20])}. Pass the key column with --key.")
    return header, rows


class KeyMatcher:
    """Matches a table's key values to indexed photo paths.

    A value containing a path separator is matched as a path (absolute, or a
    relative path matched against the end of the photo's path); any other
    value is matched against the file name and its stem (``abc`` or ``abc.jpg``).
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = set(paths)
        self.by_name: dict[str, list[str]] = {}
        for path in paths:
            pure = PurePath(path)
            for name in {pure.name, pure.stem}:
                self.by_name.setdefault(name, []).append(path)

    def match(self, value: str) -> str | None:
        value = value.strip()
        if not value:
            return None
        if "/" in value or os.sep in value:
            if value in self.paths:
                return value
            suffix = "/" + value.lstrip("./")
            hits = [p for p in self.paths if p.endswith(suffix)]
        else:
            hits = self.by_name.get(value, [])
        if len(hits) > 1:
            raise TableError(value, f"matches {len(hits)} indexed photos ({', '.join(sorted(hits)[:3])})",
                             "Key the table by a column that holds paths, or index one folder per index.")
        return hits[0] if hits else None


def join_metadata(results: Sequence[Classification], table: str | os.PathLike[str], key: str,
                  out: str | os.PathLike[str], top_k: int | None = None) -> JoinReport:
    """Append the prediction columns to the user's table and write it to ``out``.

    Every row of the table is kept, in order; rows without a photo keep empty
    cells. Photos without a row are listed in the report.
    """
    header, rows = read_table(table, key)
    added = prediction_columns(results, top_k)
    header = [h for h in header if h not in added]  # re-running replaces earlier columns
    cells = prediction_cells(results, top_k)
    matcher = KeyMatcher(list(cells))
    width = len(added)
    report = JoinReport(rows=len(rows))
    used: set[str] = set()
    out_rows = []
    for row in rows:
        path = matcher.match(row.get(key) or "")
        if path is None:
            report.rows_without_image += 1
            extra = [""] * width
        else:
            report.matched += 1
            used.add(path)
            extra = cells[path]
        out_rows.append([row.get(h, "") for h in header] + extra)
    report.images_without_row = sorted(set(cells) - used)
    write_table(out, header + added, out_rows)
    return report
