"""One JSON shape per result type: the CLI's --json and the web API agree field for field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from clipdex import Index
from clipdex.cli import main
from clipdex.web import create_app
from tests.conftest import HOSTILE_NAME


def cli_json(*args: str) -> Any:
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture()
def client(web_index: Index) -> TestClient:
    return TestClient(create_app(web_index), base_url="http://127.0.0.1:8000")


@pytest.mark.parametrize("query, k, offset", [("dog in the snow", 5, 0), ("-people + beach", 4, 3),
                                              ('"red car" + 2*night', 13, 0)])
def test_search_json_equals_the_api(web_index: Index, client: TestClient, query: str, k: int,
                                    offset: int) -> None:
    from_cli = cli_json("search", query, "-n", str(k), "--offset", str(offset), "--index", str(web_index.path))
    response = client.get("/api/search", params={"q": query, "k": k, "offset": offset})
    assert response.status_code == 200, response.text
    from_api = response.json()
    assert from_cli["results"] == from_api["results"]
    assert {key: from_cli[key] for key in ("query", "offset", "count")} == \
        {key: from_api[key] for key in ("query", "offset", "count")}
    assert set(from_cli["results"][0]) == {"rank", "score", "id", "path", "name"}
    assert from_cli["results"][0]["rank"] == offset + 1


def test_the_hostile_name_comes_back_as_it_is(web_index: Index) -> None:
    found = cli_json("search", "a photo", "-n", "13", "--index", str(web_index.path))["results"]
    assert HOSTILE_NAME in [r["name"] for r in found]


def test_status_json_minus_failures_equals_the_api(web_index: Index, client: TestClient) -> None:
    from_cli = cli_json("status", "--index", str(web_index.path))
    assert from_cli.pop("failures") == []
    response = client.get("/api/status")
    assert response.status_code == 200, response.text
    assert from_cli == response.json()
    assert from_cli["indexed"] == 13


def test_index_and_classify_json_come_from_serialize(web_index: Index, tmp_path: Path) -> None:
    from clipdex import serialize

    photos = tmp_path / "photos"
    report = cli_json("index", str(photos), "--index", str(web_index.path))
    assert report["unchanged"] == 13 and report["failed"] == []
    assert {"root", "model", "new", "changed", "reused", "unchanged", "removed", "encoded", "indexed_total",
            "seconds", "images_per_second", "failed"} <= set(report)

    sets = cli_json("classify", "--name", "taken_space", "--labels", "indoor,outdoor", "--template",
                    "a photo taken {}", "--top-k", "2", "--index", str(web_index.path))
    assert sets == [serialize.classification(web_index.classification("taken_space"), 2)]
