"""Folders that move or go: `clipdex remove`, `status` naming them; serve --allow-host; evaluate's left-out rows."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli as run


@pytest.fixture()
def idx(cli_index: str) -> str:
    return cli_index


def test_a_moved_folder_is_shown_gone_then_forgotten_and_its_vectors_reused(idx: str, photos: Path) -> None:
    moved = photos.with_name("photos-moved")
    photos.rename(moved)

    status = run("status", "--index", idx)
    assert status.exit_code == 0, status.output
    assert f"gone     {photos}" in status.output and "clipdex remove --missing" in status.output
    assert "12 photos no longer on disk" in status.output
    data = json.loads(run("status", "--index", idx, "--json").output)
    assert data["missing_roots"] == [str(photos)]

    removed = run("remove", "--missing", "--index", idx)
    assert removed.exit_code == 0, removed.output
    assert f"forgot {photos}" in removed.output
    status = run("status", "--index", idx)
    assert "gone" not in status.output and "0 indexed" in status.output
    again = run("remove", "--missing", "--index", idx)
    assert "nothing to forget" in again.output

    reindexed = run("index", str(moved), "--index", idx)
    assert re.search(r"reused\s+12", reindexed.output), reindexed.output
    assert re.search(r"encoded 0 ", reindexed.output)


def test_remove_a_folder_that_still_exists(idx: str, photos: Path) -> None:
    result = run("remove", str(photos), "--index", idx, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"removed_roots": [str(photos)], "photos_removed": 12}
    assert json.loads(run("status", "--index", idx, "--json").output)["indexed"] == 0
    gone = run("search", "dog", "--index", idx)
    assert gone.exit_code == 1 and "error:" in gone.output


def test_remove_says_which_folders_there_are(idx: str, photos: Path, tmp_path: Path) -> None:
    result = run("remove", str(tmp_path / "elsewhere"), "--index", idx)
    assert result.exit_code == 1
    assert "is not a folder of this index" in result.output and str(photos) in result.output
    for args in ([], [str(photos), "--missing"]):
        usage = run("remove", *args, "--index", idx)
        assert usage.exit_code == 2 and "--missing" in usage.output


def test_serve_answers_to_allowed_hosts_only(idx: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    served: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        served.update(kwargs, app=app)
        with TestClient(app) as client:
            served["mine"] = client.get("/api/status", headers={"host": "photos.lan:8000"}).status_code
            served["other"] = client.get("/api/status", headers={"host": "evil.example"}).status_code
            served["local"] = client.get("/api/status", headers={"host": "127.0.0.1:8000"}).status_code

    monkeypatch.setattr(uvicorn, "run", fake_run)
    result = run("serve", "--index", idx, "--allow-host", "photos.lan", "--port", "8123")
    assert result.exit_code == 0, result.output
    assert served["port"] == 8123 and served["host"] == "127.0.0.1"
    assert served["mine"] == 200 and served["local"] == 200 and served["other"] >= 400


def test_evaluate_names_the_rows_it_left_out(idx: str, photos: Path, tmp_path: Path) -> None:
    assert run("classify", "--name", "taken_time", "--labels", "day,night", "--index", idx).exit_code == 0
    table = tmp_path / "truth.csv"
    truths = ["day", "night", "sunset", "sunset", "golden hour", " Day "] + ["day"] * 6  # case is no matter
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "taken_time"])
        writer.writerows([str(p), t] for p, t in zip(sorted(photos.rglob("*.jpg")), truths))
    result = run("evaluate", "taken_time", "--metadata", str(table), "--key", "path", "--index", idx)
    assert result.exit_code == 0, result.output
    assert "left out 3 rows whose truth is not a label of the set: sunset (2), golden hour (1)" in result.output
    assert "9 photos with both" in result.output
    data = json.loads(run("evaluate", "taken_time", "--metadata", str(table), "--key", "path",
                          "--index", idx, "--json").output)
    assert data["excluded"] == {"sunset": 2, "golden hour": 1} and data["count"] == 9
