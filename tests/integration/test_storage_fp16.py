"""float16 vector storage: half the file, and searches that answer as float32 storage does
(the same photos, scores within 1e-3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipdex import Index
from clipdex.store import Store
from clipdex.store.vectors import VectorFile

SCORE_TOLERANCE = 1e-3


def _index_with_storage(idx: Path, like: Index, storage: str) -> None:
    """A new index at ``idx`` whose model (the one ``like`` holds) stores rows as ``storage``."""
    record = like.model_record()
    store = Store.open(idx, create=True)
    try:
        store.add_model(record.key, record.name, record.spec_json, record.dim, record.logit_scale,
                        record.precision, storage=storage)
    finally:
        store.close()


def _queries(photos: Path) -> list[str]:
    return ["a photo", "a red car at night", f"@{photos / 'trip' / 'photo-001.jpg'}", f"@{photos / 'photo-007.jpg'}"]


def test_an_f16_index_searches_as_an_f32_one(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    with Index.open(tmp_path / "f32", create=True, **model_kwargs) as f32:
        f32.add(photos)
        _index_with_storage(tmp_path / "f16", f32, "f16")
        with Index.open(tmp_path / "f16", **model_kwargs) as f16:
            f16.add(photos)
            record = f16.model_record()
            assert (record.storage, record.vectors_file) == ("f16", "vectors/model-1.f16")
            assert (tmp_path / "f16" / record.vectors_file).stat().st_size == 12 * record.dim * 2
            for query in _queries(photos):
                full = {r.path: r.score for r in f32.search(query, k=12, exact=True)}
                half = f16.search(query, k=12, exact=True)
                assert {r.path for r in half} == set(full)
                for r in half:
                    assert r.score == pytest.approx(full[r.path], abs=SCORE_TOLERANCE), query
                # the same order, except between photos whose scores differ by less than the rounding
                ordered = [full[r.path] for r in half]
                assert all(a >= b - 2 * SCORE_TOLERANCE for a, b in zip(ordered, ordered[1:])), query
            assert f16.status(verify=True).problems == []


def test_an_f16_file_reads_back_as_float32_and_checks_its_rows(tmp_path: Path) -> None:
    f = VectorFile(tmp_path / "v.f16", 8, "f16")
    v = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[5] = 0.0
    f.append(0, v)
    assert f.path.stat().st_size == 40 * 8 * 2 and f.file_rows() == 40
    assert f.read(40).dtype == np.float16  # what search memory-maps: the file's own dtype
    rows = np.array([3, 1, 39, 2, 7, 6, 5])
    taken = f.take(rows)
    assert taken.dtype == np.float32
    np.testing.assert_allclose(taken, v[rows], atol=1e-3)
    np.testing.assert_array_equal(f.check(40).bad_rows, [5])
    np.testing.assert_array_equal(f.check(40, start=6).bad_rows, [])


def test_an_unknown_storage_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "idx", create=True)
    try:
        with pytest.raises(ValueError, match="unknown vector storage 'bf16': use one of f32, f16"):
            store.add_model("k", "n", "{}", 8, 1.0, "fp32", storage="bf16")
        assert store.models() == []
    finally:
        store.close()
