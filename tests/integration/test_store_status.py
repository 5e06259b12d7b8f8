"""Status and the search page stay cheap: no vector file is read, no path is listed."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clipdex import Index
from clipdex.index import IndexStatus
from clipdex.store import Store
from clipdex.store.vectors import VectorFile
from clipdex.web import create_app
from tests.images import write_photos


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("read every vector")


def test_status_never_reads_the_vector_file(tmp_path: Path, photos: Path, model_kwargs: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    idx = tmp_path / "idx"
    with Index.open(idx, create=True, **model_kwargs) as index:
        index.add(photos)
    monkeypatch.setattr(VectorFile, "check", _refuse)
    with Index.open(idx, **model_kwargs) as index:
        status = index.status()
        assert status.problems == [] and status.indexed == 12 and status.models[0].photos == 12
        with open(next((idx / "vectors").glob("*.f32")), "r+b") as f:
            f.truncate(5 * status.models[0].dim * 4)  # the length alone shows this damage
        status = index.status()
        assert status.models[0].photos == 5 and "7 photos lost" in status.problems[0]


def test_photos_without_a_vector_are_counted_per_folder(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    nested, other = photos / "trip", tmp_path / "other"
    write_photos(other, 3, start=40)
    idx = tmp_path / "idx"
    with Index.open(idx, create=True, **model_kwargs) as index:
        for folder in (photos, nested, other):
            index.add(folder)
        index.store.conn.execute("DELETE FROM embeddings")  # as if another model were added
        (problem,) = index.status().problems
        assert problem.startswith("15 photos have no")
        for folder in (photos, nested, other):
            assert f"`clipdex index {folder} --index {idx}`" in problem


def test_the_search_page_does_not_compute_a_status(web_index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    client = TestClient(create_app(web_index), base_url="http://127.0.0.1:8000")
    monkeypatch.setattr(Index, "status", _refuse)
    counts = web_index.counts()
    assert counts.indexed == 13 and counts.failed == 0 and counts.models
    for url in ("/", "/?q=a+photo"):
        page = client.get(url)
        assert page.status_code == 200 and f"{counts.indexed} photos" in page.text
    assert isinstance(IndexStatus, type)


def test_status_verify_reads_every_vector_and_names_zeroed_rows(tmp_path: Path, photos: Path,
                                                               model_args: list[str]) -> None:
    from tests.conftest import run_cli

    index = str(tmp_path / "idx")
    assert run_cli("index", str(photos), "--index", index, *model_args).exit_code == 0
    vectors = next((tmp_path / "idx" / "vectors").glob("*.f32"))
    dim = Store.open(tmp_path / "idx").models()[0].dim
    with open(vectors, "r+b") as f:  # two rows zeroed: the file keeps its length
        f.seek(4 * dim)
        f.write(b"\x00" * 4 * dim * 2)
    assert "problem" not in run_cli("status", "--index", index).output  # length only: O(1)
    verified = run_cli("status", "--verify", "--index", index).output
    assert "2 rows that are not unit vectors" in verified and f"clipdex index {photos}" in verified
