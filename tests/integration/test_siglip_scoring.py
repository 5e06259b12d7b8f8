"""A sigmoid model's own scoring end to end: a tiny open_clip model with SigLIP's logit_bias.

Its bias is stored with the model, and classification gives each label
``sigmoid(logit_scale * cos + logit_bias)`` as open_clip's own towers compute it,
through the default CPU path (the ONNX export) and through the torch runtime.
An index made before the bias was stored opens and classifies as before.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipdex import Index
from clipdex.classify import SIGMOID, SOFTMAX, UNCERTAIN, build_classifier, classify
from clipdex.labels import make_label_set
from clipdex.store import Store
from clipdex.store.migrations import LATEST_VERSION, MIGRATIONS
from tests.conftest import sigmoid_open_clip

LOGIT_BIAS = -10.0  # SigLIP's init_logit_bias
NAME = "clipdex-tiny-sigmoid"  # not "siglip": open_clip would then ask the hub for SigLIP's tokenizer
LABELS = ["dawn", "day", "dusk", "night"]
TEMPLATE = "a photo taken at {}"  # one prompt per label: its class vector is that prompt's
MAX_ABS = 1e-4  # probabilities against open_clip's own, absolute ...
MAX_REL = 1e-3  # ... and relative (a random model's probabilities are small: 1e-6 to 1e-4)
# The indexer decodes a large JPEG at a reduced size (JPEG draft mode) before resizing it, so
# its vectors differ from open_clip's full-size decode by ~1e-4 in cosine: about 0.5 % in these
# probabilities (1e-8 absolute). Against the index's own vectors they agree to MAX_REL.
MAX_REL_DECODED = 2e-2


@pytest.fixture(scope="module")
def sigmoid_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny open_clip CLIP with a logit_bias (random weights), its config and weights files."""
    import torch

    folder = tmp_path_factory.mktemp("sigmoid-model")
    config_path, model = sigmoid_open_clip(folder, NAME, LOGIT_BIAS, seed=0)
    weights = folder / f"{NAME}.pt"
    torch.save(model.state_dict(), weights)
    return {"model": model, "model_config": str(config_path), "weights": str(weights)}


def reference_probs(model: Any, paths: list[str] | None = None, image_vectors: np.ndarray | None = None
                    ) -> np.ndarray:
    """open_clip's own scores: sigmoid(logit_scale.exp() * cos + logit_bias) of its encode_text
    and either its eval transform and encode_image of ``paths`` or the given ``image_vectors``."""
    import open_clip
    import torch
    from PIL import Image

    tokenizer = open_clip.get_tokenizer(NAME)
    with torch.no_grad():
        if image_vectors is None:
            assert paths is not None
            transform = open_clip.image_transform(model.visual.image_size, is_train=False)
            images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
            vectors = model.encode_image(images, normalize=True)
        else:
            vectors = torch.from_numpy(np.asarray(image_vectors, dtype=np.float32))
        text_vectors = model.encode_text(tokenizer([TEMPLATE.format(label) for label in LABELS]), normalize=True)
        logits = model.logit_scale.exp() * vectors @ text_vectors.T + model.logit_bias
        return torch.sigmoid(logits).double().numpy()


def assert_close(probs: np.ndarray, expected: np.ndarray, max_rel: float = MAX_REL) -> None:
    probs = probs.astype(np.float64)
    assert probs.shape == expected.shape
    assert np.abs(probs - expected).max() <= MAX_ABS
    assert (np.abs(probs - expected) / expected).max() <= max_rel


def test_the_default_cpu_path_stores_the_bias_and_scores_each_label_by_its_sigmoid(
        tmp_path: Path, photos: Path, sigmoid_model: dict[str, Any]) -> None:
    model = sigmoid_model["model"]
    label_set = make_label_set("taken_time", LABELS, [TEMPLATE])
    with Index.open(tmp_path / "idx", create=True, model_config=sigmoid_model["model_config"],
                    weights=sigmoid_model["weights"]) as index:
        index.add(photos)
        record = index.model_record()
        assert record.logit_bias == pytest.approx(model.logit_bias.item(), abs=1e-6) == LOGIT_BIAS
        assert record.logit_scale == pytest.approx(model.logit_scale.exp().item(), rel=1e-6)
        assert index.encoder.backend == "onnx" and index.encoder.logit_bias == pytest.approx(LOGIT_BIAS)

        (result,) = index.classify([label_set], min_prob=0.5)
        assert result.scoring == SIGMOID and "per-label sigmoid" in (result.scores_text or "")
        assert len(result.paths) == 12
        decoded = reference_probs(model, [result.fs_path(i) for i in range(len(result.paths))])
        assert_close(result.probs, decoded, MAX_REL_DECODED)
        found = index.searchable()
        assert list(found.paths) == result.paths
        expected = reference_probs(model, image_vectors=found.vectors)
        assert_close(result.probs, expected)
        assert not np.allclose(result.probs.sum(axis=1), 1.0, atol=0.1)  # no shares of 1
        # A random model finds none of the labels likely: every photo is uncertain (a softmax
        # would still give one label at least a quarter).
        assert result.predicted == [UNCERTAIN] * 12
        assert_close(index.classification("taken_time").probs, expected)  # as stored

        (tags,) = index.classify([make_label_set("tags", LABELS, [TEMPLATE], multi_label=True,
                                                 background=["a photo"])])
        assert_close(tags.probs, expected)  # each label's own sigmoid, the background unused
        assert tags.predicted == [""] * 12  # none on at the threshold

        # Where people read the probabilities, they are called what they are.
        from fastapi.testclient import TestClient

        from clipdex.web import create_app

        client = TestClient(create_app(index), base_url="http://127.0.0.1:8000")
        page = client.get("/labels/taken_time").text
        assert "per-label sigmoid (SigLIP)" in page and "sum to 1" not in page
        assert client.get("/api/labels/taken_time").json()["scoring"] == SIGMOID
        photo = client.get(f"/photo/{result.file_ids[0]}").text
        assert "per-label sigmoid (SigLIP)" in photo and "sum to 1" not in photo


def test_the_torch_runtime_gives_the_same_bias_and_probabilities(
        tmp_path: Path, photos: Path, sigmoid_model: dict[str, Any]) -> None:
    from PIL import Image

    from clipdex.models.factory import make_encoder
    from clipdex.models.registry import resolve_model

    model = sigmoid_model["model"]
    spec = resolve_model(weights=sigmoid_model["weights"], model_config=sigmoid_model["model_config"])
    encoder = make_encoder(spec, device="cpu", runtime="torch")
    assert encoder.backend == "torch"
    assert encoder.logit_bias == pytest.approx(model.logit_bias.item(), abs=1e-6)

    store = Store.open(tmp_path / "idx", create=True)
    try:
        record = store.add_model(spec.key, spec.name, spec.to_json(), encoder.dim, encoder.logit_scale, "fp32",
                                 logit_bias=encoder.logit_bias)
        stored = store.get_model(spec.key)
        assert stored is not None and stored.logit_bias == record.logit_bias == pytest.approx(LOGIT_BIAS)
    finally:
        store.close()

    paths = sorted(str(p) for p in photos.rglob("*.jpg"))
    images = [Image.open(p).convert("RGB") for p in paths]
    classifier = build_classifier(make_label_set("taken_time", LABELS, [TEMPLATE]), encoder.encode_texts,
                                  stored.logit_scale, stored.logit_bias)
    result = classify(classifier, encoder.encode_pil(images), list(range(len(paths))), paths)
    assert result.scoring == SIGMOID
    assert_close(result.probs, reference_probs(model, paths))


def _as_before_migration_8(catalog: Path) -> None:
    """Turn a catalog back into what clipdex wrote before migration 008 (no models.logit_bias)."""
    assert MIGRATIONS[7][0] == "008_logit_bias"
    conn = sqlite3.connect(catalog, isolation_level=None)
    try:
        conn.execute("ALTER TABLE models DROP COLUMN logit_bias")
        for table in ("phashes", "duplicate_rules", "keepers"):  # 010's: not there before 008 either
            conn.execute(f"DROP TABLE {table}")
        conn.execute("PRAGMA user_version = 7")
    finally:
        conn.close()


def test_an_index_made_before_the_bias_was_stored_opens_and_classifies_as_before(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    label_set = make_label_set("taken_time", LABELS, [TEMPLATE], min_prob=0.3)
    idx = tmp_path / "idx"
    with Index.open(idx, create=True, **model_kwargs) as index:
        index.add(photos)
        (before,) = index.classify([label_set])
    _as_before_migration_8(idx / "catalog.sqlite")
    columns = [row[1] for row in sqlite3.connect(idx / "catalog.sqlite").execute("PRAGMA table_info(models)")]
    assert "logit_bias" not in columns

    with Index.open(idx, **model_kwargs) as index:
        assert index.store.conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        assert index.model_record().logit_bias is None  # a softmax model, as every model before 008
        stored = index.classification("taken_time")  # saved before the migration: read as it was
        np.testing.assert_array_equal(stored.probs, before.probs)
        assert stored.predicted == before.predicted
        (after,) = index.classify([label_set])
    assert after.scoring == before.scoring == SOFTMAX
    np.testing.assert_allclose(after.probs, before.probs, atol=1e-6)
    np.testing.assert_allclose(after.probs.sum(axis=1), 1.0, atol=1e-5)
    assert after.predicted == before.predicted
