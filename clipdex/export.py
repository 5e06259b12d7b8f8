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
``path`` is the display path (a name that is not valid UTF-8 shows ``\\xNN``).

Videos (:mod:`clipdex.video`): each moment (a sampled frame) is a row like a photo's,
its ``path`` the frame's (``party.mp4#t=83.500``). Given the per-video summaries
(:mod:`clipdex.video_labels`), each video also gets a row of its own, keyed by the
video's path, so a table that names the video gets a value: ``<set>`` is its
majority label (the label most of its moments have), ``<set>_prob`` that label's
share of its moments, ``<set>_prob_<label>`` each label's share of its moments,
``<set>_top`` the labels with the largest shares, ``<set>_truth`` empty.

Joining onto the user's table (:func:`join_metadata`) never changes the user's
columns: the header, every cell, the row order, extra fields of a row, the
encoding (UTF-8 with or without BOM, UTF-16), the delimiter (``,`` ``;`` tab
``|``) and the line ends come out as they went in. A clipdex column whose name
the table already uses is written as ``<name>_pred`` (``_pred2``, … if that is
taken too) and listed in :attr:`JoinReport.renamed`. The table is streamed:
memory holds the prediction cells per photo, not the table.

Every output is written to a temporary file in the target's folder and renamed
into place, so a failed or interrupted write leaves the old file (or none).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import IO, Any

from clipdex.classify import Classification
from clipdex.errors import LabelSetError, TableError, shorten
from clipdex.fileio import replacing
from clipdex.video import split_frame_path
from clipdex.video_labels import VideoLabels

PROB_DIGITS = 6
TABLE_SUFFIXES = (".csv", ".parquet")
SNIFF_BYTES = 64 * 1024  # how much of a table is read to learn its encoding, delimiter and line ends
DELIMITERS = (",", ";", "\t", "|")  # in order of preference when several fit
RENAME_SUFFIX = "_pred"
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


# -- predictions --------------------------------------------------------------
def prediction_columns(results: Sequence[Classification], top_k: int | None = None) -> list[str]:
    """The columns the label sets add, in the documented order."""
    columns: list[str] = []
    owner: dict[str, str] = {}
    for result in results:
        name = result.label_set.name
        own = [name, f"{name}_prob"] + [f"{name}_prob_{label}" for label in result.labels]
        if top_k:
            own.append(f"{name}_top")
        if result.truth is not None:
            own.append(f"{name}_truth")
        for column in own:
            if column in owner or column in ("path", "photo_id"):
                other = owner.get(column, "the table")
                raise LabelSetError(f"label sets {other!r} and {name!r}", f"both make a column {column!r}",
                                    "Rename one of the sets.")
            owner[column] = name
        columns += own
    return columns


def _probability_columns(results: Sequence[Classification]) -> set[str]:
    names = set()
    for result in results:
        name = result.label_set.name
        names.add(f"{name}_prob")
        names.update(f"{name}_prob_{label}" for label in result.labels)
    return names


def prediction_cells(results: Sequence[Classification], top_k: int | None = None,
                     videos: Sequence[Sequence[VideoLabels]] | None = None) -> dict[str, list[str]]:
    """path -> the cells of :func:`prediction_columns` for that photo (blank where a set lacks it).

    ``videos`` (row-aligned with ``results``: each set's :func:`clipdex.video_labels.video_labels`)
    adds one row per video, keyed by its path: its majority label and the shares of its moments.
    """
    positions = [{path: i for i, path in enumerate(r.paths)} for r in results]
    tops = [r.top_k(top_k) if top_k else [] for r in results]
    rows: dict[str, list[str]] = {}
    for path in set().union(*(r.paths for r in results)):
        cells: list[str] = []
        for result, position, top in zip(results, positions, tops):
            i = position.get(path)
            if i is None:
                cells += _blank(result, top_k)
                continue
            cells += [result.predicted[i], _fmt(result.confidence[i])]
            cells += [_fmt(p) for p in result.probs[i]]
            if top_k:
                cells.append(";".join(f"{label}:{prob:.3f}" for label, prob in top[i]))
            if result.truth is not None:
                cells.append(result.truth[i])
        rows[path] = cells
    if videos is not None:
        if len(videos) != len(results):
            raise ValueError(f"{len(videos)} video summaries for {len(results)} label sets")
        rows.update(_video_cells(results, videos, top_k))
    return rows


def _blank(result: Classification, top_k: int | None) -> list[str]:
    """The cells of a set for a row it does not label."""
    return [""] * (2 + len(result.labels) + (1 if top_k else 0) + (1 if result.truth is not None else 0))


def _video_cells(results: Sequence[Classification], videos: Sequence[Sequence[VideoLabels]],
                 top_k: int | None) -> dict[str, list[str]]:
    """video path -> its cells: per set, the majority label, its share, every label's share, the
    ``top_k`` largest shares, no truth (corrections are made per moment)."""
    by_path = [{v.path: v for v in summaries} for summaries in videos]
    rows: dict[str, list[str]] = {}
    for path in sorted(set().union(*by_path)):
        cells: list[str] = []
        for result, found in zip(results, by_path):
            video = found.get(path)
            if video is None:
                cells += _blank(result, top_k)
                continue
            shares = video.shares
            label, share = video.majority
            cells += [label, _fmt(share)] + [_fmt(shares.get(name, 0.0)) for name in result.labels]
            if top_k:
                cells.append(";".join(f"{name}:{value:.3f}" for name, value in list(shares.items())[:top_k]))
            if result.truth is not None:
                cells.append("")
        rows[path] = cells
    return rows


def _fmt(value: float) -> str:
    return f"{float(value):.{PROB_DIGITS}f}"


def write_predictions(results: Sequence[Classification], out: str | os.PathLike[str],
                      top_k: int | None = None, videos: Sequence[Sequence[VideoLabels]] | None = None) -> int:
    """Write one row per photo (path, photo_id, then each set's columns); return the row count.

    Paths are the display paths. Parquet when ``out`` ends in .parquet
    (probability columns as floats), else CSV (UTF-8, comma). ``videos``: a row per
    video too (see :func:`prediction_cells`).
    """
    cells = prediction_cells(results, top_k, videos)
    header = ["path", "photo_id"] + prediction_columns(results, top_k)
    rows = [[path, photo_id(path)] + cells[path] for path in sorted(cells)]
    write_table(out, header, rows, float_columns=_probability_columns(results))
    return len(rows)


def photo_id(path: str) -> str:
    """The ``photo_id`` cell of a row: the file's stem, or a moment's ``party@83.500`` (its video's
    stem and time: a frame path's own stem would cut its time at the decimal point)."""
    frame = split_frame_path(path)
    return PurePath(path).stem if frame is None else f"{PurePath(frame[0]).stem}@{frame[1]:.3f}"


def check_table_path(out: str | os.PathLike[str], option: str = "--out") -> None:
    """Raise :class:`~clipdex.errors.OutputError` unless ``out`` names a table type clipdex
    writes (.csv, or .parquet with pyarrow installed)."""
    from clipdex.errors import OutputError

    suffix = Path(out).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise OutputError(str(out), option, f"clipdex writes tables as {' or '.join(TABLE_SUFFIXES)}, "
                                            f"not {suffix or 'a name without an extension'}; end the name "
                                            "in .csv (Excel opens it) or .parquet")
    if suffix == ".parquet":
        from clipdex.models.optional import PARQUET_INSTALL, installed

        if not installed("pyarrow"):
            raise TableError(str(out), "writing Parquet needs pyarrow, which is not installed",
                             f"{PARQUET_INSTALL}, or write a .csv file.")


def write_table(out: str | os.PathLike[str], header: list[str], rows: list[list[str]],
                float_columns: set[str] | None = None) -> None:
    """CSV, or Parquet when ``out`` ends in .parquet, written through a temporary file.

    In Parquet, ``float_columns`` (default: names containing ``_prob``) become
    float32 when every value is a number or blank.
    """
    check_table_path(out)
    path = Path(out)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise TableError(str(path), "writing Parquet needs pyarrow, which is not installed",
                             "pip install 'clipdex[parquet]', or write a .csv file.") from None
        columns = {}
        for j, name in enumerate(header):
            values = [row[j] for row in rows]
            is_float = name in float_columns if float_columns is not None else "_prob" in name
            if is_float and all(_is_number(v) for v in values):
                columns[name] = pa.array([float(v) if v != "" else None for v in values], pa.float32())
            else:
                columns[name] = pa.array(values, pa.string())
        with _replacing(path, binary=True) as f:
            pq.write_table(pa.table(columns), f)
        return
    with _replacing(path, encoding="utf-8") as f:
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


@contextmanager
def _replacing(path: Path, *, encoding: str | None = None, binary: bool = False) -> Iterator[IO[Any]]:
    """:func:`clipdex.fileio.replacing`, with OS errors as :class:`~clipdex.errors.TableError`.

    Only errors of the output (its temporary file, the rename, a write to the
    yielded file) say it "cannot be written"; an OS error that names another
    file (the table being read while the copy is written) says that file
    "cannot be read".
    """
    try:
        with replacing(path, binary=binary, encoding=encoding) as f:
            yield f
    except OSError as e:
        if isinstance(e.filename, (str, bytes)) and not _names_output(os.fsdecode(e.filename), path):
            raise TableError(os.fsdecode(e.filename), f"cannot be read ({e.strerror or e})",
                             _CHECK_READ) from None
        raise TableError(str(path), f"cannot be written ({e.strerror or e})",
                         "Choose a path in a folder you can write to (with room on the disk).") from None


def _names_output(filename: str, out: Path) -> bool:
    """Whether an OS error's file name is ``out``, its folder, or its temporary file."""
    named, out = Path(os.path.abspath(filename)), Path(os.path.abspath(out))
    if named in (out, out.parent):
        return True
    return named.parent == out.parent and named.name.startswith(f".{out.name}.") and named.name.endswith(".tmp")


_CHECK_READ = "Check that the file is there and readable (and the disk is healthy), then run again."


# -- reading the user's table ------------------------------------------------
@dataclass(frozen=True)
class TableFormat:
    """How a CSV file is written, so a joined copy is written the same way."""

    encoding: str = "utf-8"  # "utf-8-sig" when the file starts with a BOM; "utf-16"
    delimiter: str = ","
    lineterminator: str = "\r\n"
    quote_all: bool = False  # every header cell was quoted, so every cell is written quoted

    def writer(self, f: IO[str]) -> Any:
        """A ``csv.writer`` that writes like the file was written."""
        return csv.writer(f, delimiter=self.delimiter, lineterminator=self.lineterminator,
                          quoting=csv.QUOTE_ALL if self.quote_all else csv.QUOTE_MINIMAL)


@dataclass
class Table:
    """A CSV file's format and header, with its rows read on demand (:meth:`records`)."""

    path: Path
    format: TableFormat
    header: list[str]
    key: str
    key_index: int

    def records(self) -> Iterator[list[str]]:
        """The data rows as lists of cells, exactly as in the file (blank lines as ``[]``)."""
        try:
            with open(self.path, "rb") as f:
                lines = self._lines(f)
                reader = csv.reader(lines, delimiter=self.format.delimiter)
                try:
                    next(reader, None)  # the header
                    yield from reader
                except csv.Error as e:
                    raise TableError(f"{self.path} line {reader.line_num}", f"cannot be read ({e})",
                                     _SAVE_AS) from None
        except OSError as e:
            raise TableError(str(self.path), f"cannot be read ({e.strerror or e})", _CHECK_READ) from None

    def _lines(self, f: IO[bytes]) -> Iterator[str]:
        """The file's lines as text; a byte that is not UTF-8 is reported by its line."""
        if self.format.encoding == "utf-16" or self.format.lineterminator == "\r":
            text = io.TextIOWrapper(f, encoding=self.format.encoding, newline="")
            try:
                yield from text
            except UnicodeDecodeError as e:
                raise TableError(str(self.path), f"is not {self.format.encoding.upper()} text ({e.reason})",
                                 _SAVE_AS) from None
            return
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TableError(f"{self.path} line {number}", f"is not UTF-8 text (byte {e.start + 1} of "
                                 "the line cannot be read)", _SAVE_AS) from None
            yield line[1:] if number == 1 and line.startswith("\ufeff") else line

    def dicts(self) -> Iterator[dict[str, str]]:
        """Rows as dicts keyed by :func:`unique_names` of the header (missing cells blank)."""
        names = unique_names(self.header)
        for row in self.records():
            if row:
                yield {name: row[j] if j < len(row) else "" for j, name in enumerate(names)}


_SAVE_AS = "Save it as a UTF-8 CSV file with a header row (Excel: CSV UTF-8)."


def unique_names(header: Sequence[str]) -> list[str]:
    """The header with repeated names told apart (``note``, ``note (2)``) for dict rows."""
    seen: dict[str, int] = {}
    out = []
    taken = set(header)
    for name in header:
        seen[name] = seen.get(name, 0) + 1
        candidate, n = name, seen[name]
        while n > 1 and (candidate := f"{name} ({n})") in taken:
            n += 1
        taken.add(candidate)
        out.append(candidate)
    return out


def describe_columns(header: Sequence[str], most: int = 20, width: int = 40) -> str:
    """A table's column names for a message: at most ``most``, each cut to ``width`` characters."""
    names = [repr(shorten(h, width)) for h in header[:most]]
    return ", ".join(names) + (f", … ({len(header)} columns)" if len(header) > most else "")


def open_table(path: str | os.PathLike[str], key: str) -> Table:
    """Learn a CSV file's encoding, delimiter, line ends and header; check ``key`` is one column.

    Reads only the first :data:`SNIFF_BYTES`; the rows are streamed later.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise TableError(str(path), f"cannot be read ({e.strerror or e})", _CHECK_READ) from None
    encoding = next((name for bom, name in BOMS if head.startswith(bom)), "utf-8")
    try:
        # The sample may end inside a character; only its end may be cut.
        sample = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except UnicodeDecodeError as e:
        line = head[:e.start].count(b"\n") + 1
        raise TableError(f"{path} line {line}", f"is not {encoding.upper().replace('-SIG', '')} text "
                         f"(byte {e.start} cannot be read)", _SAVE_AS) from None
    if not sample.strip():
        raise TableError(str(path), "is empty", "The first row must name the columns.")
    if "\x00" in sample:
        raise TableError(str(path), "is not a CSV table (it holds NUL bytes: an image or another "
                                    f"binary file? first bytes: {head[:8]!r})", _SAVE_AS)
    lineterminator = _line_end(sample)
    candidates = {d: _first_record(sample, d) for d in DELIMITERS}
    fitting = [d for d in DELIMITERS if key in candidates[d]]
    if not fitting:
        stripped = [d for d in DELIMITERS if key in [h.strip() for h in candidates[d]]]
        header = candidates[_sniff(sample) or ","]
        if stripped:
            raise TableError(str(path), f"column {key!r} is written with spaces around it",
                             "Remove the spaces in the header row, or pass the name as written with --key.")
        raise TableError(str(path), f"has no column {key!r}",
                         f"Columns: {describe_columns(header)}. Pass the key column with --key.")
    sniffed = _sniff(sample)
    delimiter = sniffed if sniffed in fitting else max(fitting, key=lambda d: len(candidates[d]))
    header = candidates[delimiter]
    if header.count(key) > 1:
        raise TableError(str(path), f"has {header.count(key)} columns named {key!r}",
                         "Rename all but one, or key the table by another column.")
    first_line = sample.splitlines()[0] if sample.splitlines() else ""
    quote_all = bool(header) and first_line == delimiter.join('"' + h.replace('"', '""') + '"' for h in header)
    return Table(path, TableFormat(encoding, delimiter, lineterminator, quote_all), header, key,
                 header.index(key))


def _line_end(sample: str) -> str:
    newline = sample.find("\n")
    if newline > 0 and sample[newline - 1] == "\r":
        return "\r\n"
    if newline >= 0:
        return "\n"
    return "\r" if "\r" in sample else "\r\n"


def _first_record(sample: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader(sample.splitlines(keepends=True), delimiter=delimiter), [])
    except csv.Error:
        return []


def _sniff(sample: str) -> str | None:
    try:
        return csv.Sniffer().sniff(sample[:SNIFF_BYTES // 4], delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        return None


def read_table(path: str | os.PathLike[str], key: str) -> tuple[list[str], Iterator[dict[str, str]]]:
    """A CSV file's header and its rows as dicts, streamed (read once, in order).

    Repeated column names are told apart in the header and the dicts
    (``note``, ``note (2)``); cells beyond the header are left out of the dicts
    (:func:`join_metadata` keeps them). Checks that ``key`` is one column.
    """
    table = open_table(path, key)
    return unique_names(table.header), table.dicts()


class KeyMatcher:
    """Matches a table's key values to indexed photo paths.

    A value containing a path separator is matched as a path (absolute, or a
    relative path matched against the end of the photo's path, ``./`` and
    Windows ``\\`` allowed); any other value is matched against the file name
    and its stem (``abc`` or ``abc.jpg``). Each match is a dict lookup.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = set(paths)
        self.by_name: dict[str, list[str]] = {}
        for path in paths:
            pure = PurePath(path)
            for name in {pure.name, pure.stem}:
                self.by_name.setdefault(name, []).append(path)

    def match(self, value: str) -> str | None:
        return self.match_kind(value)[0]

    def values(self, rows: Iterable[dict[str, str]], key: str, column: str) -> Iterator[tuple[str, str]]:
        """(photo path, value) of every row whose ``key`` names a photo and whose ``column`` has a
        value (stripped), in table order: a truth column read against the index's photos."""
        for row in rows:
            path = self.match(row.get(key) or "")
            value = (row.get(column) or "").strip()
            if path is not None and value:
                yield path, value

    def match_kind(self, value: str) -> tuple[str | None, str]:
        """(path or None, how: ``path``, ``name`` or ``stem``)."""
        value = value.strip()
        if not value:
            return None, "none"
        if "\\" in value and "/" not in value and os.sep == "/":
            value = value.replace("\\", "/")  # a relative path written on Windows
        if "/" in value or os.sep in value:
            if value in self.paths:
                return value, "path"
            while value.startswith("./"):
                value = value[2:]
            name = value.rsplit("/", 1)[-1]
            hits = [p for p in self.by_name.get(name, []) if p.endswith("/" + value) and PurePath(p).name == name]
            kind = "path"
        else:
            hits = self.by_name.get(value, [])
            kind = "name" if hits and PurePath(hits[0]).name == value else "stem"
        hits = sorted(set(hits))
        if len(hits) > 1:
            raise TableError(value, f"matches {len(hits)} indexed photos ({', '.join(hits[:3])})",
                             "Key the table by a column that holds paths, or index one folder per index.")
        return (hits[0], kind) if hits else (None, kind)


# -- joining -----------------------------------------------------------------
@dataclass
class JoinReport:
    """How a metadata table and the index's photos matched, and how the output was written."""

    rows: int = 0
    matched: int = 0
    rows_without_image: int = 0
    images_without_row: list[str] = field(default_factory=list)
    key_mode: str = "stem"  # how most keys matched: path, name or stem
    renamed: dict[str, str] = field(default_factory=dict)  # clipdex column -> name written (taken)
    encoding: str = "utf-8"
    delimiter: str = ","
    extra_fields: int = 0  # rows with more cells than the header (kept, under blank column names)


def output_names(header: Sequence[str], added: Sequence[str]) -> dict[str, str]:
    """clipdex's column -> the name it is written under: itself, or ``<name>_pred``,
    ``<name>_pred2``… when the user's table (or an earlier rename) already has it."""
    taken = set(header)
    names = {}
    for column in added:
        name, n = column, 1
        while name in taken:
            name = f"{column}{RENAME_SUFFIX}{n if n > 1 else ''}"
            n += 1
        taken.add(name)
        names[column] = name
    return names


def join_metadata(results: Sequence[Classification], table: str | os.PathLike[str], key: str,
                  out: str | os.PathLike[str], top_k: int | None = None,
                  videos: Sequence[Sequence[VideoLabels]] | None = None) -> JoinReport:
    """Append the prediction columns to the user's table and write it to ``out``.

    Every row of the table is kept, in order, with every cell as it was; rows
    without a photo get empty prediction cells. Photos without a row are
    listed in the report. With ``videos``, a row naming a video gets the video's
    majority label and shares (:func:`prediction_cells`); a video's moments are
    never expected to have rows of their own (they are not listed as photos
    without a row). The table is read twice, row by row (once to learn
    its widest row, once to write), never held in memory; ``out`` may be the
    table itself.
    """
    source = open_table(table, key)
    width = len(source.header)
    report = JoinReport(encoding=source.format.encoding, delimiter=source.format.delimiter)
    for row in source.records():
        if len(row) > len(source.header):
            report.extra_fields += 1
            width = max(width, len(row))
    added = prediction_columns(results, top_k)
    names = output_names(source.header, added)
    report.renamed = {column: name for column, name in names.items() if column != name}
    cells = prediction_cells(results, top_k, videos)
    blank = [""] * len(added)
    matcher = KeyMatcher(list(cells))
    used: set[str] = set()
    kinds: dict[str, int] = {}
    header = source.header + [""] * (width - len(source.header)) + [names[c] for c in added]
    with _replacing(Path(out), encoding=source.format.encoding) as f:
        writer = source.format.writer(f)
        writer.writerow(header)
        for row in source.records():
            if not row:
                writer.writerow(row)  # a blank line stays a blank line
                continue
            report.rows += 1
            value = row[source.key_index] if source.key_index < len(row) else ""
            path, kind = matcher.match_kind(value)
            if path is None:
                report.rows_without_image += 1
                extra = blank
            else:
                report.matched += 1
                used.add(path)
                kinds[kind] = kinds.get(kind, 0) + 1
                extra = cells[path]
            writer.writerow(row + [""] * (width - len(row)) + extra if len(row) < width else row + extra)
    report.images_without_row = sorted(p for p in set(cells) - used if split_frame_path(p) is None)
    if kinds:
        report.key_mode = max(kinds, key=lambda k: kinds[k])
    return report
