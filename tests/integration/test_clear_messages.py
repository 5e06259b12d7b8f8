"""Messages for inputs that used to be answered wrongly or unhelpfully (a tester's findings)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clipdex import EmptyIndex, Index, QueryError
from clipdex.errors import OutputError, TableError
from clipdex.export import read_table
from clipdex.web import create_app
from tests.conftest import run_cli

LOCAL = "http://127.0.0.1:8000"


def test_terms_that_cancel_or_weigh_nothing_are_named_with_the_query(tmp_path: Path, photos: Path,
                                                                   model_kwargs: dict[str, str]) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        with pytest.raises(QueryError, match=r"query 'dog - dog': the terms cancel"):
            index.search("dog - dog")
        with pytest.raises(QueryError, match=r"weights go up to 100, from 0.001"):
            index.search("1e-300*dog")


def test_a_search_whose_folders_are_all_gone_says_so_not_index_first(tmp_path: Path, photos: Path,
                                                                     model_kwargs: dict[str, str]) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
    shutil.move(photos, tmp_path / "moved")
    with Index.open(tmp_path / "idx") as index, pytest.raises(EmptyIndex) as info:
        index.search("dog")
    message = str(info.value)
    assert "no longer exist" in message and str(photos) in message and "clipdex remove --missing" in message


def test_a_binary_file_given_as_a_table_is_named_briefly(tmp_path: Path) -> None:
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"\x00" * 500_000)  # a sparse file, or a zeroed one
    with pytest.raises(TableError, match="is not a CSV table") as info:
        read_table(binary, "photo_id")
    assert len(str(info.value)) < 400
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join("x" * 5000 + str(i) for i in range(500)) + "\n1\n")
    with pytest.raises(TableError, match="has no column 'photo_id'") as info:
        read_table(wide, "photo_id")
    assert len(str(info.value)) < 2000


def test_a_table_output_of_an_unknown_type_is_refused_before_the_work(cli_index: str) -> None:
    result = run_cli("classify", "--index", cli_index, "--name", "x", "--labels", "a,b", "--out",
                     str(Path(cli_index).parent / "x.xlsx"), catch_exceptions=True)
    assert result.exit_code == 1 and ".csv or .parquet" in result.output
    assert not (Path(cli_index).parent / "x.xlsx").exists()
    assert isinstance(OutputError("x", "--out", "p"), OutputError)


def test_label_filters_are_checked_and_counts_follow_corrections(web_index: Index) -> None:
    client = TestClient(create_app(web_index), base_url=LOCAL)
    unknown = client.get("/api/search", params={"q": "dog", "set": "taken_space", "label": "nosuch"})
    assert unknown.status_code == 400 and "indoor" in unknown.json()["error"]
    half = client.get("/api/search", params={"q": "dog", "label": "indoor"})
    assert half.status_code == 400 and "set=NAME" in half.json()["error"]

    result = web_index.classification("taken_space")
    first = result.file_ids[0]
    flipped = "outdoor" if result.predicted[0] == "indoor" else "indoor"
    saved = client.post("/api/labels/taken_space/corrections", json={"file_id": first, "label": flipped},
                        headers={"Origin": LOCAL})
    assert saved.status_code == 200
    counts = {s["name"]: s["counts"] for s in client.get("/api/labels").json()["sets"]}["taken_space"]
    for label in ("indoor", "outdoor"):
        found = client.get("/api/search", params={"q": "dog", "k": 200, "set": "taken_space",
                                                  "label": label}).json()["count"]
        assert counts[label] == found, (label, counts, found)


def test_browsing_an_unknown_label_says_so(web_index: Index) -> None:
    client = TestClient(create_app(web_index), base_url=LOCAL)
    browse = client.get("/", params={"set": "taken_space", "label": "bogus"})
    assert "has no label &#39;bogus&#39;" in browse.text and "indoor" in browse.text
    section = client.get("/labels/taken_space", params={"label": "bogus"})
    assert section.status_code == 400 and "has no label" in section.text
    api = client.get("/api/labels/taken_space", params={"label": "bogus"})
    assert api.status_code == 400 and "Pick one of: indoor, outdoor" in api.json()["error"]
    bad = client.post("/api/labels/taken_space/corrections", headers={"Origin": LOCAL},
                      json={"file_id": web_index.classification("taken_space").file_ids[0], "label": "uncertain"})
    assert bad.status_code == 400  # a person's label is one of the set's, never 'uncertain'
