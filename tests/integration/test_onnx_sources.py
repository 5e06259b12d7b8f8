"""Ready ONNX exports as model sources, with the tiny model (tests/onnx_layouts.py) written as
Immich's exporter writes it and laid into an offline Hugging Face cache: a registry-like model
with an ``onnx`` source runs from it without torch; ``--model onnx:owner/repo`` and
``--model onnx:DIR`` resolve to the model it was exported from; ``clipdex models export`` writes
a folder that indexes and searches, in the same index as the model's own vectors; int8 of
someone else's export is written into clipdex's cache. Offline throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipdex.errors import ModelError, ModelUnavailable
from clipdex.models import sources
from clipdex.models.registry import resolve_model
from clipdex.models.spec import ModelSpec
from tests.conftest import run_cli
from tests.hf_checkpoints import cache_repo
from tests.onnx_layouts import TINY_CONFIG, TINY_NAME, write_immich_export

TAG = "tinytag"
REPO = f"immich-app/{TINY_NAME}__{TAG}"  # Immich's ARCH__TAG naming: the tiny model as ARCH/TAG
KEY = f"{TINY_NAME}/{TAG}"


@pytest.fixture(scope="module")
def immich_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Path]) -> Path:
    """The tiny model in Immich's layout (a folder named as its repository is)."""
    return write_immich_export(tiny_model, tmp_path_factory.mktemp("immich") / f"{TINY_NAME}__{TAG}")


@pytest.fixture()
def cached_repo(hub_cache: Path, immich_tiny: Path) -> Path:
    """The Immich export of the tiny model in the offline Hugging Face cache, as ``REPO``."""
    return cache_repo(hub_cache, REPO, immich_tiny)


def snapshot_files(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


def test_a_registry_model_runs_from_its_cached_ready_export_without_torch(cached_repo: Path) -> None:
    spec = ModelSpec(name="tiny", arch=TINY_NAME, pretrained=TAG, onnx=REPO)
    export = sources.find_export(spec, "fp32", None)  # exporter None: as where torch is not installed
    assert export.origin == "immich" and export.source.startswith(f"hub {REPO}@")
    assert export.visual["fp32"].is_relative_to(cached_repo)
    assert export.work.is_relative_to(Path(os.environ["CLIPDEX_HOME"]))


def test_onnx_owner_repo_resolves_from_the_cache_as_the_model_it_was_exported_from(cached_repo: Path) -> None:
    spec = resolve_model(f"onnx:{REPO}")
    assert (spec.family, spec.pretrained, spec.onnx, spec.key) == ("onnx", REPO, REPO, KEY)
    assert sources.find_export(spec, "fp32", None).origin == "immich"
    with pytest.raises(ModelError, match="Drop --weights"):
        resolve_model(f"onnx:{REPO}", weights=__file__)


def test_onnx_of_a_folder_named_as_immich_names_it(immich_tiny: Path) -> None:
    spec = resolve_model(f"onnx:{immich_tiny}")
    assert (spec.family, spec.weights, spec.key) == ("onnx", str(immich_tiny), KEY)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(f"onnx:{immich_tiny}-gone")


def test_offline_with_nothing_cached_fails_in_seconds_naming_the_repo(hub_cache: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as resolving:
        resolve_model("onnx:someone/not-cached")
    with pytest.raises(ModelUnavailable) as finding:
        sources.find_export(ModelSpec(name="tiny", arch=TINY_NAME, pretrained=TAG, onnx="someone/not-cached"),
                            "fp32", None)
    assert time.monotonic() - started < 5
    for caught in (resolving, finding):
        assert "someone/not-cached" in str(caught.value) and "hf download someone/not-cached" in str(caught.value)


def test_int8_of_a_ready_export_goes_to_clipdexs_cache(immich_tiny: Path) -> None:
    before = snapshot_files(immich_tiny)
    export = sources.find_export(resolve_model(f"onnx:{immich_tiny}"), "int8", None)
    assert export.visual["int8"].is_file() and export.visual["int8"].parent == export.work
    assert export.work.is_relative_to(Path(os.environ["CLIPDEX_HOME"]))
    assert snapshot_files(immich_tiny) == before


def test_models_export_writes_a_folder_that_indexes_and_searches(tmp_path: Path, photos: Path, model_args: list[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "tiny-export"
    exported = run_cli("models", "export", TINY_NAME, str(dest), *model_args)
    assert exported.exit_code == 0, exported.output
    assert "clipdex.json" in exported.output and "hf upload OWNER/REPO" in exported.output
    assert f"--model onnx:{dest}" in exported.output and "--model onnx:OWNER/REPO" in exported.output
    key = json.loads((dest / "clipdex.json").read_text())["key"]
    assert resolve_model(f"onnx:{dest}").key == key == resolve_model(None, **dict(zip(
        ("model_config", "weights"), model_args[1::2]))).key  # type: ignore[arg-type]

    monkeypatch.setenv("CLIPDEX_HOME", str(tmp_path / "another-machine"))  # no cache export: the folder is read
    assert sources.find_export(resolve_model(f"onnx:{dest}"), "fp32", None).origin == "clipdex"
    index = str(tmp_path / "idx")
    indexed = run_cli("index", str(photos), "--index", index, "--model", f"onnx:{dest}")
    assert indexed.exit_code == 0, indexed.output
    found = run_cli("search", "a photo", "--index", index, "--model", f"onnx:{dest}", "--json")
    assert found.exit_code == 0, found.output
    by_export = json.loads(found.output)
    assert len(by_export["results"]) == 10  # the default limit, of the 12 photos
    # The same model: its own weights search the index the export made.
    again = run_cli("search", "a photo", "--index", index, *model_args, "--json")
    assert again.exit_code == 0, again.output
    by_weights = json.loads(again.output)["results"]
    assert [r["path"] for r in by_weights] == [r["path"] for r in by_export["results"]]
    assert np.allclose([r["score"] for r in by_weights], [r["score"] for r in by_export["results"]], atol=1e-4)

    refused = run_cli("models", "export", TINY_NAME, str(photos), *model_args)
    assert refused.exit_code == 1 and "is not an earlier ONNX export by clipdex" in refused.output


def test_models_list_says_where_each_model_comes_from_and_what_is_here(hub_cache: Path, immich_tiny: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cache_repo(hub_cache, "immich-app/ViT-B-32__openai", immich_tiny)  # a stand-in: only its presence is read
    rows = {r["name"]: r for r in json.loads(run_cli("models", "list", "--json").output)}
    b32 = rows["ViT-B-32"]
    assert b32["onnx"] == "immich-app/ViT-B-32__openai" and b32["cached"]["onnx"] is True
    assert b32["sources"] == "ONNX: immich-app/ViT-B-32__openai · torch: open_clip ViT-B-32/openai"
    assert rows["ViT-B-16"]["cached"]["onnx"] is False and rows["ViT-B-16-datacomp"]["onnx"] is None
    monkeypatch.setenv("COLUMNS", "160")  # a terminal wide enough not to fold the repositories' names
    shown = run_cli("models", "list").output
    b32_line = next(line for line in shown.splitlines() if "ViT-B-32 (default)" in line)
    assert "ONNX: immich-app/ViT-B-32__openai" in b32_line and "ONNX" in b32_line.split("__openai")[1]
    assert np.all([isinstance(r["cached"]["export"], bool) for r in rows.values()])


def test_a_cold_search_from_a_cached_hub_export_does_not_import_onnx(cached_repo: Path, hub_cache: Path,
                                                                    tmp_path: Path, photos: Path) -> None:
    """Each cold process asks whether the cached snapshot is complete (its towers' external data):
    answered without onnx, whose import alone costs a search 0.1 s."""
    index = str(tmp_path / "idx")
    indexed = run_cli("index", str(photos), "--index", index, "--model", f"onnx:{REPO}")
    assert indexed.exit_code == 0, indexed.output
    env = dict(os.environ, HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "clipdex", "search", "a dog", "--index", index,
                           "-n", "3", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(json.loads(done.stdout)["results"]) == 3
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported and "huggingface_hub" in imported  # the listing is read right
    assert not sorted(name for name in imported if name.partition(".")[0] == "onnx")


def _embeddings(index: str, folder: Path) -> list[tuple[str, bytes]]:
    exported = run_cli("export", str(folder), "--index", index)
    assert exported.exit_code == 0, exported.output
    assert json.loads((folder / "clipdex.json").read_text())["format"] == "clipdex-export"
    return sorted((str(p.relative_to(folder)), p.read_bytes()) for p in folder.rglob("*") if p.is_file())


def test_models_export_never_replaces_a_clipdex_export_of_embeddings(tmp_path: Path, cli_index: str,
                                                                     model_args: list[str]) -> None:
    """`clipdex export DIR` writes a clipdex.json too: `clipdex models export NAME DIR` refuses that
    folder before exporting anything, says what is there, and leaves it as it was."""
    folder = tmp_path / "embeddings"
    before = _embeddings(cli_index, folder)
    refused = run_cli("models", "export", TINY_NAME, str(folder), *model_args)
    assert refused.exit_code == 1
    message = " ".join(refused.output.split())
    assert "is not an earlier ONNX export by clipdex" in message, message
    assert "embeddings written by `clipdex export`" in message and "img_emb/, metadata/" in message
    assert "Nothing in it was touched" in message and "new or empty folder" in message
    assert sorted((str(p.relative_to(folder)), p.read_bytes()) for p in folder.rglob("*") if p.is_file()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_models_export_writes_open_clips_full_config(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    """config.json is open_clip's model config, as Immich writes it, for a model named by its
    architecture (not only for one given by --model-config)."""
    import open_clip

    _, weights = tiny_model
    dest = tmp_path / "out"
    done = run_cli("models", "export", TINY_NAME, str(dest), "--weights", str(weights))
    assert done.exit_code == 0, done.output
    written = json.loads((dest / "config.json").read_text())
    assert written == open_clip.get_model_config(TINY_NAME) == json.loads(TINY_CONFIG.read_text())


def test_models_export_without_torch_says_what_to_install_unless_the_export_is_here(
        tmp_path: Path, tiny_model: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch and open_clip (as a light install: clipdex.models.optional says they are not
    installed), `clipdex models export` says to install them, and what runs without; where
    clipdex's own export of the model is already in its cache, it is written out without them."""
    from clipdex.models import optional

    _, weights = tiny_model
    installed = optional.installed
    blocked = {"on": True}
    monkeypatch.setattr(optional, "installed", lambda name: installed(name) and not (
        blocked["on"] and name.partition(".")[0] in ("torch", "open_clip")))
    dest = tmp_path / "out"
    refused = run_cli("models", "export", TINY_NAME, str(dest), "--weights", str(weights))
    assert refused.exit_code == 1
    message = " ".join(refused.output.split())
    assert (f"clipdex models export needs torch and open_clip to export {TINY_NAME} "
            "(pip install 'clipdex[torch]')") in message, message
    assert "runs here without it" in message and "onnx:DIR" not in message
    assert not dest.exists()
    registry = " ".join(run_cli("models", "export", "ViT-B-32", str(dest)).output.split())
    assert ("ViT-B-32 already has a ready export, hub repository immich-app/ViT-B-32__openai: this install runs "
            "it as --model ViT-B-32") in registry, registry

    blocked["on"] = False  # exported once where torch is installed ...
    first = run_cli("models", "export", TINY_NAME, str(tmp_path / "first"), "--weights", str(weights))
    assert first.exit_code == 0, first.output
    blocked["on"] = True  # ... the cache's export is written out without it
    again = run_cli("models", "export", TINY_NAME, str(dest), "--weights", str(weights))
    assert again.exit_code == 0, again.output
    for name in ("visual/model.onnx", "textual/model.onnx", "textual/tokenizer.json", "clipdex.json"):
        assert (dest / name).read_bytes() == (tmp_path / "first" / name).read_bytes(), name
    config = json.loads((dest / "config.json").read_text())  # no open_clip here: the facts a reader takes
    assert config == {"embed_dim": 32, "vision_cfg": {"image_size": 64}, "text_cfg": {"context_length": 77}}
