"""A model's identity checked by its vectors (clipdex.models.probe): two sources share an index only
when they give the same probe vectors, whatever name they claim."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipdex import Index
from clipdex.errors import ModelMismatch
from clipdex.models import factory
from clipdex.models import probe as probes
from clipdex.models.registry import ModelSpec, resolve_model
from clipdex.store import Store
from clipdex.store.catalog import CATALOG_NAME
from tests.images import write_photos

# sha256 of the probe image's pixels. Every index compares new sources with the probe vectors it
# recorded: a different probe image would refuse every model of every existing index.
PROBE_PIXELS_SHA256 = "d57d4d203aed6fa1e2e1360e6a003ef7313981f84ce5b207b8a959fc6a7d1c72"


@pytest.fixture(scope="module")
def other_weights(tiny_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's architecture with other weights (seed 1): another model."""
    import open_clip
    import torch

    config, _ = tiny_model
    open_clip.add_model_config(config)
    torch.manual_seed(1)
    model = open_clip.create_model("clipdex-tiny", pretrained=None)
    path = tmp_path_factory.mktemp("tiny-seed-1") / "clipdex-tiny-seed-1.pt"
    torch.save(model.state_dict(), path)
    return path


def _on_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every encoder built from now on through open_clip on torch (on the CPU here) instead of ONNX Runtime."""
    real = factory.make_encoder

    def on_torch(spec: ModelSpec, **kwargs: Any) -> Any:
        return real(spec, **{**kwargs, "runtime": "torch", "for_queries": False})

    monkeypatch.setattr(factory, "make_encoder", on_torch)


def _impostor(model_kwargs: dict[str, str], weights: Path) -> ModelSpec:
    """Other weights claiming to be the tiny model (as a mislabelled export claims a key)."""
    real = resolve_model(None, model_kwargs["weights"], model_kwargs["model_config"])
    other = resolve_model(None, weights, model_kwargs["model_config"])
    return ModelSpec(name="impostor", arch=other.arch, weights=other.weights, weights_sha256=other.weights_sha256,
                     config=other.config, identity=real.key)


def _probe_of(index: Path) -> tuple[list[str], np.ndarray | None]:
    store = Store.open(index, readonly=True)
    try:
        [record] = store.models()
        probe = store.model_probe(record.id)
        return ([s.source for s in probe.sources], probe.vectors) if probe else ([], None)
    finally:
        store.close()


def _catalog_rows(index: Path) -> tuple[Any, ...]:
    """What a refused source must leave as it was (the vector check's own bookkeeping aside)."""
    with sqlite3.connect(index / CATALOG_NAME) as conn:
        return tuple(conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall() for table, columns in (
            ("models", "id, key, name, spec, rows, precision, probe, probe_sources"), ("roots", "path"),
            ("files", "*"), ("embeddings", "*"), ("precision_choices", "*")))


def test_the_probe_image_is_computed_not_drawn() -> None:
    image = probes.probe_image()
    assert image.size == (probes.PROBE_SIDE, probes.PROBE_SIDE) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == PROBE_PIXELS_SHA256
    assert len({tuple(p) for p in pixels.reshape(-1, 3)[::97]}) > 100  # gradients and shapes, not a flat field
    assert probes.rows_of(probes.TOWERS) == [0, 1, 2, 3]
    assert probes.rows_of([probes.TEXT]) == [1, 2, 3] and probes.rows_of([probes.IMAGE]) == [0]


def test_a_new_index_records_its_first_encoders_probe(tmp_path: Path, photos: Path,
                                                      model_kwargs: dict[str, str]) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        source = probes.source_of(index.encoder)
    sources, vectors = _probe_of(tmp_path / "idx")
    assert sources == [source] and vectors is not None and vectors.shape == (4, 32)
    encoder = factory.make_encoder(resolve_model(None, model_kwargs["weights"], model_kwargs["model_config"]),
                                   device="cpu")
    assert probes.min_cosine(vectors, probes.probe_vectors(encoder)) > 0.9999


def test_the_same_model_through_torch_shares_the_index(tmp_path: Path, photos: Path, model_kwargs: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    index_dir = tmp_path / "idx"
    with Index.open(index_dir, create=True, **model_kwargs) as index:  # ONNX Runtime
        index.add(photos)
    [onnx_source], _ = _probe_of(index_dir)
    _on_torch(monkeypatch)
    write_photos(tmp_path / "more", 3, start=40)
    with Index.open(index_dir, **model_kwargs) as index:
        report = index.add(tmp_path / "more")  # the torch encoder: checked on both towers, then it adds
        assert report.encoded == 3 and index.status().indexed == 15
        assert index.search("a dog", k=3)
    sources, _ = _probe_of(index_dir)
    assert sources[0] == onnx_source and len(sources) == 2 and sources[1].startswith("torch")
    store = Store.open(index_dir, readonly=True)
    try:
        probe = store.model_probe(store.models()[0].id)
    finally:
        store.close()
    checked = probe.source(sources[1]) if probe else None
    assert checked is not None and set(checked.towers) == set(probes.TOWERS)
    assert checked.cosine is not None and checked.cosine > 0.9999


def test_other_weights_claiming_the_model_are_refused(tmp_path: Path, photos: Path, model_kwargs: dict[str, str],
                                                      other_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index_dir = tmp_path / "idx"
    with Index.open(index_dir, create=True, **model_kwargs) as index:
        index.add(photos)
        key = index.model_record().key
    [source], _ = _probe_of(index_dir)
    before = _catalog_rows(index_dir)
    impostor = _impostor(model_kwargs, other_weights)
    assert impostor.key == key
    write_photos(tmp_path / "more", 2, start=40)
    _on_torch(monkeypatch)
    with Index(Store.open(index_dir), impostor, None) as index, pytest.raises(ModelMismatch) as refused:
        index.add(tmp_path / "more")
    message = str(refused.value)
    assert f"not of 'impostor from torch ({other_weights})'" in message
    assert f"holds vectors of clipdex-tiny ({key})" in message
    assert f"claims to be {key}" in message and "below the 0.99" in message
    assert "--index NEW_DIR" in message and source in message and "Nothing was written" in message
    cosine = float(message.split("only to cosine ")[1].split(",")[0])
    assert cosine < 0.5  # another model: nowhere near
    assert _catalog_rows(index_dir) == before  # not the folder, not the spec, not a source
    with Index(Store.open(index_dir), impostor, None) as index:
        with pytest.raises(ModelMismatch, match="texts"):
            index.search("a dog", k=3)
        with pytest.raises(ModelMismatch, match=r"probe \(image\)"):
            index.search(f"@{tmp_path / 'more' / 'photo-040.jpg'}", k=3)
    assert _catalog_rows(index_dir) == before


def test_a_text_search_checks_the_text_tower_only(tmp_path: Path, photos: Path, model_kwargs: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    index_dir = tmp_path / "idx"
    with Index.open(index_dir, create=True, **model_kwargs) as index:
        index.add(photos)
    asked: list[tuple[str, ...]] = []
    real_probe = probes.probe_vectors

    def spied(encoder: Any, towers: Any = probes.TOWERS) -> np.ndarray:
        asked.append(tuple(towers))
        return real_probe(encoder, towers)

    monkeypatch.setattr(probes, "probe_vectors", spied)
    with Index.open(index_dir) as index:
        index.search("a dog", k=3)
        assert asked == []  # the source that made the index: nothing to check
    _on_torch(monkeypatch)
    with Index.open(index_dir) as index:
        index.search("a dog", k=3)
        index.search("a cat", k=3)
        assert asked == [(probes.TEXT,)]  # once, texts only
        index.search(f"@{photos / 'trip' / 'photo-000.jpg'} + a cat", k=3)  # an indexed photo: its vector
        assert asked == [(probes.TEXT,)]
    sources, _ = _probe_of(index_dir)
    assert len(sources) == 2
    with Index.open(index_dir) as index:
        index.search("a bird", k=3)
        assert asked == [(probes.TEXT,)]  # recorded: not checked again


def test_an_old_index_without_a_probe_gets_one(tmp_path: Path, photos: Path, model_kwargs: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    index_dir = tmp_path / "idx"
    with Index.open(index_dir, create=True, **model_kwargs) as index:
        index.add(photos)
    with sqlite3.connect(index_dir / CATALOG_NAME) as conn:
        conn.execute("UPDATE models SET probe = NULL, probe_sources = NULL")  # as migration 009 leaves one
    with Index.open(index_dir) as index:
        assert index.search("a dog", k=3)  # nothing to compare with: searched as before
        index.add(photos)  # unchanged: no encoder is built, so no probe
    assert _probe_of(index_dir) == ([], None)
    write_photos(tmp_path / "more", 2, start=40)
    with Index.open(index_dir) as index:
        index.add(tmp_path / "more")
        source = probes.source_of(index.encoder)
    sources, vectors = _probe_of(index_dir)
    assert sources == [source] and vectors is not None and vectors.shape == (4, 32)


def test_a_read_only_index_checks_every_time_and_never_writes(tmp_path: Path, photos: Path,
                                                              model_kwargs: dict[str, str], other_weights: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    index_dir = tmp_path / "idx"
    with Index.open(index_dir, create=True, **model_kwargs) as index:
        index.add(photos)
    before = _catalog_rows(index_dir)
    _on_torch(monkeypatch)
    checks = []
    real_check = Index._check_source

    def counted(self: Index, *args: Any) -> None:
        checks.append(args[-1])
        real_check(self, *args)

    monkeypatch.setattr(Index, "_check_source", counted)
    for _ in range(2):
        with Index.open(index_dir, readonly=True) as index:
            assert index.search("a dog", k=3)
    assert len(checks) == 2 and _catalog_rows(index_dir) == before
    with Index(Store.open(index_dir, readonly=True), _impostor(model_kwargs, other_weights), None) as index, \
            pytest.raises(ModelMismatch, match="claims to be"):
        index.search("a dog", k=3)
    assert _catalog_rows(index_dir) == before


def test_a_new_vector_set_of_the_model_is_checked_against_the_other(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str], other_weights: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 vectors are a record of their own beside full-precision ones; a source new to the model is
    compared with the other set's probe before the new set is created."""
    index_dir = tmp_path / "idx"
    with Index.open(index_dir, create=True, precision="int8", **model_kwargs) as index:
        index.add(photos)
        assert index.model_record().key.endswith("#int8")
    before = _catalog_rows(index_dir)
    _on_torch(monkeypatch)
    with Index(Store.open(index_dir), _impostor(model_kwargs, other_weights), None, "fp32") as index, \
            pytest.raises(ModelMismatch, match="claims to be"):
        index.add(photos, allow_new_model=True)
    assert _catalog_rows(index_dir) == before
    with Index.open(index_dir, precision="fp32", **model_kwargs) as index:
        index.add(photos, allow_new_model=True)  # the same model through torch: a set of its own beside int8
        assert sorted(m.key.endswith("#int8") for m in index.status().models) == [False, True]
