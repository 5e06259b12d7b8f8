"""A model's identity over an index's life: weights changed in place, a checkpoint moved, a
sigmoid model recorded without its bias, and how messages name models."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from clipdex import Index
from clipdex.errors import ModelError, ModelMismatch, UnknownModel
from clipdex.labels import make_label_set
from clipdex.models.registry import resolve_model
from clipdex.store.catalog import CATALOG_NAME
from tests.hf_checkpoints import write_clip


def test_weights_changed_in_place_are_refused_not_mixed(tmp_path: Path, photos: Path, hf_clip_dir: Path) -> None:
    """A Trainer writing new weights into the same output folder: the index built with the old
    ones says so instead of filing new vectors under the old key."""
    folder = tmp_path / "run"
    shutil.copytree(hf_clip_dir, folder)
    with Index.open(tmp_path / "idx", create=True, model=f"hf:{folder}") as index:
        index.add(photos)
    write_clip(folder, seed=7)  # new weights, same folder
    with Index.open(tmp_path / "idx") as index, pytest.raises(ModelError) as caught:
        index.search("dog", k=1)
    message = str(caught.value)
    assert f"the weights at {folder} changed since index" in message
    assert f"clipdex index PHOTO_DIR --model hf:{folder} --add-model" in message
    with Index.open(tmp_path / "idx", model=f"hf:{folder}") as index, pytest.raises(ModelMismatch) as mismatch:
        index.search("dog", k=1)
    assert f"hf:{folder} (hf@sha256:" in str(mismatch.value)  # names, not only keys


def test_a_moved_checkpoint_is_recorded_under_its_new_name(tmp_path: Path, photos: Path, hf_clip_dir: Path) -> None:
    old, new = tmp_path / "clip-a", tmp_path / "clip-b"
    shutil.copytree(hf_clip_dir, old)
    with Index.open(tmp_path / "idx", create=True, model=f"hf:{old}") as index:
        index.add(photos)
    old.rename(new)
    with Index.open(tmp_path / "idx") as index, pytest.raises(ModelError, match="pass --model hf:/its/new/folder"):
        index.search("dog", k=1)
    with Index.open(tmp_path / "idx", model=f"hf:{new}") as index:
        report = index.add(photos)
        assert report.encoded == 0  # the same weights: nothing encoded again
        [model] = index.status().models
        assert model.name == f"hf:{new}"
    with Index.open(tmp_path / "idx") as index:
        assert index.search("dog", k=1)


def test_a_sigmoid_model_recorded_without_its_bias_gets_it_when_it_classifies(
        tmp_path: Path, photos: Path, hf_siglip_dir: Path) -> None:
    """An index from before biases were kept (or an import without the weights at hand)."""
    with Index.open(tmp_path / "idx", create=True, model=f"hf:{hf_siglip_dir}") as index:
        index.add(photos)
        bias = index.model_record().logit_bias
    assert bias is not None
    with sqlite3.connect(tmp_path / "idx" / CATALOG_NAME) as conn:
        conn.execute("UPDATE models SET logit_bias = NULL")
    label_set = make_label_set("taken_time", ["dawn", "dusk"], ["a photo taken at {}"])
    with Index.open(tmp_path / "idx") as index:
        [result] = index.classify([label_set])
        assert result.scoring == "sigmoid"
        assert index.model_record().logit_bias == pytest.approx(bias)


def test_a_transformers_name_without_hf_is_told_to_add_it(tmp_path: Path, hf_clip_dir: Path) -> None:
    with pytest.raises(UnknownModel, match=r"say so: --model hf:openai/clip-vit-base-patch32"):
        _build_config("openai/clip-vit-base-patch32")
    with pytest.raises(UnknownModel, match=rf"say so: --model hf:{hf_clip_dir}"):
        resolve_model(str(hf_clip_dir))
    with pytest.raises(UnknownModel) as typo:
        _build_config("ViT-B-32/not-a-tag")
    assert "hf:" not in str(typo.value).split("Known names")[0]  # an open_clip typo gets no such hint


def _build_config(name: str) -> None:
    from clipdex.models.weights import pretrained_config

    pretrained_config(resolve_model(name))


def test_without_transformers_nothing_is_created(tmp_path: Path, photos: Path, hf_clip_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from tests.conftest import run_cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    result = run_cli("index", str(photos), "--index", str(tmp_path / "idx"), "--model", f"hf:{hf_clip_dir}",
                     catch_exceptions=True)
    assert result.exit_code == 1
    assert "needs the transformers package, which is not installed" in result.output
    assert "pip install 'clipdex[hf]'" in result.output
    assert not (tmp_path / "idx").exists()


def test_a_model_that_cannot_be_built_leaves_no_index_behind(tmp_path: Path, photos: Path,
                                                            hf_clip_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    from tests.conftest import run_cli

    folder = tmp_path / "wrapped"
    shutil.copytree(hf_clip_dir, folder)
    save_file({f"model.{k}": v for k, v in load_file(folder / "model.safetensors").items()},
              folder / "model.safetensors")
    result = run_cli("index", str(photos), "--index", str(tmp_path / "idx"), "--model", f"hf:{folder}",
                     catch_exceptions=True)
    assert result.exit_code == 1 and "do not fit its CLIPModel" in result.output
    assert not (tmp_path / "idx").exists()
    existing = run_cli("index", str(photos), "--index", str(tmp_path / "kept"), "--model", f"hf:{hf_clip_dir}")
    assert existing.exit_code == 0
    again = run_cli("index", str(photos), "--index", str(tmp_path / "kept"), "--model", f"hf:{folder}",
                    "--add-model", catch_exceptions=True)
    assert again.exit_code == 1 and (tmp_path / "kept" / CATALOG_NAME).exists()  # an index it did not create


def test_a_damaged_export_says_what_to_delete(tmp_path: Path, hf_clip_dir: Path) -> None:
    from clipdex.models.factory import make_encoder
    from clipdex.models.onnx_export import export_dir

    spec = resolve_model(f"hf:{hf_clip_dir}")
    make_encoder(spec, device="cpu").load()
    (export_dir(spec) / "visual-fp32.onnx").write_bytes(b"cut short")
    with pytest.raises(ModelError, match=r"is damaged: .*visual-fp32\.onnx cannot be read .* Delete .* and it is "
                                         r"exported again"):
        make_encoder(spec, device="cpu").load()


def test_review_evaluate_and_their_messages_follow_the_model_asked_for(tmp_path: Path, photos: Path,
                                                                       hf_clip_dir: Path, hf_siglip_dir: Path) -> None:
    """Each model of an index keeps its own results: review and evaluate read the one --model names."""
    from tests.conftest import run_cli

    index = str(tmp_path / "idx")
    clip, siglip = f"hf:{hf_clip_dir}", f"hf:{hf_siglip_dir}"
    assert run_cli("index", str(photos), "--index", index, "-m", clip).exit_code == 0
    assert run_cli("index", str(photos), "--index", index, "-m", siglip, "--add-model").exit_code == 0
    ran = run_cli("classify", "--index", index, "-m", siglip, "--name", "tod", "--labels", "dawn,dusk",
                  "--template", "a photo at {}")
    assert ran.exit_code == 0 and "per-label sigmoid" in ran.output
    missing = run_cli("review", "tod", "--grid", str(tmp_path / "g.png"), "--index", index, catch_exceptions=True)
    assert missing.exit_code == 1
    assert f"has not been run with {clip}" in missing.output and f"--model {siglip}" in missing.output
    review = run_cli("review", "tod", "--grid", str(tmp_path / "g.png"), "--index", index, "-m", siglip)
    assert review.exit_code == 0 and f"tod ({siglip})" in review.output
    table = tmp_path / "truth.csv"
    names = sorted(p.name for p in photos.rglob("*") if p.suffix in (".jpg", ".png"))
    table.write_text("photo,tod\n" + "".join(f"{n},{('dawn', 'dusk')[i % 2]}\n" for i, n in enumerate(names)))
    evaluated = run_cli("evaluate", "tod", "--index", index, "-m", siglip, "--metadata", str(table),
                        "--key", "photo", "--json")
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["model"] == siglip
