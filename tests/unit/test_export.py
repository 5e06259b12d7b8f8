"""Predictions tables and the join onto the user's table: the user's data comes out as it went in."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipdex.classify import Classification
from clipdex.errors import LabelSetError, TableError
from clipdex.export import (
    KeyMatcher,
    join_metadata,
    open_table,
    output_names,
    read_table,
    write_predictions,
)
from clipdex.labels import make_label_set

PHOTOS = ["/p/a.jpg", "/p/b.jpg", "/p/trip/c.jpg"]


def result(name: str = "taken_space", labels: tuple[str, ...] = ("indoor", "outdoor"),
           paths: list[str] = PHOTOS) -> Classification:
    n, k = len(paths), len(labels)
    probs = np.full((n, k), 1.0 / k, dtype=np.float32)
    probs[:, 0] += 0.1
    probs[:, 1:] -= 0.1 / max(1, k - 1)
    return Classification(label_set=make_label_set(name, list(labels)), file_ids=list(range(1, n + 1)),
                          paths=list(paths), probs=probs, predicted=[labels[0]] * n,
                          confidence=probs.max(axis=1))


def test_the_users_columns_come_out_exactly_as_they_went_in(tmp_path: Path) -> None:
    table = tmp_path / "photos.csv"
    text = ('photo_id,note,note,taken_space\r\n'
            'a,"x, with comma","multi\nline",indoor\r\n'
            'zzz,,,\r\n'
            'b,1,2,outdoor,extra field,another\r\n'
            '\r\n'
            'trip/c.jpg,"a ""quote""",3,Indoor\r\n')
    table.write_text(text, encoding="utf-8", newline="")
    out = tmp_path / "joined.csv"
    report = join_metadata([result()], table, "photo_id", out)
    assert report.renamed == {"taken_space": "taken_space_pred"}
    assert (report.rows, report.matched, report.rows_without_image, report.extra_fields) == (4, 3, 1, 1)
    assert report.images_without_row == []
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    assert header[:4] == ["photo_id", "note", "note", "taken_space"]  # duplicates kept, truth untouched
    assert header[4:6] == ["", ""]  # room for the row with two extra fields
    assert header[6:] == ["taken_space_pred", "taken_space_prob", "taken_space_prob_indoor",
                          "taken_space_prob_outdoor"]
    assert rows[1][:4] == ["a", "x, with comma", "multi\nline", "indoor"]
    assert rows[1][6] == "indoor"
    assert rows[2][:6] == ["zzz", "", "", "", "", ""] and rows[2][6:] == ["", "", "", ""]
    assert rows[3][:6] == ["b", "1", "2", "outdoor", "extra field", "another"]
    assert rows[4] == []  # the blank line stays
    assert rows[5][:4] == ["trip/c.jpg", 'a "quote"', "3", "Indoor"]
    # Cut the added columns off and the user's file is back, byte for byte but the padding.
    written = out.read_text(encoding="utf-8").replace(",,,,,,,,", ",,,")
    assert written.startswith('photo_id,note,note,taken_space,,,taken_space_pred')


def test_rejoining_a_joined_table_suffixes_again(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("photo_id,taken_space,taken_space_pred\na,indoor,x\n")
    report = join_metadata([result()], table, "photo_id", tmp_path / "o.csv")
    assert report.renamed["taken_space"] == "taken_space_pred2"
    assert output_names(["a", "a_pred", "a_pred2"], ["a", "b"]) == {"a": "a_pred3", "b": "b"}


@pytest.mark.parametrize("encoding, delimiter, newline", [
    ("utf-8", ",", "\n"),
    ("utf-8-sig", ";", "\r\n"),  # Excel's "CSV UTF-8" in a locale with decimal commas
    ("utf-8", "\t", "\r\n"),
    ("utf-16", "\t", "\r\n"),  # Excel's "Unicode text"
    ("utf-8", "|", "\n"),
])
def test_encoding_delimiter_and_line_ends_are_kept(tmp_path: Path, encoding: str, delimiter: str,
                                                   newline: str) -> None:
    table = tmp_path / "t.csv"
    lines = [delimiter.join(["photo_id", "Ort", "price"]), delimiter.join(["a", "Zürich", "1,50"]),
             delimiter.join(["b", "Kraków", "2"])]
    if delimiter == ",":
        lines[1] = 'a,Zürich,"1,50"'
    table.write_bytes((newline.join(lines) + newline).encode(encoding))
    out = tmp_path / "o.csv"
    report = join_metadata([result()], table, "photo_id", out)
    assert report.encoding == encoding and report.delimiter == delimiter
    raw = out.read_bytes()
    original = table.read_bytes()
    if encoding in ("utf-8-sig", "utf-16"):
        assert raw[:2] == original[:2] or raw[:3] == original[:3]  # the BOM is kept
    text = raw.decode(encoding)
    assert newline in text and (newline == "\r\n" or "\r" not in text)
    out_lines = text.split(newline)
    assert out_lines[1].startswith(lines[1] + delimiter)
    assert out_lines[2].startswith(lines[2] + delimiter)
    assert out_lines[0].startswith(lines[0] + delimiter + "taken_space")


def test_a_fully_quoted_table_stays_fully_quoted(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text('"photo_id","n"\n"a","1"\n', newline="")
    join_metadata([result()], table, "photo_id", tmp_path / "o.csv")
    assert (tmp_path / "o.csv").read_text().splitlines()[1].startswith('"a","1","indoor"')


def test_semicolon_table_whose_cells_hold_commas_is_read_by_its_key(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("photo_id;comment\na;one, two, three\nb;four, five\n")
    assert open_table(table, "photo_id").format.delimiter == ";"


def test_join_can_replace_the_table_itself_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("photo_id\na\nb\n")
    os.chmod(table, 0o640)
    join_metadata([result()], table, "photo_id", table)
    assert table.read_text().splitlines()[1].startswith("a,indoor,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
    assert table.stat().st_mode & 0o777 == 0o640


def test_a_failed_join_leaves_the_old_output_untouched(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    good_rows = 20_000  # past the part read to learn the format: the error comes while writing
    table.write_bytes(b"photo_id,n\n" + b"a,1\n" * good_rows + b"b,\xff\xfe\n")
    out = tmp_path / "o.csv"
    out.write_text("previous")
    with pytest.raises(TableError, match=f"line {good_rows + 2}"):
        join_metadata([result()], table, "photo_id", out)
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv", "t.csv"]


def test_a_table_that_is_not_utf8_is_refused_with_the_fix(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_bytes("photo_id,Ort\na,Zürich\n".encode("cp1252"))
    with pytest.raises(TableError, match=r"line 2: is not UTF-8 text.*Save it as a UTF-8 CSV"):
        join_metadata([result()], table, "photo_id", tmp_path / "o.csv")


@pytest.mark.parametrize("text, words", [
    ("name,other\na,b\n", ["no column 'photo_id'", "'name', 'other'", "--key"]),
    ("photo_id,photo_id\na,b\n", ["2 columns named 'photo_id'"]),
    (" photo_id ,x\na,b\n", ["spaces around it"]),
    ("", ["is empty"]),
])
def test_table_problems_say_what_and_how_to_fix(tmp_path: Path, text: str, words: list[str]) -> None:
    table = tmp_path / "t.csv"
    table.write_text(text)
    with pytest.raises(TableError) as info:
        join_metadata([result()], table, "photo_id", tmp_path / "o.csv")
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "o.csv").exists()


def test_read_table_streams_dicts_with_duplicate_names_told_apart(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("photo_id,note,note\na,1,2\nb,3\n")
    header, rows = read_table(table, "photo_id")
    assert header == ["photo_id", "note", "note (2)"]
    assert not isinstance(rows, list)  # streamed
    assert list(rows) == [{"photo_id": "a", "note": "1", "note (2)": "2"},
                          {"photo_id": "b", "note": "3", "note (2)": ""}]


def test_key_matcher_by_stem_name_and_path() -> None:
    matcher = KeyMatcher(["/a/x/one.jpg", "/a/y/two.png", "/a/z/two.jpg", "/a/.hidden/x/three.jpg"])
    assert matcher.match("one") == "/a/x/one.jpg"
    assert matcher.match_kind("one.jpg") == ("/a/x/one.jpg", "name")
    assert matcher.match_kind("one") == ("/a/x/one.jpg", "stem")
    assert matcher.match("y/two.png") == "/a/y/two.png"
    assert matcher.match("./y/two.png") == "/a/y/two.png"
    assert matcher.match("y\\two.png") == "/a/y/two.png"
    assert matcher.match(".hidden/x/three.jpg") == "/a/.hidden/x/three.jpg"
    assert matcher.match("/a/x/one.jpg") == "/a/x/one.jpg"
    assert matcher.match("b/x/one.jpg") is None
    assert matcher.match("missing") is None and matcher.match("  ") is None
    with pytest.raises(TableError, match="matches 2 indexed photos"):
        matcher.match("two")


def test_predictions_table_is_written_atomically_with_display_paths(tmp_path: Path) -> None:
    shown = "/p/caf\\xe9.jpg"  # the display form of a name that is not UTF-8
    res = result(paths=[shown, "/p/b.jpg"])
    res.fs_paths = [os.fsdecode(b"/p/caf\xe9.jpg"), "/p/b.jpg"]
    out = tmp_path / "p.csv"
    assert write_predictions([res], out) == 2
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["path"] for r in rows] == ["/p/b.jpg", shown]
    assert rows[1]["photo_id"] == "caf\\xe9"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_parquet_probabilities_are_floats_and_text_stays_text(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    write_predictions([result(name="a_problem", labels=("x", "y"))], tmp_path / "p.parquet")
    table = pq.read_table(tmp_path / "p.parquet")
    assert str(table.schema.field("a_problem_prob").type) == "float"
    assert str(table.schema.field("a_problem").type) == "string"


def test_two_sets_that_would_make_the_same_column_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LabelSetError, match="both make a column 'a_prob'"):
        write_predictions([result(name="a"), result(name="a_prob", labels=("x", "y"))], tmp_path / "p.csv")


def test_a_write_that_fails_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p.csv"
    out.write_text("old")
    import clipdex.export as export

    def broken(*args: object, **kwargs: object) -> dict[str, list[str]]:
        raise KeyboardInterrupt

    real = export.prediction_cells
    monkeypatch.setattr(export, "prediction_cells", lambda *a, **k: {p: ["x"] for p in real(*a, **k)})
    monkeypatch.setattr(csv, "writer", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_predictions([result()], out)
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]
    del broken


def test_a_read_error_of_the_table_while_joining_says_the_table_cannot_be_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import errno

    table = tmp_path / "photos.csv"
    table.write_text("path,x\n" + "".join(f"{p},1\n" for p in PHOTOS))
    out = tmp_path / "joined.csv"
    real_open = builtins.open
    opened: list[str] = []

    class Failing:
        """The table's file: the first line reads, then the disk fails (as a dying disk does)."""

        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Failing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def __iter__(self) -> Iterator[bytes]:
            yield next(iter(self.f))
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(table):
            opened.append(str(file))
            if len(opened) == 3:  # the sniff, the first pass, then the pass that writes
                return Failing(real_open(file, *args, **kwargs))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(TableError) as info:
        join_metadata([result()], table, "path", out)
    message = str(info.value)
    assert str(table) in message and "cannot be read" in message and "cannot be written" not in message
    assert not out.exists() and not list(tmp_path.glob(".joined.csv.*"))


def test_only_errors_of_the_output_say_it_cannot_be_written(tmp_path: Path) -> None:
    import errno

    from clipdex.export import _replacing

    out, other = tmp_path / "out.csv", tmp_path / "photos.csv"
    with pytest.raises(TableError, match=r"photos\.csv: cannot be read"), _replacing(out) as f:
        f.write("a")
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(other))
    for error in (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                  OSError(errno.EACCES, os.strerror(errno.EACCES), str(out))):
        with pytest.raises(TableError, match=r"out\.csv: cannot be written") as info, _replacing(out):
            raise error
        assert "Choose a path" in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".out.csv.*"))
    (tmp_path / "file").write_text("")
    with pytest.raises(TableError, match="cannot be written"):
        write_predictions([result()], tmp_path / "file" / "out.csv")  # its folder is a file
