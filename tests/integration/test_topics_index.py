"""clipdex topics on an index of the tiny model: three clearly distinct groups of photos found,
named, stored as a label set that search, review and the web pages use; cache, -k, no weights."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageEnhance

from clipdex import Index
from clipdex.errors import LabelSetError
from clipdex.labels import make_label_set
from clipdex.topics import CACHE_DIR, find_topics
from clipdex.web import create_app
from tests.conftest import run_cli
from tests.images import photo

GROUPS = 3
PER_GROUP = 6


def write_groups(folder: Path, groups: int = GROUPS, per: int = PER_GROUP) -> dict[str, int]:
    """``per`` variants (crops, brightness, size) of ``groups`` different photos: file name -> group."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for g in range(groups):
        base = photo(1000 + 17 * g)
        for v in range(per):
            w, h = base.size
            crop = base.crop((4 * v, 3 * v, w - 5 * v, h - 2 * v)).resize((320 + 16 * v, 240 + 12 * v))
            image: Image.Image = ImageEnhance.Brightness(crop).enhance(0.9 + 0.04 * v)
            name = f"g{g}-{v}.jpg"
            image.save(folder / name, "JPEG", quality=85 + v)
            truth[name] = g
    return truth


@pytest.fixture()
def groups(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    folder = tmp_path / "groups"
    return folder, write_groups(folder)


@pytest.fixture()
def index_dir(tmp_path: Path, groups: tuple[Path, dict[str, int]], model_args: list[str]) -> str:
    index = str(tmp_path / "idx")
    result = run_cli("index", str(groups[0]), "--index", index, *model_args)
    assert result.exit_code == 0, result.output
    return index


def _topic_of(data: dict, index: str) -> dict[str, str]:
    """Each photo's stored topic, by file name."""
    with Index.open(index) as idx:
        result = idx.classification(data["set"])
    return {Path(p).name: label for p, label in zip(result.paths, result.predicted)}


def test_topics_found_named_and_stored(index_dir: str, groups: tuple[Path, dict[str, int]],
                                       model_args: list[str], tmp_path: Path) -> None:
    truth = groups[1]
    result = run_cli("topics", "--index", index_dir, *model_args, "--json", "--grid", str(tmp_path / "sheets"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["set"] == "topics" and data["photos"] == GROUPS * PER_GROUP and data["saved"]
    assert data["k"]["method"] == "silhouette" and data["k"]["range"] == [2, 4] and data["k"]["k"] == GROUPS
    assert data["naming_note"] is None and "clipdex built-in" in data["vocabulary"]
    topics = data["topics"]
    assert [t["number"] for t in topics] == [1, 2, 3] and sum(t["size"] for t in topics) == GROUPS * PER_GROUP
    names = [t["name"] for t in topics]
    assert len(set(names)) == GROUPS and all(t["named_by"] == "vocabulary" for t in topics)
    for t in topics:
        assert t["candidates"][0]["name"] == t["name"] and len(t["candidates"]) == 5
        assert len(t["typical"]) == PER_GROUP and {"id", "path"} <= set(t["typical"][0])
    # every topic is one group of variants, and every group one topic
    topic_of = _topic_of(data, index_dir)
    pairs = {(truth[name], topic) for name, topic in topic_of.items()}
    assert len(pairs) == GROUPS
    sheets = sorted(p.name for p in (tmp_path / "sheets").iterdir())
    assert sheets[-1] == "topics.jpg" and len(sheets) == GROUPS + 1 and sheets[0].startswith("topic-01-")
    assert data["grids"] and Image.open(tmp_path / "sheets" / "topics.jpg").size[0] > 0

    # the topics are a label set: search filters, review grids and exports use it
    first = names[0]
    found = run_cli("search", "a photo", "--index", index_dir, *model_args, "--label", f"topics={first}", "--json")
    assert found.exit_code == 0, found.output
    paths = {Path(r["path"]).name for r in json.loads(found.output)["results"]}
    assert paths == {n for n, t in topic_of.items() if t == first}
    review = run_cli("review", "topics", "--index", index_dir, *model_args, "--grid", str(tmp_path / "r.jpg"))
    assert review.exit_code == 0, review.output
    assert (tmp_path / "r.jpg").is_file()
    with Index.open(index_dir) as idx:
        stored = idx.classification("topics")
    assert stored.label_set.kind == "topics" and stored.label_set.origin is not None
    assert stored.label_set.origin["k"] == GROUPS and stored.label_set.origin["temperature"] > 0
    assert np.allclose(stored.probs.sum(axis=1), 1.0, atol=1e-5)
    assert (stored.probs.argmax(axis=1) == [stored.labels.index(p) for p in stored.predicted]).all()


def test_k_given_seed_repeatable_and_csv(index_dir: str, model_args: list[str]) -> None:
    runs = [run_cli("topics", "-k", "2", "--index", index_dir, *model_args, "--csv", "--name", "two")
            for _ in range(2)]
    assert runs[0].exit_code == 0, runs[0].output
    assert runs[0].output == runs[1].output  # same seed, same topics (and names)
    rows = list(csv.DictReader(io.StringIO(runs[0].output)))
    assert len(rows) == 2 and sum(int(r["photos"]) for r in rows) == GROUPS * PER_GROUP
    assert set(rows[0]) == {"number", "name", "named_by", "photos", "share", "second_name", "second_score",
                            "candidates", "majority_labels", "typical_ids", "typical_paths"}
    assert rows[0]["second_name"] and len(rows[0]["typical_ids"].split()) == int(rows[0]["photos"])
    text = run_cli("topics", "-k", "3", "--index", index_dir, *model_args, "--name", "three")
    assert text.exit_code == 0, text.output
    assert "k = 3 (given)" in text.output and "stored as label set 'three'" in text.output
    too_many = run_cli("topics", "-k", "40", "--index", index_dir, *model_args)
    assert too_many.exit_code == 1 and "-k 40" in too_many.output and "leave -k out" in too_many.output


def test_vocabulary_vectors_are_cached_in_the_index(index_dir: str, model_kwargs: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with Index.open(index_dir, **model_kwargs) as idx:
        first = find_topics(idx, k=3)
    assert not first.cached_names
    cache = list((Path(index_dir) / CACHE_DIR).glob("*.npy"))
    assert len(cache) == 1

    def no_encoder(self: Index) -> None:
        raise AssertionError("the text encoder was used although the vectors are cached")

    monkeypatch.setattr(Index, "encoder", property(no_encoder))
    with Index.open(index_dir, **model_kwargs) as idx:
        second = find_topics(idx, k=3)
    assert second.cached_names and [t.name for t in second.topics] == [t.name for t in first.topics]


def test_without_weights_topics_are_numbered_or_named_by_labels(
        tmp_path: Path, groups: tuple[Path, dict[str, int]], tiny_model: tuple[Path, Path]) -> None:
    config, weights = tiny_model
    gone = tmp_path / "gone.pt"
    shutil.copy(weights, gone)
    index_dir = tmp_path / "idx"
    with Index.open(index_dir, create=True, model_config=str(config), weights=str(gone)) as idx:
        idx.add(groups[0])
        idx.classify([make_label_set("space", ["indoor", "outdoor"], ["a photo taken {}"])])
    gone.unlink()  # the weights are not on this machine any more
    result = run_cli("topics", "-k", "3", "--index", str(index_dir), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert "needs the text encoder" in data["naming_note"] and "--weights" in data["naming_note"]
    assert "not used" in data["naming_note"] and data["vocabulary"].startswith("none (")  # not claimed as used
    assert "gone.pt" in data["naming_detail"]  # the model's own error: which weights are missing
    assert all(t["named_by"] in ("labels", "number") for t in data["topics"])
    assert all(t["candidates"] == [] for t in data["topics"])
    for t in data["topics"]:
        if t["named_by"] == "number":
            assert t["name"] == f"topic {t['number']}"
        else:
            assert t["majorities"] and t["majorities"][0]["set"] == "space"
    assert len({t["name"] for t in data["topics"]}) == 3
    text = run_cli("topics", "-k", "3", "--index", str(index_dir), "--name", "numbered")
    assert text.exit_code == 0 and "note:" in text.output and "needs the text encoder" in text.output
    assert "why:" in text.output and "numbered" in text.output


def test_a_zero_shot_set_is_never_replaced(index_dir: str, model_kwargs: dict[str, str]) -> None:
    with Index.open(index_dir, **model_kwargs) as idx:
        idx.classify([make_label_set("space", ["indoor", "outdoor"])])
        with pytest.raises(LabelSetError, match="another --name"):
            find_topics(idx, k=2, name="space")
        assert idx.classification("space").label_set.kind == "zero-shot"
        again = find_topics(idx, k=2, save=False)
        assert not again.saved and "topics" not in idx.label_sets()


def test_users_labels_name_topics(index_dir: str, model_args: list[str], tmp_path: Path) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("red thing\nblue thing\ngreen thing\nyellow thing\n")
    result = run_cli("topics", "-k", "3", "--index", index_dir, *model_args, "--labels", str(mine),
                     "--no-builtin", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {t["name"] for t in data["topics"]} <= {"red thing", "blue thing", "green thing", "yellow thing"}
    assert data["vocabulary"] == "mine.txt (4)"
    bad = run_cli("topics", "--index", index_dir, "--no-builtin")
    assert bad.exit_code == 2 and "--labels" in bad.output


@pytest.fixture()
def client(index_dir: str, model_kwargs: dict[str, str]) -> Iterator[TestClient]:
    with Index.open(index_dir, **model_kwargs) as idx:
        yield TestClient(create_app(idx), base_url="http://127.0.0.1:8000")


def test_web_topics_page_and_api(client: TestClient) -> None:
    empty = client.get("/topics")
    assert empty.status_code == 200 and 'id="no-topics"' in empty.text
    assert client.get("/api/topics").json()["topics"] == []
    found = client.post("/api/topics", json={"k": 3, "name": "topics"})
    assert found.status_code == 200, found.text
    assert len(found.json()["topics"]) == 3 and found.json()["saved"]
    data = client.get("/api/topics", params={"typical": 2}).json()
    assert data["set"] == "topics" and data["sets"] == ["topics"] and data["photos"] == GROUPS * PER_GROUP
    assert data["origin"]["kind"] == "topics" and "topics" not in data["origin"]
    assert all(len(t["typical"]) == 2 and t["size"] == PER_GROUP for t in data["topics"])
    page = client.get("/topics").text
    assert page.count('class="topic"') == 3
    name = data["topics"][0]["name"]
    from urllib.parse import urlencode

    assert f'href="/?{urlencode({"set": "topics", "label": name})}"'.replace("&", "&amp;") in page
    assert f'href="/labels/topics?{urlencode({"label": name})}"' in page
    search = client.get("/", params={"set": "topics", "label": name})
    assert search.status_code == 200 and search.text.count('class="card"') == PER_GROUP
    assert client.get("/labels/topics", params={"label": name}).status_code == 200
    missing = client.get("/api/topics", params={"set": "nope"})
    assert missing.status_code == 404 and "holds no topics" in missing.json()["error"]
    assert client.post("/api/topics", json={"k": 1}).status_code == 400  # k below 2
    assert client.post("/api/topics", json={"name": "bad name"}).status_code == 400
    assert "/api/topics" in client.get("/api").text


def test_read_only_index_shows_topics_without_storing(index_dir: str, model_kwargs: dict[str, str]) -> None:
    with Index.open(index_dir, readonly=True, **model_kwargs) as idx:
        result = find_topics(idx, k=3)
        assert not result.saved and len(result.topics) == 3
    assert not (Path(index_dir) / CACHE_DIR).exists()  # nothing written, not even the cache
    with Index.open(index_dir, **model_kwargs) as idx:
        assert "topics" not in idx.label_sets()


def test_corrections_to_topics_that_are_gone_are_counted(index_dir: str, model_kwargs: dict[str, str],
                                                         tmp_path: Path) -> None:
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("alpha\nbeta\ngamma\n")
    second.write_text("delta\nepsilon\n")
    with Index.open(index_dir, **model_kwargs) as idx:
        found = find_topics(idx, k=3, label_files=[first], builtin=False)
        assert found.stale_corrections == 0
        photo_id = found.classification.file_ids[0]
        other = next(t.name for t in found.topics if t.name != found.classification.predicted[0])
        idx.correct("topics", photo_id, other)
        again = find_topics(idx, k=2, label_files=[second], builtin=False)
    assert again.stale_corrections == 1 and again.to_dict()["stale_corrections"] == 1
