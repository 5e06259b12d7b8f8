"""Where a model's ONNX export comes from (clipdex.models.sources) and how the registry names it:
the order find_export tries its sources in, the references ``onnx:`` takes, the offline errors,
and where an int8 tower of someone else's export is written. Offline; no torch."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipdex.errors import ModelError, ModelUnavailable
from clipdex.models import onnx_export, sources
from clipdex.models.bundle import CONFIG, PREPROCESS, TEXTUAL, TOKENIZER, VISUAL, Export
from clipdex.models.registry import get_registry_entry, list_models, resolve_model
from clipdex.models.spec import ModelSpec
from tests.hf_checkpoints import cache_repo

REPO = "immich-app/ViT-B-32__openai"


def matmul_graph(path: Path, external: bool = False, size: int = 64) -> Path:
    """A one-MatMul ONNX graph (what the int8 recipe quantises), its weights inside it or in a file beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((size, size)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location="w.weight", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def hub_layout(folder: Path, external: bool = False) -> Path:
    """The files of the hub layout that tell a complete export (their contents are not read here)."""
    matmul_graph(folder / VISUAL, external)
    matmul_graph(folder / TEXTUAL, external)
    for name in (CONFIG, PREPROCESS, TOKENIZER):
        (folder / name).write_text("{}")
    return folder


def fake_export(root: Path, spec: ModelSpec, origin: str = "immich") -> Export:
    return Export(root=root, meta={"key": spec.key}, origin=origin, source=f"test {root}",
                  visual={"fp32": root / VISUAL}, text=root / TEXTUAL, tokenizer=root / TOKENIZER,
                  work=sources.work_dir(spec.key, root))


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> list[str]:
    """Which source find_export took: the cache's export and read_export record themselves."""
    taken: list[str] = []

    def cache_export(spec: ModelSpec, precision: str, exporter: Any) -> Export:
        taken.append("cache")
        return fake_export(Path("/cache"), spec, "cache")

    def read_export(root: Path, *, source: str, work: Path) -> Export:
        taken.append(f"read {source.split('@')[0]}")
        return Export(root=root, meta={"key": "ViT-B-32/openai"}, origin="immich", source=source,
                      visual={"fp32": root / VISUAL}, text=None, tokenizer=None, work=work)

    monkeypatch.setattr(onnx_export, "cache_export", cache_export)
    monkeypatch.setattr(onnx_export, "cached", lambda spec: False)
    monkeypatch.setattr(sources, "read_export", read_export)
    monkeypatch.setattr(sources, "_weights_here", lambda spec: False)
    return taken


def spec_with_source(onnx: str | None = REPO) -> ModelSpec:
    return ModelSpec(name="ViT-B-32", arch="ViT-B-32", pretrained="openai", onnx=onnx)


def exporter(spec: ModelSpec, work: Path) -> dict[str, Any]:  # never called: cache_export is a stand-in
    raise AssertionError("the stand-in cache_export does not export")


# -- the registry ---------------------------------------------------------------

def test_registry_names_immichs_exports_as_immich_spells_them() -> None:
    entry = get_registry_entry("ViT-B-32")
    assert entry is not None and entry.onnx == REPO
    assert entry.sources == f"ONNX: {REPO} · torch: open_clip ViT-B-32/openai"
    laion = get_registry_entry("laion-b32")
    assert laion is not None and laion.onnx == "immich-app/ViT-B-32__laion2b-s34b-b79k"  # Immich's hyphens
    assert get_registry_entry("ViT-B-16-datacomp").onnx is None  # type: ignore[union-attr]  # Immich has none
    for e in list_models():
        if e.onnx:
            arch, tag = e.onnx.split("/", 1)[1].split("__")
            assert arch == e.arch and tag.replace("-", "_") == e.pretrained, e.name
    assert get_registry_entry("siglip-base").sources == "torch: Transformers google/siglip-base-patch16-224"  # type: ignore[union-attr]


def test_a_registry_spec_carries_its_source_unless_local_weights_replace_it(tmp_path: Path) -> None:
    spec = resolve_model("clip")
    assert spec.onnx == REPO and spec.key == "ViT-B-32/openai"
    weights = tmp_path / "finetuned.pt"
    weights.write_bytes(b"not really")
    assert resolve_model("ViT-B-32", weights=weights).onnx is None  # other weights: Immich's export is not them


# -- references -------------------------------------------------------------------

@pytest.mark.parametrize("reference", ["/abs/export", "./export", "../export", "~/export", "C:\\exports\\b32",
                                       "C:/exports/b32", "exports\\b32", ".hidden"])
def test_paths_are_folders(reference: str) -> None:
    assert sources.is_folder_reference(reference)


def test_owner_name_is_a_folder_only_where_one_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert not sources.is_folder_reference("immich-app/ViT-B-32__openai")
    (tmp_path / "immich-app" / "ViT-B-32__openai").mkdir(parents=True)
    assert sources.is_folder_reference("immich-app/ViT-B-32__openai")
    assert sources.describe("immich-app/ViT-B-32__openai").startswith("folder ")


def test_repositories_may_pin_a_revision_and_nonsense_is_refused() -> None:
    assert sources.split_repo(REPO) == (REPO, None)
    assert sources.split_repo(f"{REPO}@0123abc") == (REPO, "0123abc")
    with pytest.raises(ModelError, match="neither a hub repository"):
        sources.split_repo("just-a-name")


def test_the_download_command_fetches_the_onnx_files_only() -> None:
    command = sources.download_command(f"{REPO}@abc")
    assert command.startswith(f"hf download {REPO} --revision abc --include clipdex.json")
    assert "--include 'visual/*'" in command and "--exclude '*.rknn'" in command


# -- complete or not ------------------------------------------------------------------

def test_a_cut_short_download_of_a_big_model_is_not_complete(tmp_path: Path) -> None:
    folder = hub_layout(tmp_path / "export", external=True)
    assert sources.export_complete(folder)
    (folder / "visual" / "w.weight").unlink()  # one of the files a big model's weights lie in
    assert sources.missing_external_data(folder / VISUAL) == ["w.weight"]
    assert not sources.export_complete(folder)
    whole = hub_layout(tmp_path / "inside")
    assert sources.missing_external_data(whole / VISUAL) == []  # weights inside the graph
    (whole / TOKENIZER).unlink()
    assert not sources.export_complete(whole)


def test_only_a_complete_cached_snapshot_counts(tmp_path: Path, hub_cache: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / CONFIG).write_text("{}")  # what resolving onnx:REPO fetches first
    cache_repo(hub_cache, REPO, partial)
    assert sources.cached_snapshot(REPO) is None
    assert sources.cached_snapshot(REPO, complete=False) is not None
    assert sources.cached_snapshot("immich-app/not-cached", complete=False) is None


# -- the order -------------------------------------------------------------------------

def test_clipdexs_own_export_wins_over_a_cached_hub_export(calls: list[str], hub_cache: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cache_repo(hub_cache, REPO, hub_layout(tmp_path / "immich"))
    monkeypatch.setattr(onnx_export, "cached", lambda spec: True)
    assert sources.find_export(spec_with_source(), "fp32", None).origin == "cache"
    assert calls == ["cache"]


def test_a_cached_ready_export_wins_over_exporting_local_weights(calls: list[str], hub_cache: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_weights_here", lambda spec: True)
    assert sources.find_export(spec_with_source(), "fp32", exporter).origin == "cache"  # not cached: export here
    cache_repo(hub_cache, REPO, hub_layout(tmp_path / "immich"))
    export = sources.find_export(spec_with_source(), "fp32", exporter)
    assert calls == ["cache", f"read hub {REPO}"]
    assert export.work.is_relative_to(Path(os.environ["CLIPDEX_HOME"]))  # derived files: clipdex's cache


def test_local_weights_win_over_a_download(calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_weights_here", lambda spec: True)
    monkeypatch.setattr(sources, "download_export", lambda *a, **k: pytest.fail("downloaded"))
    assert sources.find_export(spec_with_source(), "fp32", exporter).origin == "cache"


def test_without_torch_or_a_ready_export_the_error_says_what_to_install(calls: list[str]) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        sources.find_export(spec_with_source(None), "fp32", None)
    message = str(caught.value)
    assert "pip install 'clipdex[torch]'" in message and "--model onnx:/path/to/export" in message
    assert "clipdex models export" in message and calls == []


def test_offline_with_nothing_cached_fails_at_once_naming_the_repo(calls: list[str]) -> None:
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        sources.find_export(spec_with_source(), "fp32", None)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and f"hf download {REPO}" in message and "clipdex[torch]" in message


def test_download_false_downloads_nothing(calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "download_export", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(ModelUnavailable, match="not downloaded yet"):
        sources.find_export(spec_with_source(), "fp32", exporter, download=False)


def test_with_torch_a_missing_hub_export_falls_back_to_exporting(calls: list[str], monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    def missing(reference: str, model: str, *, download: bool = True) -> Path:
        raise ModelUnavailable(model, reference, "download failed: 404", "")

    monkeypatch.setattr(sources, "download_export", missing)
    import clipdex.models.network as network

    monkeypatch.setattr(network, "require_hub", lambda *a, **k: None)
    assert sources.find_export(spec_with_source(), "fp32", exporter).origin == "cache"
    with pytest.raises(ModelUnavailable, match="404"):
        sources.find_export(spec_with_source(), "fp32", None)


def test_a_ready_export_of_another_model_is_refused(calls: list[str], hub_cache: Path, tmp_path: Path) -> None:
    cache_repo(hub_cache, REPO, hub_layout(tmp_path / "immich"))
    other = ModelSpec(name="ViT-B-32-laion2b", arch="ViT-B-32", pretrained="laion2b_s34b_b79k", onnx=REPO)
    with pytest.raises(ModelError, match="of another model"):
        sources.find_export(other, "fp32", None)


# -- int8 of someone else's export ------------------------------------------------------------

def test_int8_of_a_folder_export_goes_to_clipdexs_cache_never_the_folder(tmp_path: Path) -> None:
    folder = hub_layout(tmp_path / "users-export")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    spec = ModelSpec(name="onnx:x", arch="onnx", weights=str(folder), family="onnx", identity="ViT-B-32/openai")
    export = fake_export(folder, spec, "clipdex")
    os.chmod(folder / "visual", 0o555)  # a folder the user may not even let clipdex write
    try:
        tower = sources.int8_tower(export)
    finally:
        os.chmod(folder / "visual", 0o755)
    assert tower.is_file() and tower.parent == export.work
    assert export.work.is_relative_to(Path(os.environ["CLIPDEX_HOME"]))
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert sources.int8_tower(export) == tower  # once
    assert sources.work_dir(spec.key, folder) != sources.work_dir(spec.key, tmp_path / "another")


def test_check_available_answers_as_find_export_would_without_fetching(calls: list[str], hub_cache: Path,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="clipdex\\[torch\\]"):
        sources.check_available(spec_with_source(None), None)
    with pytest.raises(ModelUnavailable, match=f"hf download {REPO}"):
        sources.check_available(spec_with_source(), None)  # offline, nothing cached: at once
    cache_repo(hub_cache, REPO, hub_layout(tmp_path / "immich"))
    sources.check_available(spec_with_source(), None)
    folder = ModelSpec(name="onnx:x", arch="onnx", weights=str(tmp_path / "gone"), family="onnx", identity="k")
    with pytest.raises(ModelError, match="is gone"):
        sources.check_available(folder, None)
    assert calls == []  # nothing read, exported or downloaded
