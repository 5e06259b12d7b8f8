"""bench/synthetic.py: CLIP-like vectors have CLIP's statistics, not those of uniform random vectors.

The ranges are the real ViT-B/32 features' (random-pair cosine 0.634, nearest-neighbour cosine median 0.87 at
1,000 photos, a fast-decaying spectrum), widened for sampling noise at a few thousand generated rows.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROWS = 5000


@pytest.fixture(scope="module")
def synthetic() -> ModuleType:
    """bench/synthetic.py as a module (bench/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("clipdex_bench_synthetic", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vectors(synthetic: ModuleType) -> np.ndarray:
    return synthetic.clip_like_vectors(ROWS, seed=3)


def test_rows_are_unit_float32_and_seeded(synthetic: ModuleType, vectors: np.ndarray) -> None:
    assert vectors.shape == (ROWS, 512) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(synthetic.clip_like_vectors(ROWS, seed=3), vectors)
    assert not np.allclose(synthetic.clip_like_vectors(100, seed=4), vectors[:100])


def test_the_first_rows_do_not_depend_on_the_size(synthetic: ModuleType, vectors: np.ndarray) -> None:
    assert np.array_equal(synthetic.clip_like_vectors(700, seed=3), vectors[:700])


def test_fills_a_given_array_in_place(synthetic: ModuleType, vectors: np.ndarray, tmp_path: Path) -> None:
    out = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float32, shape=(ROWS, 512))
    assert synthetic.clip_like_vectors(ROWS, seed=3, out=out) is out
    assert np.array_equal(np.asarray(out), vectors)
    with pytest.raises(ValueError, match="shape"):
        synthetic.clip_like_vectors(10, out=np.empty((11, 512), np.float32))


def test_statistics_are_clip_like(synthetic: ModuleType, vectors: np.ndarray) -> None:
    s = synthetic.stats(vectors, sample=1000)
    assert 0.60 <= s.random_pair <= 0.67  # real 0.634; uniform random vectors: 0.00
    assert 0.82 <= s.nn_percentiles[2] <= 0.92  # real median 0.866 at 1,000 photos; uniform: ~0.15
    assert s.nn_percentiles[0] < s.nn_percentiles[4]
    sd = s.singular
    assert sd[0] > 1.4 * sd[9] and sd[9] > 2 * sd[99] and sd[99] > 2 * sd[399]  # fast decay (uniform: flat)


def test_image_like_queries_are_new_photos_near_the_collection(synthetic: ModuleType, vectors: np.ndarray) -> None:
    q = synthetic.image_like_queries(vectors, 200, seed=1)
    assert q.shape == (200, 512) and q.dtype == np.float32
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    best = synthetic.best_cosines(vectors, q)
    assert (best < 0.9999).all()  # never a row of the collection
    assert 0.8 <= float(np.median(best)) <= 0.97


def test_text_like_queries_sit_across_the_modality_gap(synthetic: ModuleType, vectors: np.ndarray) -> None:
    q = synthetic.text_like_queries(vectors, 200, seed=2)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    best = synthetic.best_cosines(vectors, q)
    assert 0.22 <= float(np.median(best)) <= 0.38  # a caption's best photo under CLIP: ~0.3
    assert float((q[:100] @ q[100:].T).mean()) > 0.5  # text vectors share their own cone
    assert np.array_equal(synthetic.text_like_queries(vectors, 200, seed=2), q)
