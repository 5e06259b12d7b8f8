"""clipdex learn on the tiny model: probes from a generated table, corrections, --predict, --next, the web API.

The photos come in groups: variants (shifted, brightened, noisy) of one generated scene per group,
so a linear probe on the tiny random model's vectors can tell the groups apart, while zero-shot with
its random text tower cannot.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from clipdex import Index
from clipdex.errors import LabelSetError, ModelError, TableError
from clipdex.labels import make_label_set
from clipdex.learn import (
    learn_from_corrections,
    learn_from_table,
    learned_name,
    least_sure,
    predict_learned,
)
from clipdex.search.filters import SearchFilter
from tests.conftest import run_cli
from tests.images import photo

GROUPS = {"beach": 11, "forest": 22, "city": 33}  # group -> seed of its scene
PER_GROUP = 8
ISO = {"beach": 100, "forest": 400, "city": 1600}  # a numeric column that follows the groups


def variant(seed: int, j: int) -> Image.Image:
    """Variant ``j`` of scene ``seed``: shifted a few pixels, brightness changed, its own noise."""
    base = photo(seed, 360, 270)
    shifted = base.crop((j * 3, j * 2, j * 3 + 320, j * 2 + 240))
    bright = ImageEnhance.Brightness(shifted).enhance(0.85 + 0.04 * j)
    rng = np.random.default_rng(seed * 100 + j)
    pixels = np.asarray(bright, dtype=np.float32) + rng.normal(0, 4, (240, 320, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_groups(folder: Path, per_group: int = PER_GROUP, start: int = 0) -> dict[str, str]:
    """``per_group`` variants of each group's scene as ``<group>-<j>.jpg``; photo_id -> group."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for group, seed in GROUPS.items():
        for j in range(start, start + per_group):
            variant(seed, j).save(folder / f"{group}-{j:02d}.jpg", "JPEG", quality=92)
            truth[f"{group}-{j:02d}"] = group
    return truth


def write_table(path: Path, truth: dict[str, str], extra: dict[str, dict[str, str]] | None = None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["photo_id", "group", "iso", "note"])
        for i, (pid, group) in enumerate(truth.items()):
            row = (extra or {}).get(pid, {})
            writer.writerow([pid, row.get("group", group), row.get("iso", ISO[group] + i), "x"])
    return path


@pytest.fixture()
def groups(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "groups"
    return folder, write_groups(folder)


@pytest.fixture()
def index(tmp_path: Path, groups: tuple[Path, dict[str, str]], model_kwargs: dict[str, str]) -> Iterator[Index]:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        idx.add(groups[0])
        yield idx


def _truth_of(index: Index, name: str) -> dict[int, str]:
    result = index.classification(name)
    return {fid: Path(p).stem.split("-")[0] for fid, p in zip(result.file_ids, result.paths)}


def test_probe_from_a_table_is_cross_validated_and_stored_as_a_label_set(
        index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    table = write_table(tmp_path / "photos.csv", groups[1])
    learned = learn_from_table(index, "scene", table, "photo_id", "group")
    assert learned.set_name == "scene" and learned.source == "table"
    assert sorted(learned.classes) == sorted(GROUPS) and set(learned.counts.values()) == {PER_GROUP}
    assert learned.nested and learned.folds == 5 and len(learned.fold_C) == 5
    probe, baseline = learned.scores["probe"], learned.scores["baseline"]
    assert probe.count == baseline.count == 3 * PER_GROUP
    assert probe.accuracy >= 0.9 and probe.balanced_accuracy >= 0.9 and probe.macro_f1 >= 0.9
    # always the training folds' most frequent class: with equal classes, no better than a third
    assert baseline.balanced_accuracy <= 1 / 3 + 1e-9 and baseline.accuracy <= 1 / 3 + 1e-9
    assert "zero_shot" not in learned.scores  # no zero-shot set of that name
    # stored: a label set like any other, with its model in the definition
    result = index.classification("scene")
    assert result.label_set.kind == "learned" and result.label_set.origin is not None
    assert result.label_set.origin["classes"] == learned.classes
    assert np.allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    truth = _truth_of(index, "scene")
    assert sum(p == truth[f] for f, p in zip(result.file_ids, result.predicted)) == len(truth)
    # search filters, evaluation and review work on it
    hits = index.search("a photo", k=50, filters=SearchFilter(label=("scene", "beach")))
    assert len(hits) == PER_GROUP and all(Path(h.path).name.startswith("beach") for h in hits)
    evaluation, matched = index.evaluate("scene", table, "photo_id", "group")
    assert matched == 3 * PER_GROUP and evaluation.accuracy == 1.0
    grid = tmp_path / "review.jpg"
    result_cli = run_cli("review", "scene", "--grid", str(grid), "--index", str(index.path))
    assert result_cli.exit_code == 0 and grid.stat().st_size > 0


def test_cli_learn_json_bins_and_levels(index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    table = write_table(tmp_path / "photos.csv", groups[1])
    index.close()
    result = run_cli("learn", "iso", "--metadata", str(table), "--key", "photo_id", "--target", "iso",
                     "--bins", "1000", "--index", str(index.path), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["classes"] == ["low", "high"] and out["counts"] == {"low": 16, "high": 8}
    assert out["levels"].startswith("iso: low < 1000 <= high (--bins 1000)")
    assert out["scores"]["probe"]["balanced_accuracy"] >= 0.9 and out["scores"]["baseline"]["accuracy"] > 0.6
    # a numeric column with many values, no --bins: quantile levels, said in the output
    result = run_cli("learn", "iso_auto", "--metadata", str(table), "--key", "photo_id", "--target", "iso",
                     "--levels", "3", "--index", str(index.path))
    assert result.exit_code == 0, result.output
    assert "levels: iso: low <" in result.output and "automatic quantile levels (--levels 3)" in result.output
    assert "linear probe" in result.output and "majority class" in result.output
    assert "stored as label set iso_auto" in result.output
    # text columns cannot be binned
    result = run_cli("learn", "x", "--metadata", str(table), "--key", "photo_id", "--target", "group",
                     "--bins", "3", "--index", str(index.path))
    assert result.exit_code == 1 and "is not numeric" in result.output


def test_too_few_rows_per_class_names_them(index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    rare = {pid: {"group": "desert"} for pid in list(groups[1])[:2]}
    rare.update({pid: {"group": "ice"} for pid in list(groups[1])[8:11]})
    table = write_table(tmp_path / "photos.csv", groups[1], rare)
    with pytest.raises(TableError) as caught:
        learn_from_table(index, "scene", table, "photo_id", "group")
    message = str(caught.value)
    assert "'ice' (3), 'desert' (2)" in message and "at least 5 each" in message and "--rare drop" in message
    learned = learn_from_table(index, "scene", table, "photo_id", "group", rare="drop")
    assert learned.left_out == {"ice": 3, "desert": 2} and "desert" not in learned.classes
    learned = learn_from_table(index, "scene", table, "photo_id", "group", rare="other")
    assert "other" in learned.classes and learned.counts["other"] == 5
    with pytest.raises(TableError, match="has no column 'colour'"):
        learn_from_table(index, "scene", table, "photo_id", "colour")


def test_a_zero_shot_set_of_the_same_name_is_kept_and_compared(
        index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
    table = write_table(tmp_path / "photos.csv", groups[1])
    learned = learn_from_table(index, "scene", table, "photo_id", "group")
    assert learned.set_name == learned_name("scene")
    assert index.classification("scene").label_set.kind == "zero-shot"  # not replaced
    assert learned.scores["zero_shot"].count == 3 * PER_GROUP
    assert learned.scores["probe"].accuracy > learned.scores["zero_shot"].accuracy
    with pytest.raises(LabelSetError, match="never replaces one"):
        learn_from_table(index, "other", table, "photo_id", "group", save_as="scene")


def test_predict_labels_photos_indexed_since(index: Index, groups: tuple[Path, dict[str, str]],
                                             tmp_path: Path) -> None:
    table = write_table(tmp_path / "photos.csv", groups[1])
    learn_from_table(index, "scene", table, "photo_id", "group")
    write_groups(groups[0], per_group=2, start=PER_GROUP)  # new variants of every scene
    index.add(groups[0])
    assert len(index.classification("scene").file_ids) == 3 * PER_GROUP
    result = predict_learned(index, "scene")
    assert len(result.file_ids) == 3 * (PER_GROUP + 2)
    stored = index.classification("scene")
    truth = _truth_of(index, "scene")
    assert len(stored.file_ids) == 3 * (PER_GROUP + 2)
    assert sum(p == truth[f] for f, p in zip(stored.file_ids, stored.predicted)) >= 3 * (PER_GROUP + 2) - 1
    with pytest.raises(LabelSetError, match="not one `clipdex learn` made"):
        index.classify([make_label_set("zs", ["a", "b"])])
        predict_learned(index, "zs")


def _correct(index: Index, name: str, per_label: int) -> set[int]:
    """Correct ``per_label`` photos of each group in set ``name`` (their true group)."""
    done = set()
    truth = _truth_of(index, name)
    for group in GROUPS:
        for fid in [f for f, g in truth.items() if g == group][:per_label]:
            index.correct(name, fid, group)
            done.add(fid)
    return done


def test_learning_from_corrections_never_scores_below_zero_shot(index: Index) -> None:
    index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
    with pytest.raises(LabelSetError) as caught:
        learn_from_corrections(index, "scene")
    assert "beach (0), forest (0), city (0)" in str(caught.value) and "--next 20" in str(caught.value)
    corrected = _correct(index, "scene", 4)
    learned = learn_from_corrections(index, "scene")
    assert learned.set_name == "scene-learned" and learned.prior == "text-encoder"
    assert learned.weight is not None and 0.0 <= learned.weight <= 1.0
    zs, combined = learned.scores["zero_shot"], learned.scores["combined"]
    assert combined.count == zs.count == 12
    assert combined.balanced_accuracy >= zs.balanced_accuracy  # weight 0 is among the choices
    assert learned.weight > 0 and combined.balanced_accuracy >= 0.9  # the groups are easy; zero-shot is random
    # stored beside the zero-shot set, which stays; held-out photos are labelled right
    assert index.classification("scene").label_set.kind == "zero-shot"
    result = index.classification("scene-learned")
    assert result.label_set.origin is not None and result.label_set.origin["weight"] == learned.weight
    truth = _truth_of(index, "scene-learned")
    held_out = [(f, p) for f, p in zip(result.file_ids, result.predicted) if f not in corrected]
    assert sum(p == truth[f] for f, p in held_out) >= len(held_out) - 1
    # the same model again, without retraining
    again = predict_learned(index, "scene-learned")
    assert again.predicted == result.predicted


def test_corrections_without_the_weights_use_the_stored_probabilities(
        index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
    _correct(index, "scene", 3)
    with_text = learn_from_corrections(index, "scene", save=False)

    def no_weights(self: Index) -> None:
        raise ModelError("the weights of ViT-T are not on this machine. Pass --weights FILE.")

    monkeypatch.setattr(Index, "encoder", property(no_weights))
    learned = learn_from_corrections(index, "scene")
    assert learned.prior == "stored-probabilities" and any("not at hand" in n for n in learned.notes)
    # log p is the logits up to a per-photo constant: the same zero-shot choices, the same CV
    assert learned.scores["zero_shot"] == with_text.scores["zero_shot"]
    assert learned.scores["combined"].balanced_accuracy >= learned.scores["zero_shot"].balanced_accuracy
    assert len(index.classification("scene-learned").file_ids) == 3 * PER_GROUP
    assert len(predict_learned(index, "scene-learned").file_ids) == 3 * PER_GROUP


def test_next_lists_the_least_sure_uncorrected_photos(index: Index) -> None:
    index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
    corrected = _correct(index, "scene", 2)
    unsure = least_sure(index, "scene", 5)
    assert len(unsure) == 5 and not {u.file_id for u in unsure} & corrected
    margins = [u.margin for u in unsure]
    assert margins == sorted(margins)
    probs = index.classification("scene").probs
    top2 = np.sort(probs, axis=1)[:, -2:]
    smallest = sorted((top2[:, 1] - top2[:, 0]).tolist())
    assert margins[0] >= smallest[0] - 1e-6
    index.close()
    result = run_cli("learn", "scene", "--next", "3", "--index", str(index.path), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [u["id"] for u in out["next"]] == [u.file_id for u in unsure[:3]]
    result = run_cli("learn", "scene", "--next", "3", "--index", str(index.path))
    assert "the 3 photos it is least sure of" in result.output


def test_cli_usage_errors(index: Index, tmp_path: Path) -> None:
    index.close()
    result = run_cli("learn", "scene", "--index", str(index.path))
    assert result.exit_code == 2 and "--from-corrections" in result.output
    result = run_cli("learn", "scene", "--predict", "--from-corrections", "--index", str(index.path))
    assert result.exit_code == 2 and "give one" in result.output
    result = run_cli("learn", "scene", "--target", "x", "--from-corrections", "--index", str(index.path))
    assert result.exit_code == 2 and "go with --metadata" in result.output
    result = run_cli("learn", "scene", "--bins", "a,b", "--predict", "--index", str(index.path))
    assert result.exit_code == 2 and "not a list of numbers" in result.output


def test_web_learn_api(index: Index) -> None:
    from fastapi.testclient import TestClient

    from clipdex.web import create_app

    index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
    client = TestClient(create_app(index), base_url="http://127.0.0.1:8000")
    state = client.get("/api/labels/scene/learning").json()
    assert state["source"] == "scene" and not state["can_learn"] and "beach (0)" in state["needs"]
    assert len(state["next"]) == 12 and state["labels"] == list(GROUPS)
    refused = client.post("/api/labels/scene/learn")
    assert refused.status_code == 400 and "too few corrections" in refused.json()["error"]
    corrected = _correct(index, "scene", 3)
    response = client.post("/api/labels/scene/learn?next=5")
    assert response.status_code == 200, response.text
    body = response.json()
    scores = body["learned"]["scores"]
    assert scores["combined"]["balanced_accuracy"] >= scores["zero_shot"]["balanced_accuracy"]
    assert body["state"]["learned_set"] == "scene-learned" and body["state"]["can_learn"]
    assert body["state"]["learned"]["metrics"]["combined"] == scores["combined"]
    assert len(body["state"]["next"]) == 5 and not {p["id"] for p in body["state"]["next"]} & corrected
    page = client.get("/labels/scene")
    assert 'id="learning"' in page.text and "/static/learning.js" in page.text
    learned_state = client.get("/api/labels/scene-learned/learning").json()
    assert learned_state["source"] == "scene" and learned_state["correct_in"] == "scene"
    assert client.get("/api/labels/nothing/learning").status_code == 404
    assert "/api/labels/{name}/learn" in client.get("/api").text


def test_cli_from_corrections_and_predict(index: Index) -> None:
    index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
    _correct(index, "scene", 3)
    index.close()
    result = run_cli("learn", "scene", "--from-corrections", "--next", "4", "--index", str(index.path), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["set"] == "scene-learned" and out["source"] == "corrections" and out["prior"] == "text-encoder"
    assert out["scores"]["combined"]["balanced_accuracy"] >= out["scores"]["zero_shot"]["balanced_accuracy"]
    assert out["photos"] == 3 * PER_GROUP and len(out["next"]) == 4
    result = run_cli("learn", "scene", "--from-corrections", "--index", str(index.path))
    assert result.exit_code == 0, result.output
    assert "zero-shot + corrections" in result.output and "the set's prompts, encoded again" in result.output
    assert "stored as label set scene-learned" in result.output
    result = run_cli("learn", "scene-learned", "--predict", "--index", str(index.path))
    assert result.exit_code == 0 and f"labelled {3 * PER_GROUP} photos" in result.output
    result = run_cli("learn", "scene", "--predict", "--index", str(index.path))
    assert result.exit_code == 1 and "zero-shot set, not one `clipdex learn` made" in result.output


def test_learning_state_of_a_table_set_and_a_multi_label_refusal(
        index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from clipdex.learn import learning_state

    table = write_table(tmp_path / "photos.csv", groups[1])
    learn_from_table(index, "scene", table, "photo_id", "group")
    state = learning_state(index, "scene", 3)
    assert state["kind"] == "learned" and state["source"] is None and not state["can_learn"]
    assert "--target group --save-as scene" in state["needs"]
    assert state["learned"]["metrics"]["probe"]["accuracy"] >= 0.9 and state["correct_in"] == "scene"
    assert state["next"] == []  # the table labels every photo: nothing is left to ask a person
    index.classify([make_label_set("tags", list(GROUPS), multi_label=True)])
    with pytest.raises(LabelSetError, match="is multi-label"):
        learn_from_corrections(index, "tags")
    assert len(least_sure(index, "tags", 2)) == 2  # near the threshold first


def _copies(index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> dict[str, str]:
    """A copy of every photo (same bytes, another name: ``<stem>-copy``) indexed too; copy id -> group."""
    folder = tmp_path / "copies"
    folder.mkdir()
    for pid in groups[1]:
        (folder / f"{pid}-copy.jpg").write_bytes((groups[0] / f"{pid}.jpg").read_bytes())
    index.add(folder)
    return {f"{pid}-copy": group for pid, group in groups[1].items()}


def test_copies_in_a_table_do_not_inflate_the_cross_validation(
        index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    plain = learn_from_table(index, "scene", write_table(tmp_path / "plain.csv", groups[1]), "photo_id", "group",
                             save=False)
    copies = _copies(index, groups, tmp_path)
    doubled = write_table(tmp_path / "doubled.csv", {**groups[1], **copies},
                          {f"{pid}-copy": {"iso": str(ISO[g] + i)} for i, (pid, g) in enumerate(groups[1].items())})
    learned = learn_from_table(index, "scene", doubled, "photo_id", "group", save=False)
    # one row per content: the very rows (and scores) of the table without its copies
    assert learned.counts == plain.counts == {g: PER_GROUP for g in GROUPS}
    assert learned.scores == plain.scores and learned.scores["probe"].count == 3 * PER_GROUP
    assert any("24 photos are copies" in n for n in learned.notes)
    assert len(learned.result.file_ids) == 6 * PER_GROUP if learned.result else False  # every file labelled
    # copies that disagree: a tie leaves the content out, a majority keeps its value
    beach = [pid for pid, g in groups[1].items() if g == "beach"]
    tie = write_table(tmp_path / "tie.csv", {**groups[1], **copies}, {f"{beach[0]}-copy": {"group": "city"}})
    learned = learn_from_table(index, "scene", tie, "photo_id", "group", save=False)
    assert learned.counts["beach"] == PER_GROUP - 1 and any("1 with a tie" in n for n in learned.notes)


def test_copies_corrected_once_count_once(
        index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    _copies(index, groups, tmp_path)
    index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
    _correct(index, "scene", 3)  # a correction is stored by content: each copy is corrected with it
    truth = index.classification("scene").truth or []
    assert sum(bool(t) for t in truth) >= 9 + 3  # the copies of the corrected photos carry their truth
    learned = learn_from_corrections(index, "scene", save=False)
    assert learned.counts == {g: 3 for g in GROUPS} and learned.scores["zero_shot"].count == 9
    assert learned.nested and len(learned.fold_weights) == 3


def test_corrections_scores_are_nested_or_said_to_be_a_selection(index: Index) -> None:
    index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
    _correct(index, "scene", 2)  # 2 a label: no outer training part keeps 2 of each
    learned = learn_from_corrections(index, "scene", save=False)
    assert not learned.nested and set(learned.scores) == {"zero_shot", "selection"}
    assert learned.scores["selection"].balanced_accuracy >= learned.scores["zero_shot"].balanced_accuracy
    assert any("no nested estimate" in n for n in learned.notes)
    index.close()
    result = run_cli("learn", "scene", "--from-corrections", "--index", str(index.path))
    assert result.exit_code == 0, result.output
    assert "chosen weight (selection)" in result.output and "no nested estimate" in result.output
    assert "zero-shot + corrections" not in result.output


def test_min_rows_2_falls_back_to_a_fixed_C(index: Index, groups: tuple[Path, dict[str, str]],
                                            tmp_path: Path) -> None:
    rare = {pid: {"group": "desert"} for pid in list(groups[1])[:2]}
    table = write_table(tmp_path / "photos.csv", groups[1], rare)
    index.close()
    result = run_cli("learn", "scene", "--metadata", str(table), "--key", "photo_id", "--target", "group",
                     "--min-rows", "2", "--index", str(index.path), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["counts"]["desert"] == 2 and out["folds"] == 2 and 10.0 in out["fold_C"]
    assert any("fixed at 10" in n for n in out["notes"])


def test_a_table_never_silently_replaces_another_set(
        index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    import dataclasses

    from clipdex.labels import LabelSet

    table = write_table(tmp_path / "photos.csv", groups[1])
    learn_from_table(index, "scene", table, "photo_id", "group")
    learn_from_table(index, "scene", table, "photo_id", "group")  # the same column again: replaced
    with pytest.raises(LabelSetError, match=r"was learned from column 'group'.*--save-as scene"):
        learn_from_table(index, "scene", table, "photo_id", "iso")
    assert learn_from_table(index, "scene", table, "photo_id", "iso", save_as="scene").target == "iso"
    stored = index.classification("scene")
    topics = LabelSet(name="themes", labels=stored.label_set.labels, templates=(), origin={"kind": "topics"})
    index.save_classification(dataclasses.replace(stored, label_set=topics))
    for save_as in (None, "themes"):
        with pytest.raises(LabelSetError, match="is a topics set"):
            learn_from_table(index, "themes", table, "photo_id", "group", save_as=save_as)
    assert index.classification("themes").label_set.kind == "topics"


def test_web_set_names_are_bounded() -> None:
    from clipdex.web import app, learning

    assert learning.MAX_NAME == app.MAX_NAME


def test_web_learn_refuses_a_long_name(index: Index) -> None:
    from fastapi.testclient import TestClient

    from clipdex.web import create_app
    from clipdex.web.app import MAX_NAME

    client = TestClient(create_app(index), base_url="http://127.0.0.1:8000")
    for response in (client.get(f"/api/labels/{'a' * (MAX_NAME + 1)}/learning"),
                     client.post(f"/api/labels/{'a' * (MAX_NAME + 1)}/learn")):
        # refused by the path's validation (the app answers it 404, naming the parameter), not looked up
        assert response.status_code == 404 and "path parameter 'name'" in response.json()["error"]


def test_web_learn_computes_outside_the_index_lock(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from fastapi.testclient import TestClient

    import clipdex.learn
    from clipdex.web import create_app

    index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
    _correct(index, "scene", 3)
    free: list[bool] = []
    learn = clipdex.learn.learn_corrections

    def watched(*args: object, **kwargs: object) -> object:
        # another thread (a search, a correction) can take the index's lock while it learns
        result: list[bool] = []
        other = threading.Thread(target=lambda: result.append(index.lock.acquire(timeout=5) and
                                                              (index.lock.release() is None)))
        other.start()
        other.join()
        free.extend(result)
        return learn(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(clipdex.learn, "learn_corrections", watched)
    client = TestClient(create_app(index), base_url="http://127.0.0.1:8000")
    response = client.post("/api/labels/scene/learn")
    assert response.status_code == 200, response.text
    assert free == [True] and response.json()["learned"]["saved"]
    assert index.classification("scene-learned").label_set.kind == "learned"


def test_next_of_a_table_learned_set_leaves_out_photos_the_table_labels(
        index: Index, groups: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    folder, truth = groups
    half = dict(list(truth.items())[::2])  # the table labels every other photo
    table = write_table(tmp_path / "half.csv", half)
    learn_from_table(index, "scene", table, "photo_id", "group", min_rows=2, folds=2)
    labelled = {r.id for r in (index.store.file_by_path(str(folder / f"{pid}.jpg")) for pid in half) if r}
    unsure = least_sure(index, "scene", 50)
    assert unsure and not {u.file_id for u in unsure} & labelled  # their label is known: nothing to ask
    assert len(unsure) == len(truth) - len(half)
    table.unlink()  # the table gone: every photo is a candidate again
    assert len(least_sure(index, "scene", 50)) == len(truth)
