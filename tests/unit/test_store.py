"""The store on its own (no model): vector files, error translation, migrations, ONNX leftovers."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from clipdex.errors import ClipdexError, IndexDamaged, IndexStorageError
from clipdex.store import ModelRecord, NewFile, Store
from clipdex.store.guard import storage_errors, translate_os_error, translate_sqlite_error
from clipdex.store.migrations import LATEST_VERSION
from clipdex.store.vectors import (
    STORAGE_DTYPES,
    STORAGE_OPTIONS,
    ShortVectorFile,
    VectorCheck,
    VectorFile,
    check_storage,
    stored_name,
    unit_rows,
)


def _unit(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_storage_options_name_every_stored_kind_once() -> None:
    assert sorted(STORAGE_OPTIONS.values()) == sorted(STORAGE_DTYPES)
    assert (stored_name("fp16"), stored_name("fp32"), stored_name(None)) == ("f16", "f32", None)
    with pytest.raises(ValueError, match="use one of fp32, fp16"):
        stored_name("f16")  # a stored name is not an option
    check_storage(None)
    check_storage("f16")
    with pytest.raises(ValueError, match="use one of f32, f16"):
        check_storage("fp16")


def test_a_vector_file_refuses_to_grow_past_lost_rows(tmp_path: Path) -> None:
    f = VectorFile(tmp_path / "v.f32", 8)
    f.append(0, _unit(4))
    with open(f.path, "r+b") as fh:
        fh.truncate(2 * 8 * 4 + 3)
    with pytest.raises(ShortVectorFile, match="holds 2 complete rows, the catalog committed 4"):
        f.append(4, _unit(1))
    with pytest.raises(ShortVectorFile):
        f.read(4)
    assert f.path.stat().st_size == 2 * 8 * 4 + 3  # untouched
    f.path.unlink()
    with pytest.raises(ShortVectorFile, match="is missing"):
        f.append(4, _unit(1))
    assert not f.path.exists()  # not created empty either


def test_leftover_rows_of_a_killed_run_are_overwritten(tmp_path: Path) -> None:
    f = VectorFile(tmp_path / "v.f32", 8)
    f.append(0, _unit(6))  # 6 written, say only 4 committed
    f.append(4, _unit(1, seed=1))
    assert f.file_rows() == 5
    np.testing.assert_allclose(f.read(5)[4], _unit(1, seed=1)[0])


def test_check_finds_zero_nan_and_garbage_rows(tmp_path: Path) -> None:
    f = VectorFile(tmp_path / "v.f32", 8)
    rows = _unit(10)
    rows[3] = 0
    rows[5, 0] = np.nan
    rows[7] *= 40
    f.append(0, rows)
    check = f.check(12)
    assert check.file_rows == 10 and check.readable_rows == 10 and not check.missing
    assert check.bad_rows.tolist() == [3, 5, 7]
    assert check.row_ok(np.array([0, 3, 9, 10, 11])).tolist() == [True, False, True, False, False]
    assert unit_rows(_unit(3).astype(np.float16).astype(np.float32)).all()  # half precision passes


@pytest.mark.parametrize("rows", [
    list(range(40)),  # every row in order (a search load): read in place
    [*range(0, 20), *range(25, 40), 21, 22],  # runs in order and a few out of it
    [39, 0, 5, 5, 17, 38, 1, 1, 1, 20],  # any order, duplicated photos share a row
    [3, 39],  # sparse: memory-mapped
    [],
])
def test_take_reads_rows_in_any_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[int]) -> None:
    monkeypatch.setattr("clipdex.store.vectors.TAKE_CHUNK_ROWS", 7)  # rows span several chunks
    monkeypatch.setattr("clipdex.store.vectors.RUN_READ_RATIO", 8)
    f = VectorFile(tmp_path / "v.f32", 8)
    f.append(0, _unit(40))
    index = np.array(rows, dtype=np.int64)
    np.testing.assert_array_equal(f.take(index), _unit(40)[index])
    with open(f.path, "r+b") as fh:
        fh.truncate(30 * 8 * 4)
    if rows and max(rows) >= 30:
        with pytest.raises(ShortVectorFile, match="holds 30 complete rows"):
            f.take(index)


def test_the_unit_check_in_float32_keeps_its_tolerance_at_large_dimensions() -> None:
    rows = _unit(64, dim=2048)
    assert unit_rows(rows).all() and unit_rows(rows * 1.04).all()
    assert not unit_rows(rows * 1.06).any() and not unit_rows(rows * 0.94).any()
    huge = rows.copy()
    huge[0] = 1e30  # the sum of squares overflows float32: not a unit vector, no warning
    huge[1, 5] = np.inf
    assert unit_rows(huge).tolist() == [False, False] + [True] * 62


@pytest.mark.parametrize(("message", "kind", "says"), [
    ("database or disk is full", IndexStorageError, "disk full while writing the catalog"),
    ("disk I/O error", IndexStorageError, "I/O error"),
    ("attempt to write a readonly database", IndexStorageError, "read-only"),
    ("unable to open database file", IndexStorageError, "cannot be opened"),
    ("database disk image is malformed", IndexDamaged, "move it aside"),
    ("file is not a database", IndexDamaged, "cannot be read"),
    ("database is locked", IndexStorageError, "locked by another process"),
    ("something new", IndexStorageError, "Run the command again"),
])
def test_every_sqlite_error_becomes_a_clear_error(message: str, kind: type, says: str) -> None:
    error = translate_sqlite_error(Path("/idx"), sqlite3.OperationalError(message))
    assert type(error) is kind and says in str(error) and "/idx" in str(error)


@pytest.mark.parametrize(("code", "says"), [
    (errno.ENOSPC, "disk full while writing vectors/model-1.f32"),
    (errno.EDQUOT, "Free space and run again: finished batches are kept"),
    (errno.EROFS, "read-only"),
    (errno.EIO, "I/O error"),
])
def test_os_errors_of_the_index_become_clear_errors(code: int, says: str) -> None:
    error = translate_os_error(Path("/idx"), OSError(code, os.strerror(code)), "writing vectors/model-1.f32")
    assert isinstance(error, IndexStorageError) and says in str(error)


def test_store_methods_never_leak_sqlite_errors(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "idx", create=True)
    try:
        store.conn.close()  # any call now fails inside sqlite3
        with pytest.raises(ClipdexError):
            store.roots()
        with pytest.raises(ClipdexError):
            store.add_root("/photos")
    finally:
        store.release_lock()
    with pytest.raises(IndexStorageError), storage_errors(tmp_path):
        raise sqlite3.OperationalError("disk I/O error")


def test_a_read_only_store_refuses_every_write(tmp_path: Path) -> None:
    Store.open(tmp_path / "idx", create=True).close()
    store = Store.open(tmp_path / "idx", readonly=True)
    try:
        assert store.readonly and store.roots() == []
        for write in (lambda: store.add_root("/photos"), store.acquire_lock,
                      lambda: store.add_model("k", "n", "{}", 8, 1.0, "fp32")):
            with pytest.raises(IndexStorageError, match="read-only"):
                write()
    finally:
        store.close()
    with pytest.raises(ClipdexError, match="no clipdex index"):
        Store.open(tmp_path / "nothing", create=True, readonly=True)


def test_add_model_is_insert_or_get(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "idx", create=True)
    other = Store.open(tmp_path / "idx")
    try:
        first = store.add_model("k", "n", "{}", 8, 1.0, "fp32")
        again = other.add_model("k", "n", "{}", 8, 1.0, "fp32")  # as a racing process would
        assert first == again and len(store.models()) == 1
        assert first.vectors_file == f"vectors/model-{first.id}.f32"
    finally:
        store.close()
        other.close()


CREATE = textwrap.dedent("""
    import os, sys, time
    from clipdex.store import Store
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.002)
    store = Store.open(sys.argv[1], create=True)
    store.add_model("k", "n", "{}", 8, 1.0, "fp32")
    store.close()
""")


def test_many_processes_creating_one_index_at_once(tmp_path: Path) -> None:
    go = tmp_path / "go"
    runs = [subprocess.Popen([sys.executable, "-c", CREATE, str(tmp_path / "idx"), str(go)],
                             stderr=subprocess.PIPE, text=True) for _ in range(6)]
    time.sleep(0.5)  # all started and polling
    go.touch()
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0] * 6, errors
    store = Store.open(tmp_path / "idx")
    try:
        assert len(store.models()) == 1
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    finally:
        store.close()


def test_stale_onnx_exports_of_dead_processes_are_removed(tmp_path: Path) -> None:
    from clipdex.models.onnx_export import remove_stale_exports

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    entries = {
        f"m-v3.tmp-{dead_pid}-abc123": True,  # its process is gone
        f"m-v3.tmp-{os.getpid()}-abc123": False,  # in progress (this process)
        "m-v3.tmp-1-old": True,  # older than an hour, whatever the pid
        "m-v2.k3j4h5g6": True,  # an unnamed one from before, older than an hour
        "m-v3": False,  # a finished export
    }
    for name in entries:
        (tmp_path / name).mkdir()
        (tmp_path / name / "visual-fp32.onnx").write_bytes(b"x" * 10)
    (tmp_path / f"visual-int8-r2.{dead_pid}.tmp").write_bytes(b"x")
    hour_ago = time.time() - 2 * 3600
    for name in ("m-v3.tmp-1-old", "m-v2.k3j4h5g6", "m-v3"):
        os.utime(tmp_path / name, (hour_ago, hour_ago))
    removed = {p.name for p in remove_stale_exports(tmp_path)}
    assert removed == {n for n, stale in entries.items() if stale} | {f"visual-int8-r2.{dead_pid}.tmp"}
    assert {p.name for p in tmp_path.iterdir()} == {n for n, stale in entries.items() if not stale}


def test_an_immediate_database_is_locked_is_retried_not_reported() -> None:
    """SQLite answers SQLITE_BUSY at once (no busy wait) where waiting could deadlock:
    two first runs racing hit it. Such a step is retried; other errors are not."""
    import sqlite3

    from clipdex.store.guard import retry_busy

    calls = []

    def step() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    assert retry_busy(step) == "done" and len(calls) == 3

    def broken() -> None:
        raise sqlite3.OperationalError("no such table: files")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_busy(broken)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_busy(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is locked")),
                   timeout_s=0.05)


def _filled(tmp_path: Path, rows: int, dim: int = 8) -> tuple[Store, ModelRecord]:
    """A store whose model has ``rows`` vectors, each used by one photo ``/p/N.jpg``."""
    store = Store.open(tmp_path / "idx", create=True)
    model = store.add_model("k", "n", "{}", dim, 1.0, "fp32")
    return store, _add(store, model, 0, rows)


def _add(store: Store, model: ModelRecord, first: int, count: int) -> ModelRecord:
    hashes = [f"h{i}" for i in range(first, first + count)]
    files = [NewFile(f"/p/{i}.jpg", 10, 1, h) for i, h in zip(range(first, first + count), hashes)]
    return store.commit_batch(model, _unit(count, model.dim, seed=first), hashes, files)


def test_an_index_run_checks_only_the_rows_added_since_the_last(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store, model = _filled(tmp_path, 6)
    reads: list[tuple[int, int]] = []
    real = VectorFile.check

    def counted(self: VectorFile, rows: int, start: int = 0) -> VectorCheck:
        reads.append((start, rows))
        return real(self, rows, start)

    monkeypatch.setattr(VectorFile, "check", counted)
    assert store.repair_vectors(model) == 0 and store.checked_rows(model) == 6
    model = _add(store, model, 6, 3)
    assert store.repair_vectors(model) == 0 and store.checked_rows(model) == 9
    assert store.repair_vectors(model) == 0
    assert reads == [(0, 6), (6, 9), (9, 9)]  # a full check once, then only the new rows


def test_a_zeroed_row_below_the_checked_rows_is_found_by_a_full_check_then_repaired(tmp_path: Path) -> None:
    store, model = _filled(tmp_path, 6)
    assert store.repair_vectors(model) == 0
    data = np.fromfile(store.vector_file(model).path, dtype="<f4")
    data[2 * 8:3 * 8] = 0.0
    data.tofile(store.vector_file(model).path)
    assert store.repair_vectors(model) == 0  # rows an earlier run found sound are not read again
    damage = store.vector_damage(model, [], full=True)  # what `status --verify` does
    assert damage is not None and damage.lost_hashes == ["h2"]
    assert store.checked_rows(model) == 2  # so the next index run reads row 2 on
    assert store.repair_vectors(model) == 1
    assert store.embedded_hashes(model) == {f"h{i}": i for i in (0, 1, 3, 4, 5)}
    assert store.vector_damage(model, [], full=True) is None


def test_a_file_cut_below_the_checked_rows_shrinks_and_bumps_the_generation(tmp_path: Path) -> None:
    store, model = _filled(tmp_path, 6)
    assert store.repair_vectors(model) == 0
    with open(store.vector_file(model).path, "r+b") as f:
        f.truncate(4 * 8 * 4 + 5)
    assert store.repair_vectors(model) == 2
    after = store.get_model("k")
    assert after is not None
    assert (after.rows, store.checked_rows(after), after.generation) == (4, 4, model.generation + 1)
