"""Reading an index while another process indexes it: a batch committed between two reads
is never taken for damage (the reads that must agree share one snapshot)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clipdex import Index
from clipdex.errors import IndexDamaged
from clipdex.store import ModelRecord, NewFile, Store

DIM = 8


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _commit(store: Store, model: ModelRecord, folder: Path, start: int, n: int = 1) -> ModelRecord:
    hashes = [f"h{i}" for i in range(start, start + n)]
    return store.commit_batch(model, _unit(n, start), hashes,
                              [NewFile(str(folder / f"{i:05d}.jpg"), 1, 1, h)
                               for i, h in zip(range(start, start + n), hashes)])


def _new_index(tmp_path: Path, photos: int = 3) -> tuple[Path, Path]:
    idx, folder = tmp_path / "idx", tmp_path / "photos"
    folder.mkdir()
    store = Store.open(idx, create=True)
    try:
        model = store.add_model("tiny", "tiny", "{}", DIM, 100.0, "fp32")
        store.add_root(str(folder))
        _commit(store, model, folder, 0, photos)
    finally:
        store.close()
    return idx, folder


def _reader(idx: Path) -> Index:
    return Index(Store.open(idx), None, None)  # the index's own model; no encoder is built


def _commit_once(idx: Path, folder: Path, start: int) -> Callable[[], None]:
    """A writer (its own connection, as another process has) that commits one batch when called."""
    writer = Store.open(idx)
    done = False

    def commit() -> None:
        nonlocal done
        if not done:
            done = True
            _commit(writer, writer.models()[0], folder, start)
            writer.close()
    return commit


def test_a_batch_committed_after_the_model_was_read_is_not_damage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idx, folder = _new_index(tmp_path)
    with _reader(idx) as index:
        commit = _commit_once(idx, folder, 3)
        missing_roots = index.store.missing_roots

        def commit_then_look() -> list[str]:  # runs after Index.searchable read the model's rows
            commit()
            return missing_roots()
        monkeypatch.setattr(index.store, "missing_roots", commit_then_look)
        found = index.searchable()
        assert len(found.paths) == 4 and found.vectors.shape == (4, DIM)
        assert index.search(f"@{folder / '00003.jpg'}", k=1)[0].path == str(folder / "00003.jpg")


@pytest.mark.parametrize("read", ["searchable", "vector", "status"])
def test_a_batch_committed_inside_a_read_is_not_seen_by_it(
        read: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idx, folder = _new_index(tmp_path)
    with _reader(idx) as index:
        store = index.store
        record = store.models()[0]
        commit = _commit_once(idx, folder, 3)
        current = store._current

        def current_then_commit(model: ModelRecord) -> ModelRecord:  # between the two reads
            fresh = current(model)
            commit()
            return fresh
        monkeypatch.setattr(store, "_current", current_then_commit)
        if read == "searchable":
            assert len(store.searchable(record).paths) == 3  # the snapshot's photos, all sound
            assert len(store.searchable(record).paths) == 4  # the next read sees the batch
        elif read == "vector":
            assert store.vector_for_hash(record, "h3") is None  # not committed in that snapshot
            vector = store.vector_for_hash(record, "h3")
            assert vector is not None and np.allclose(vector, _unit(1, 3)[0])
        else:
            status = index.status()
            assert status.problems == [] and status.indexed == 3 and status.models[0].photos == 3


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from clipdex.store import Store
    from tests.integration.test_store_snapshots import _commit
    idx, folder, batches = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    store = Store.open(idx)
    model = store.models()[0]
    for i in range(batches):
        model = _commit(store, model, folder, 3 + i)
        if i % 10 == 9:
            store.remove_files([str(folder / f"{i - 2:05d}.jpg")])  # and photos leave
    store.close()
""")


def test_searching_while_another_process_indexes_never_reports_damage(tmp_path: Path) -> None:
    idx, folder = _new_index(tmp_path)
    root = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(idx), str(folder), "300"], cwd=root)
    loads = 0
    try:
        with _reader(idx) as index:
            record = index.model_record()
            while writer.poll() is None:
                found = index.searchable()  # raised IndexDamaged ("0 photos lost") before
                assert len(found.paths) == found.vectors.shape[0]
                index.store.vector_for_hash(record, found.hashes[-1])
                status = index.status()
                assert status.problems == [], status.problems
                loads += 1
            assert writer.wait() == 0
            assert len(index.searchable().paths) == 3 + 300 - 30
    except IndexDamaged:
        writer.kill()
        raise
    assert loads > 10
