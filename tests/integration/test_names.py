"""Photos whose names are not valid UTF-8 or are merely odd: indexed, found again, searchable."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipdex import Index
from clipdex.cli import main
from clipdex.store import NewFile
from tests.images import photo

# (name as the OS has it, name as clipdex shows it)
NAMES = [
    (b"\xe9t\xe9.jpg", "\\xe9t\\xe9.jpg"),  # Latin-1 "été.jpg" from an old camera or a zip
    (b"Vacances \xe0 Nice/plage.jpg", "Vacances \\xe0 Nice/plage.jpg"),  # a folder, too
    (b"-leading-dash.jpg", "-leading-dash.jpg"),
    (b"two\nlines.jpg", "two\\x0alines.jpg"),
    (b"100% [summer] \\ back.jpg", "100% [summer] \\ back.jpg"),
    (b"L" * 251 + b".jpg", "L" * 251 + ".jpg"),  # 255 bytes, the longest name Linux allows
]


def _write(folder: Path, names: list[tuple[bytes, str]] = NAMES) -> dict[str, bytes]:
    """The photos under ``folder`` (one per name, each different): display path -> real path."""
    base = os.fsencode(str(folder))
    os.makedirs(base, exist_ok=True)
    written = {}
    for seed, (raw, shown) in enumerate(names):
        path = base + b"/" + raw
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buffer = io.BytesIO()
        photo(seed, 96, 64).save(buffer, "JPEG")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, buffer.getvalue())
        finally:
            os.close(fd)
        written[f"{folder}/{shown}"] = path
    return written


def test_names_in_any_encoding_are_indexed_and_found_again(tmp_path: Path,
                                                           model_kwargs: dict[str, str]) -> None:
    written = _write(tmp_path / "photos")
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        first = index.add(tmp_path / "photos")
        second = index.add(tmp_path / "photos")
        hits = index.search("a photo", k=len(NAMES))
        failures = index.failures()
        records = {h.path: index.photo(h.file_id) for h in hits}
    assert first.failed == [] and (first.new, first.encoded) == (len(NAMES), len(NAMES))
    assert (second.unchanged, second.new, second.changed, second.encoded, second.removed) == \
        (len(NAMES), 0, 0, 0, 0)
    assert failures == []
    assert set(records) == set(written)
    for shown, real in written.items():
        assert os.fsencode(records[shown].fs_path) == real  # the store keeps the exact bytes
        assert records[shown].width == 96


def test_a_folder_whose_own_name_is_not_utf8(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    root = os.fsdecode(os.fsencode(str(tmp_path)) + b"/Fotos-\xfc")
    written = _write(Path(root), NAMES[:2])
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        first = index.add(root)
        second = index.add(root)
        hits = index.search("a photo", k=2)
    assert first.root == f"{tmp_path}/Fotos-\\xfc"
    assert first.failed == [] and first.indexed_total == 2
    assert (second.unchanged, second.encoded) == (2, 0)
    assert {h.path for h in hits} == {p.replace(root, f"{tmp_path}/Fotos-\\xfc") for p in written}


def test_the_cli_shows_the_display_names(tmp_path: Path, model_args: list[str]) -> None:
    written = _write(tmp_path / "photos")
    runner = CliRunner()
    idx = ["--index", str(tmp_path / "idx")]

    first = runner.invoke(main, ["index", str(tmp_path / "photos"), *idx, *model_args])
    again = runner.invoke(main, ["index", str(tmp_path / "photos"), *idx, *model_args, "--json"])
    status = runner.invoke(main, ["status", "--failures", *idx])
    found = runner.invoke(main, ["search", "a photo", "-n", str(len(NAMES)), *idx])
    as_json = runner.invoke(main, ["search", "a photo", "-n", str(len(NAMES)), "--json", *idx])

    for result in (first, again, status, found, as_json):
        assert result.exit_code == 0, result.output
    assert json.loads(again.output)["unchanged"] == len(NAMES)
    assert "failure" not in status.output and "0 failed" in status.output
    for shown in written:
        assert shown in found.output
    assert {r["path"] for r in json.loads(as_json.output)["results"]} == set(written)
    assert "two\\x0alines.jpg" in found.output and "two\nlines" not in found.output


def test_a_name_skipped_by_an_older_clipdex_is_indexed_now(tmp_path: Path,
                                                         model_kwargs: dict[str, str]) -> None:
    [(shown, _real)] = _write(tmp_path / "photos", NAMES[:1]).items()
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(tmp_path / "photos")
        record = index.model_record()
        # How clipdex before names in any encoding recorded it: a failed row, no stat.
        index.store.commit_batch(record, np.zeros((0, record.dim), np.float32), [], [
            NewFile(shown, 0, 0, reason="file name is not valid UTF-8; rename the file to index it")])
        assert [f.path for f in index.failures()] == [shown]
        report = index.add(tmp_path / "photos")
        assert index.failures() == []
    assert report.changed == 1 and report.indexed_total == 1


@pytest.mark.parametrize("raw, shown", [(b"caf\xe9.jpg", "caf\\xe9.jpg"),
                                        (b"bell\x07.jpg", "bell\\x07.jpg")])
def test_odd_names_in_the_web_app_open_by_their_real_path(tmp_path: Path, model_kwargs: dict[str, str],
                                                          raw: bytes, shown: str) -> None:
    from fastapi.testclient import TestClient

    from clipdex.web import create_app

    _write(tmp_path / "photos", [(raw, shown)])
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(tmp_path / "photos")
        [hit] = index.search("a photo", k=1)
        client = TestClient(create_app(index), base_url="http://127.0.0.1:8000")
        thumb = client.get(f"/thumb/{hit.file_id}")
    assert hit.path == f"{tmp_path}/photos/{shown}"
    assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")
