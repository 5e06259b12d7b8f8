"""The hub layout's reader and writer (clipdex.models.bundle) on hand-made folders, CLIP's BPE as a
tokenizer.json (clipdex.models.clip_bpe) against open_clip's tokenizer, and the text cleaning of
HfTokenizer against open_clip's. Real exports of the tiny model: tests/integration/test_export_layouts.py."""

from __future__ import annotations

import html
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipdex.errors import ModelError
from clipdex.models import bundle
from clipdex.models.bundle import Export, identity_of, read_export, write_export

PRE = {"size": [64, 64], "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
       "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest",
       "fill_color": 0}
CONFIG = {"embed_dim": 8, "vision_cfg": {"image_size": 64}, "text_cfg": {"context_length": 7, "vocab_size": 10}}


def _graph(path: Path, input_name: str, elem: int, shape: list[Any], output: str) -> None:
    """A tiny ONNX graph standing in for a tower: the input reduced to 8 numbers (shape is what matters)."""
    import onnx
    from onnx import TensorProto, helper

    cast = helper.make_node("Cast", [input_name], ["f"], to=TensorProto.FLOAT)
    flat = helper.make_node("Flatten", ["f"], ["flat"], axis=1)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8], np.linspace(0, 1, 8, dtype=np.float32).tobytes(),
                                raw=True)
    reduce = helper.make_node("ReduceMean", ["flat"], ["m"], axes=[1], keepdims=1)
    mul = helper.make_node("Mul", ["m", "w"], [output])
    graph = helper.make_graph([cast, flat, reduce, mul], "tower",
                              [helper.make_tensor_value_info(input_name, elem, shape)],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], [weight])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _word_tokenizer(path: Path, pad: str = "<|endoftext|>") -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|startoftext|>": 0, pad: 1, "[UNK]": 2, "a": 3, "photo": 4, "dog": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tokenizer.save(str(path))


def immich_folder(root: Path, *, dynamic: bool = False, config: dict[str, Any] | None = None,
                  pre: dict[str, Any] | None = None, pad: Any = "<|endoftext|>") -> Path:
    """A folder in Immich's layout with tiny stand-in towers (``dynamic``: the older exporter's batch axis)."""
    from onnx import TensorProto

    (root / "visual").mkdir(parents=True)
    (root / "textual").mkdir()
    batch: Any = "batch_size" if dynamic else 1
    _graph(root / bundle.VISUAL, "image", TensorProto.FLOAT, [batch, 3, 64, 64],
           "image_embedding" if dynamic else "embedding")
    _graph(root / bundle.TEXTUAL, "text", TensorProto.INT32, [batch, 7], "text_embedding" if dynamic else "embedding")
    _word_tokenizer(root / bundle.TOKENIZER)
    (root / bundle.TOKENIZER_CONFIG).write_text(json.dumps({"pad_token": pad, "model_max_length": 7}))
    (root / bundle.PREPROCESS).write_text(json.dumps(pre or PRE))
    (root / bundle.CONFIG).write_text(json.dumps(config or CONFIG))
    return root


def test_immich_layout_facts(tmp_path: Path) -> None:
    root = immich_folder(tmp_path / "ViT-B-32__openai")
    export = read_export(root, source=f"folder {root}", work=tmp_path / "work")
    assert export.origin == "immich"
    assert export.visual == {"fp32": root / "visual/model.onnx"}
    assert export.text == root / "textual/model.onnx" and export.tokenizer == root / "textual/tokenizer.json"
    meta = export.meta
    assert {k: meta[k] for k in ("dim", "image_size", "mean", "std", "interpolation", "resize_mode")} == {
        "dim": 8, "image_size": 64, "mean": PRE["mean"], "std": PRE["std"], "interpolation": "bicubic",
        "resize_mode": "shortest"}
    assert meta["crop_rounding"] == "round" and meta["resize_size"] is None
    assert meta["logit_scale"] == 100.0 and meta["logit_bias"] is None and "logit_scale_assumed" not in meta
    assert "scoring_unknown" not in meta
    assert (meta["tokenizer"], meta["context_length"], meta["text_padding"]) == ("tokenizers", 7, "max_length")
    assert (meta["pad_token"], meta["pad_id"], meta["text_inputs"]) == ("<|endoftext|>", 1, ["input_ids"])
    assert meta["trim_tokens"] is False and meta["text_clean"] == "whitespace"
    assert export.pixel_input == bundle.PIXELS_FLOAT_NCHW
    # The feed is open_clip's normalisation, channels first.
    pixels = np.full((1, 64, 64, 3), 255, np.uint8)
    feed = export.pixel_feed(pixels)
    assert feed.shape == (1, 3, 64, 64) and feed.dtype == np.float32
    np.testing.assert_allclose(feed[0, :, 0, 0], (1 - np.array(PRE["mean"])) / np.array(PRE["std"]), rtol=1e-5)


def test_older_dynamic_batch_export_and_int_size(tmp_path: Path) -> None:
    """The first exporter's graphs (batch axis 'batch_size', other output names), a size written
    as one number, a pad token saved as an AddedToken: read all the same."""
    import onnxruntime as ort

    pre = {**PRE, "size": 64}
    root = immich_folder(tmp_path / "old", dynamic=True, pre=pre, pad={"content": "<|endoftext|>", "special": True})
    export = read_export(root, source="folder", work=tmp_path)
    assert export.meta["image_size"] == 64 and export.meta["pad_id"] == 1
    session = ort.InferenceSession(str(export.visual["fp32"]), providers=["CPUExecutionProvider"])
    (vectors,) = session.run(None, {"image": export.pixel_feed(np.zeros((2, 64, 64, 3), np.uint8))})
    assert vectors.shape[0] == 2


def test_siglip_export_says_its_scoring_is_unknown(tmp_path: Path) -> None:
    config = {**CONFIG, "init_logit_bias": -10,
              "text_cfg": {"context_length": 7, "tokenizer_kwargs": {"clean": "canonicalize"}}}
    root = immich_folder(tmp_path / "ViT-B-16-SigLIP__webli", config=config, pre={**PRE, "resize_mode": "squash"})
    meta = read_export(root, source="folder", work=tmp_path).meta
    assert meta["scoring_unknown"] is True and meta["logit_bias"] is None
    assert meta["text_clean"] == "canonicalize" and meta["resize_mode"] == "squash"
    # Named SigLIP without the config's marker: the same.
    plain = immich_folder(tmp_path / "x", config=CONFIG)
    assert read_export(plain, source="hub immich-app/ViT-B-16-SigLIP2__webli@abc", work=tmp_path).meta[
        "scoring_unknown"] is True


def test_only_the_config_and_the_exports_own_name_say_siglip(tmp_path: Path) -> None:
    """A CLIP export kept under a folder (or cache) whose path says siglip is CLIP; a SigLIP config
    says so by its tokenizer even without init_logit_bias; CLIPA's text tower (last-token pooling,
    no causal mask) is a softmax CLIP's."""
    def marked(root: Path, source: str) -> bool:
        return bool(read_export(root, source=source, work=tmp_path).meta.get("scoring_unknown"))

    clip = immich_folder(tmp_path / "siglip-tests" / "ViT-B-32__openai")
    assert not marked(clip, f"folder {clip} (stamp)")
    assert not marked(clip, "hub someone/ViT-B-32__openai@refs-siglip")
    tokenizer = {**CONFIG, "text_cfg": {"context_length": 7, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP2"}}
    assert marked(immich_folder(tmp_path / "a", config=tokenizer), "folder a")
    clipa = {**CONFIG, "text_cfg": {"context_length": 7, "pool_type": "last", "no_causal_mask": True}}
    assert not marked(immich_folder(tmp_path / "ViT-L-14-CLIPA__datacomp1b", config=clipa), "folder x")
    assert marked(immich_folder(tmp_path / "ViT-B-16-SigLIP__webli"), "folder y")


@pytest.mark.parametrize(("damage", "file", "what"), [
    (lambda r: (r / "config.json").unlink(), "config.json", "has no config.json"),
    (lambda r: (r / "visual/model.onnx").unlink(), "visual/model.onnx", "has no visual/model.onnx"),
    (lambda r: (r / "textual/model.onnx").write_bytes(b""), "textual/model.onnx", "empty"),
    (lambda r: (r / "visual/preprocess_cfg.json").write_text("{"), "visual/preprocess_cfg.json", "not readable JSON"),
    (lambda r: (r / "textual/tokenizer.json").write_text("{}"), "textual/tokenizer.json", "cannot load"),
    (lambda r: (r / "textual/tokenizer_config.json").write_text('{"pad_token": "<pad>"}'),
     "textual/tokenizer_config.json", "not in"),
    (lambda r: (r / "textual/tokenizer_config.json").write_text("{}"), "textual/tokenizer_config.json", "pad_token"),
    (lambda r: (r / "config.json").write_text("[]"), "config.json", "not a JSON object"),
    (lambda r: (r / "config.json").write_text('{"embed_dim": 8}'), "config.json", "open_clip model config"),
    (lambda r: (r / "visual/preprocess_cfg.json").write_text('{"size": 64}'), "visual/preprocess_cfg.json", "mean"),
])
def test_missing_or_damaged_files_say_which_and_what_to_do(tmp_path: Path, damage: Any, file: str,
                                                           what: str) -> None:
    root = immich_folder(tmp_path / "ViT-B-32__openai")
    damage(root)
    with pytest.raises(ModelError) as error:
        read_export(root, source=f"folder {root}", work=tmp_path)
    message = str(error.value)
    assert str(root) in message and file in message and what in message
    assert "hf download immich-app/ViT-B-32__openai --include" in message  # the ONNX files only
    assert "--exclude '*.rknn'" in message and message.endswith(f"--local-dir {root}.")
    with pytest.raises(ModelError, match="hf download immich-app/ViT-B-32__openai "):
        read_export(root, source="hub immich-app/ViT-B-32__openai@0123abc", work=tmp_path)


def test_missing_folder_and_clipdex_manifest_problems(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        read_export(tmp_path / "nowhere", source="folder", work=tmp_path)
    root = immich_folder(tmp_path / "mine")
    (root / "clipdex.json").write_text(json.dumps({"format": 99, "key": "k"}))
    with pytest.raises(ModelError, match=r"newer clipdex.*Upgrade"):
        read_export(root, source="folder", work=tmp_path)
    (root / "clipdex.json").write_text(json.dumps({"format": 1, "key": "k", "name": "ViT-X"}))
    with pytest.raises(ModelError, match=r"clipdex\.json cannot be used \(it lacks dim.*clipdex models export ViT-X"):
        read_export(root, source="folder", work=tmp_path)
    (root / "clipdex.json").write_text("not json")
    with pytest.raises(ModelError, match=r"clipdex\.json cannot be used"):
        read_export(root, source="folder", work=tmp_path)


def _manifest(**changes: Any) -> dict[str, Any]:
    facts = {"format": 1, "key": "ViT-B-32/openai", "name": "ViT-B-32", "family": "open_clip", "clipdex": "0.1.0",
             "dim": 8, "image_size": 64, "mean": PRE["mean"], "std": PRE["std"], "interpolation": "bicubic",
             "resize_mode": "shortest", "crop_rounding": "round", "resize_size": None, "logit_scale": 100.0,
             "logit_bias": None, "tokenizer": "tokenizers", "context_length": 7, "text_padding": "longest",
             "pad_id": 1, "pad_token": "<|endoftext|>", "text_inputs": ["input_ids"], "trim_tokens": True,
             "text_clean": "whitespace", "pixel_input": "uint8-nhwc"}
    return {**facts, **changes}


def test_clipdex_layout_facts_are_its_manifest(tmp_path: Path) -> None:
    root = immich_folder(tmp_path / "export")
    (root / "clipdex.json").write_text(json.dumps(_manifest()))
    export = read_export(root, source="folder", work=tmp_path)
    assert export.origin == "clipdex" and export.pixel_input == bundle.PIXELS_UINT8_NHWC
    assert export.meta == {k: v for k, v in _manifest().items() if k not in ("format", "clipdex")}


def test_identity(tmp_path: Path) -> None:
    immich = immich_folder(tmp_path / "ViT-B-32__laion2b-s34b-b79k")
    assert identity_of(immich, str(immich)) == "ViT-B-32/laion2b_s34b_b79k"
    assert identity_of(immich, "immich-app/ViT-B-16-SigLIP__webli") == "ViT-B-16-SigLIP/webli"
    mine = immich_folder(tmp_path / "mine")
    (mine / "clipdex.json").write_text(json.dumps(_manifest(key="RN50/openai")))
    assert identity_of(mine, "immich-app/ViT-B-32__openai") == "RN50/openai"  # the manifest wins
    # No ARCH__TAG name, or no open_clip config beside it: the towers' fingerprint.
    other = immich_folder(tmp_path / "other")
    key = identity_of(other, str(other))
    assert key.startswith("onnx@sha256:") and len(key) == len("onnx@sha256:") + 16
    assert identity_of(other, "someone/ViT-B-32__openai") == "ViT-B-32/openai"  # beside an open_clip config
    (other / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert identity_of(other, "someone/ViT-B-32__openai") == key
    same = immich_folder(tmp_path / "same")
    assert identity_of(same, "same") == key  # same bytes, same identity, wherever they lie
    _graph(same / bundle.TEXTUAL, "text", 6, [1, 9], "embedding")  # another text tower
    assert identity_of(same, "same") != key


def test_fingerprint_covers_external_weights(tmp_path: Path) -> None:
    """A large model's tensors lie in files beside model.onnx: they are part of its identity, and
    of what is read (ONNX Runtime finds them beside the graph)."""
    import onnx
    import onnxruntime as ort

    root = immich_folder(tmp_path / "big")
    visual = root / bundle.VISUAL
    onnx.save_model(onnx.load_model(str(visual)), str(visual), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    data = [p for p in visual.parent.iterdir() if p.name not in ("model.onnx", "preprocess_cfg.json")]
    assert data and bundle.tower_files(visual) == [visual, *sorted(data)]
    key = identity_of(root, "big")
    export = read_export(root, source="folder", work=tmp_path)
    session = ort.InferenceSession(str(export.visual["fp32"]), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": np.ones((1, 3, 64, 64), np.float32)})[0].shape == (1, 8)
    raw = onnx.numpy_helper.to_array(onnx.load_model(str(visual)).graph.initializer[0])
    data[0].write_bytes((raw + 1).astype(np.float32).tobytes())
    assert identity_of(root, "big") != key


def _cache_export(root: Path, tokenizer: str | None = "tokenizers", text: bool = True) -> Export:
    """A stand-in for onnx_export.cache_export: towers and tokenizer in one folder, meta.json's facts."""
    from onnx import TensorProto

    root.mkdir(parents=True)
    _graph(root / "visual-fp32.onnx", "pixels", TensorProto.UINT8, ["batch", 64, 64, 3], "vectors")
    if text:
        _graph(root / "text-fp32.onnx", "input_ids", TensorProto.INT64, ["batch", "length"], "vectors")
    _word_tokenizer(root / "tokenizer.json", pad="<pad>")
    meta = {k: v for k, v in _manifest(key="hf:org/tiny", family="hf", pad_token="<pad>").items()
            if k not in ("format", "clipdex", "name", "pixel_input", "text_clean")}
    meta["tokenizer"] = tokenizer
    return Export(root, meta, "cache", "exported here", {"fp32": root / "visual-fp32.onnx"},
                  root / "text-fp32.onnx" if text else None, root / "tokenizer.json", root)


def test_write_export_round_trip_and_replace(tmp_path: Path) -> None:
    cache = _cache_export(tmp_path / "cache")
    dest = write_export(cache, tmp_path / "out" / "tiny")
    back = read_export(dest, source="folder", work=tmp_path)
    assert back.origin == "clipdex" and back.pixel_input == bundle.PIXELS_UINT8_NHWC
    for name, value in cache.meta.items():
        assert back.meta[name] == value, name
    manifest = json.loads((dest / "clipdex.json").read_text())
    assert manifest["format"] == 1 and manifest["clipdex"] and manifest["name"] == "hf:org/tiny"
    assert json.loads((dest / bundle.PREPROCESS).read_text())["size"] == [64, 64]
    assert json.loads((dest / bundle.CONFIG).read_text())["embed_dim"] == 8
    assert json.loads((dest / bundle.TOKENIZER_CONFIG).read_text())["pad_token"] == "<pad>"
    assert (dest / bundle.TOKENIZER).read_bytes() == (cache.root / "tokenizer.json").read_bytes()
    assert identity_of(dest, "anything") == "hf:org/tiny"
    # An earlier export is replaced whole; nothing is left beside it.
    (dest / "visual/stray.bin").write_bytes(b"x")
    write_export(cache, dest)
    assert not (dest / "visual/stray.bin").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny"]


def test_write_export_refusals(tmp_path: Path) -> None:
    cache = _cache_export(tmp_path / "cache")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"not empty and is not an earlier ONNX export by clipdex: it has no "
                                         r"clipdex\.json; it holds photo\.jpg.*Nothing in it was touched"):
        write_export(cache, busy)
    with pytest.raises(ModelError, match="is a file"):
        write_export(cache, busy / "photo.jpg")
    with pytest.raises(ModelError, match="no text tower"):
        write_export(_cache_export(tmp_path / "torch-texts", tokenizer=None, text=False), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    # A failure halfway leaves no folder and no temporary one.
    (cache.root / "text-fp32.onnx").unlink()
    with pytest.raises(FileNotFoundError):
        write_export(cache, tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "cache", "torch-texts"]


def _embeddings_folder(root: Path) -> Path:
    """A folder as ``clipdex export`` writes it (clip-retrieval's layout; its own clipdex.json)."""
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    (root / "img_emb/img_emb_0.npy").write_bytes(b"vectors")
    (root / "metadata/metadata_0.parquet").write_bytes(b"rows")
    (root / "clipdex.json").write_text(json.dumps({
        "format": "clipdex-export", "version": 1, "rows": 12, "shards": 1,
        "model": {"key": "ViT-B-32/openai", "name": "ViT-B-32", "dim": 512, "spec": {}},
        "columns": ["image_path"], "label_sets": [], "roots": [], "exported_at": "2024-01-01T00:00:00"}))
    return root


def _tree(root: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(root)), p.read_bytes()) for p in root.rglob("*") if p.is_file())


def test_a_folder_that_is_not_an_export_is_never_replaced(tmp_path: Path) -> None:
    """``clipdex export``'s embeddings have a clipdex.json too: refused, untouched, and told why; so
    is an export beside the user's own files, or one whose clipdex.json is not an export's."""
    cache = _cache_export(tmp_path / "cache")
    embeddings = _embeddings_folder(tmp_path / "embeddings")
    before = _tree(embeddings)
    with pytest.raises(ModelError) as error:
        write_export(cache, embeddings)
    message = str(error.value)
    assert "embeddings written by `clipdex export`" in message and "img_emb/, metadata/" in message
    assert "Nothing in it was touched" in message and "new or empty folder" in message
    assert _tree(embeddings) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "embeddings"]  # no temporary folder left
    bundle.check_dest(tmp_path / "new")  # a new folder, or an empty one: fine
    (tmp_path / "empty").mkdir()
    bundle.check_dest(tmp_path / "empty")

    mine = write_export(cache, tmp_path / "mine")
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match=r"it holds notes\.txt, which an export does not"):
        write_export(cache, mine)
    (mine / "notes.txt").unlink()
    manifest = json.loads((mine / "clipdex.json").read_text())
    (mine / "clipdex.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "dim"}))
    with pytest.raises(ModelError, match=r"its clipdex\.json is not an ONNX export's"):
        write_export(cache, mine)
    (mine / "clipdex.json").write_text(json.dumps({**manifest, "format": "1"}))
    with pytest.raises(ModelError, match=r"its clipdex\.json is not an ONNX export's"):
        write_export(cache, mine)
    # An export and its model card (README.md, for the hub): replaced, the card kept.
    (mine / "clipdex.json").write_text(json.dumps(manifest))
    (mine / "README.md").write_text("# my model")
    write_export(cache, mine)
    assert (mine / "README.md").read_text() == "# my model"
    assert json.loads((mine / "clipdex.json").read_text()) == manifest


def test_a_second_export_into_a_new_folder_says_the_first_one_won(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two exports into the same new DIR: the one that renames second finds DIR taken (the OS says
    ENOTEMPTY), and says so instead of a bare OSError; the first one's export stands."""
    import os

    cache = _cache_export(tmp_path / "cache")
    dest = tmp_path / "out"
    rename = os.replace
    first: list[Path] = []

    def other_export_finishes_first(src: Any, dst: Any) -> None:
        if Path(dst) == dest and not first:  # just before this run's rename, another run's lands
            first.append(write_export(cache, tmp_path / "other"))
            rename(first[0], dest)
        rename(src, dst)

    monkeypatch.setattr(bundle.os, "replace", other_export_finishes_first)
    with pytest.raises(ModelError, match=r"another export into .*out finished while this one was being written; "
                                         r"its export stands.*Run the command again to replace it"):
        write_export(cache, dest)
    assert read_export(dest, source="folder", work=tmp_path).origin == "clipdex"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out"]  # this run's folder taken back


def test_external_data_of_constants_is_found_and_read_without_onnx_where_there_is_none(tmp_path: Path) -> None:
    """Immich's large exports keep Constant nodes' tensors in files too: one of those missing makes
    the export incomplete. A graph with no external data (or too big to have any) is answered
    without importing onnx (it costs every cold process 0.1 s), and each graph is read once."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper

    from clipdex.models import hub_exports

    root = immich_folder(tmp_path / "ViT-B-32__openai")
    visual = root / bundle.VISUAL
    weight = helper.make_tensor("c", TensorProto.FLOAT, [8], np.arange(8, dtype=np.float32).tobytes(), raw=True)
    constant = helper.make_node("Constant", [], ["c"], value=weight)
    graph = helper.make_graph([constant, helper.make_node("Mul", ["image", "c"], ["embedding"])], "tower",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None)])
    onnx.save_model(helper.make_model(graph), str(visual), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True)
    data = sorted(p.name for p in visual.parent.iterdir() if p.name not in ("model.onnx", "preprocess_cfg.json"))
    assert data and bundle.external_data(visual) == tuple(data)
    assert hub_exports.export_complete(root)
    for name in data:
        (visual.parent / name).unlink()
    assert hub_exports.missing_external_data(visual) == data
    assert not hub_exports.export_complete(root)

    big = tmp_path / "big.onnx"
    with big.open("wb") as f:  # sparse: a graph over the limit keeps its own weights, and is not read
        f.truncate(bundle.EMBEDDED_WEIGHTS_BYTES + 1)
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from clipdex.models import bundle, hub_exports\n"
            f"assert bundle.external_data(Path({str(big)!r})) == ()\n"
            f"assert hub_exports.export_complete(Path({str(tmp_path / 'plain')!r}))\n"
            "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
            "print('ok')\n")
    immich_folder(tmp_path / "plain")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_external_data_is_read_once_per_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = immich_folder(tmp_path / "x")
    visual = root / bundle.VISUAL
    reads: list[Path] = []
    read = bundle._read_external_data
    monkeypatch.setattr(bundle, "_read_external_data", lambda model, size: reads.append(model) or read(model, size))
    assert bundle.external_data(visual) == () and bundle.external_data(visual) == ()
    assert reads == [visual]
    _graph(visual, "image", 1, [1, 3, 64, 64], "embedding2")  # rewritten: read again
    import os

    os.utime(visual, ns=(1, 1))
    bundle.external_data(visual)
    assert reads == [visual, visual]


# -- CLIP's BPE as a tokenizer.json, against open_clip ----------------------------------------------

ALPHABETS = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789",
             "!?.,;:'\"()[]{}-_/\\@#$%^*+=~`|", "éèêëàâäôöûüçñÉÀÖÜßøåæœ",
             "東京の写真犬猫海山日本語中文한국어", "🐶🐱🌊🏔️👍🏽❤️🎉", "ΑΒΓαβγЖжЯя", "  \t\n"]
FIXED = ["a photo of a dog", "A PHOTO OF A DOG!!!", "it's John's car, isn't it? they'll've", "3.14159 and 42",
         "café naïve coöperate", "東京タワーの夜景", "🐶 dog 🐶🐶", "mixed 東京 and café 3x", "", "   ", "x" * 300,
         "word " * 100, "hyphen-ated under_scored slash/ed", "tabs\tand\nnewlines   spaced", "'s's't're", "ÀÉÎÕÜ",
         "ﬁ ligature", "e\u0301 combining", "100% of $5.00 #tag @user", "a" + "🎉" * 80]


def _texts() -> list[str]:
    rng = random.Random(14)
    texts = list(FIXED)
    for _ in range(300):
        words = []
        for _ in range(rng.randint(1, 30)):
            alphabet = rng.choice(ALPHABETS)
            words.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))))
        texts.append(rng.choice([" ", "", "  "]).join(words))
    return texts


def _ftfy_stable(text: str) -> bool:
    """Texts open_clip's ftfy repair and HTML unescaping leave alone (the limit of the tokenizer.json form)."""
    import ftfy

    return ftfy.fix_text(text) == text and html.unescape(html.unescape(text)) == text


def test_clip_bpe_matches_open_clip_token_for_token() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    from clipdex.models import clip_bpe

    texts = [t for t in _texts() if _ftfy_stable(t)]
    assert len(texts) >= 250  # the exclusion is small
    reference = SimpleTokenizer(context_length=77)(texts).numpy()
    tokenizer = clip_bpe.build(77)
    ours = np.zeros_like(reference)
    for row, encoding in enumerate(tokenizer.encode_batch(texts)):
        ours[row, :len(encoding.ids)] = encoding.ids
    mismatched = [texts[i] for i in range(len(texts)) if not np.array_equal(ours[i], reference[i])]
    assert not mismatched, mismatched[:5]
    assert (ours[:, -1] != 0).sum() >= 5  # truncation was exercised, the end token kept
    assert set(ours[ours[:, -1] != 0, -1]) == {49407}


def test_hf_tokenizer_over_clip_bpe_gives_open_clip_ids(tmp_path: Path) -> None:
    """What an export's reader feeds (HfTokenizer, clipdex.json's facts) is open_clip's ids."""
    from open_clip.tokenizer import SimpleTokenizer

    from clipdex.models import clip_bpe
    from clipdex.models.hf_tokenizer import HfTokenizer

    path = clip_bpe.write(tmp_path / "tokenizer.json", 77)
    texts = [t for t in _texts()[:120] if _ftfy_stable(t)]
    tokenizer = HfTokenizer(path, 77, "max_length", clip_bpe.PAD_ID, "!", ["input_ids"], text_clean="whitespace")
    np.testing.assert_array_equal(tokenizer(texts)["input_ids"], SimpleTokenizer(context_length=77)(texts).numpy())


def test_canonicalize_matches_open_clip() -> None:
    from open_clip.tokenizer import canonicalize_text

    from clipdex.models.hf_tokenizer import clean_text

    texts = [t for t in _texts() if _ftfy_stable(t)] + ["A_B  c.d!  E", "__under__", "don't stop"]
    for text in texts:
        assert clean_text(text, "canonicalize") == canonicalize_text(text), text
    assert clean_text(" a \t b ", "whitespace") == "a b" and clean_text(" a ", None) == " a "


def test_clean_text_reaches_the_tokenizer(tmp_path: Path) -> None:
    from clipdex.models.hf_tokenizer import HfTokenizer

    _word_tokenizer(tmp_path / "tokenizer.json")
    meta = {"context_length": 5, "text_padding": "max_length", "pad_id": 1, "pad_token": "<|endoftext|>",
            "text_inputs": ["input_ids"], "text_clean": "canonicalize"}
    ids = HfTokenizer.from_export(tmp_path, meta)(["A_Photo, DOG!"])["input_ids"]
    assert ids.tolist() == [[3, 4, 5, 1, 1]]
