"""`clipdex export` and `clipdex import`: clip-retrieval's layout in and out, with generated data."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipdex import Index, interchange
from clipdex.errors import DimensionMismatch
from clipdex.interchange import export_embeddings, import_embeddings, synthetic_hash
from clipdex.labels import make_label_set
from clipdex.store import Store
from clipdex.store.compact import compact
from tests.conftest import run_cli
from tests.images import write_photos

TINY_DIM = 32  # tests/data/clipdex-tiny.json's embed_dim
B32_DIM = 512  # ViT-B-32 (open_clip's config: no weights needed to import its vectors)


@pytest.fixture()
def labelled_index(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> Iterator[Path]:
    """An index of the 12 ``photos`` with one label set run and one correction; its folder."""
    folder = tmp_path / "idx"
    with Index.open(folder, create=True, **model_kwargs) as index:
        index.add(photos)
        index.classify([make_label_set("space", ["indoor", "outdoor"], ["a photo taken {}"])])
        first = index.search("@photo-002", k=1)[0]
        predicted = index.photo_labels(first.file_id)[0].label
        index.correct("space", first.file_id, "indoor" if predicted == "outdoor" else "outdoor")
    yield folder


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _write_shards(folder: Path, vectors: np.ndarray, columns: dict[str, list[object]], shards: int) -> None:
    """A clip-retrieval output folder: img_emb/img_emb_N.npy (float16) + metadata/metadata_N.parquet."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir(parents=True)
    bounds = np.linspace(0, len(vectors), shards + 1).astype(int)
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        np.save(folder / "img_emb" / f"img_emb_{n}.npy", vectors[a:b].astype(np.float16))
        pq.write_table(pa.table({k: v[a:b] for k, v in columns.items()}),
                       folder / "metadata" / f"metadata_{n}.parquet")


def _neighbours(vectors: np.ndarray, names: list[str], of: str, k: int) -> list[str]:
    """The k nearest names to ``of`` by plain numpy cosine (the reference for @photo search)."""
    unit = vectors.astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    scores = unit @ unit[names.index(of)]
    return [names[i] for i in np.argsort(-scores, kind="stable")[:k]]


def test_export_is_read_row_aligned_by_embedding_reader(labelled_index: Path, tmp_path: Path) -> None:
    from embedding_reader import EmbeddingReader

    out = tmp_path / "export"
    result = run_cli("export", str(out), "--index", str(labelled_index), "--shard-rows", "5")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out / "img_emb")) == [f"img_emb_{i}.npy" for i in range(3)]
    assert sorted(os.listdir(out / "metadata")) == [f"metadata_{i}.parquet" for i in range(3)]
    assert np.load(out / "img_emb" / "img_emb_0.npy").dtype == np.float16

    columns = ["image_path", "id", "path", "width", "height", "size", "mtime", "taken_at", "sha256",
               "space", "space_prob"]
    reader = EmbeddingReader(embeddings_folder=str(out / "img_emb"), metadata_folder=str(out / "metadata"),
                             file_format="parquet_npy", meta_columns=columns)
    batches = list(reader(batch_size=100, show_progress=False))
    vectors = np.concatenate([b[0] for b in batches])
    meta = [row for b in batches for row in b[1].to_dict("records")]
    assert len(meta) == 12 and vectors.shape == (12, TINY_DIM)
    paths = [m["image_path"] for m in meta]
    assert paths == sorted(paths)  # a stable order: by path

    with Index.open(labelled_index) as index:
        found = index.searchable()
        stored = {p: found.vectors[i] for i, p in enumerate(found.paths)}
        corrected = [r for r in index.classification("space").truth or [] if r]
    for vector, m in zip(vectors, meta):  # row-aligned: each row is its photo's vector
        assert np.allclose(vector, stored[m["image_path"]], atol=2e-3)
        assert m["width"] == 640 and m["height"] == 480 and m["size"] == os.path.getsize(m["image_path"])
        assert m["space"] in ("indoor", "outdoor") and 0 <= m["space_prob"] <= 1
        assert len(m["sha256"]) == 64 and m["taken_at"]
    assert len(corrected) == 1
    first = next(m for m in meta if m["path"].endswith("photo-002.jpg"))
    assert first["space"] == corrected[0]  # a correction wins

    again = run_cli("export", str(out), "--index", str(labelled_index))
    assert again.exit_code == 1 and "already holds an export" in again.output and "--overwrite" in again.output
    replaced = run_cli("export", str(out), "--index", str(labelled_index), "--overwrite", "--json")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(replaced.output)["shards"] == 1
    assert os.listdir(out / "img_emb") == ["img_emb_0.npy"]  # no shard of the old export left over
    assert os.listdir(out / "metadata") == ["metadata_0.parquet"]


def test_a_compaction_while_exporting_changes_nothing_the_export_reads(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        (photos / "photo-002.jpg").unlink()  # a row for compact to give back: the others renumbered
        index.add(photos)
        before = export_embeddings(index, tmp_path / "before", shard_rows=4)
        write_parquet = interchange._write_parquet
        compacted: list[int] = []

        def compact_after_the_first_shard(target: Path, table: pa.Table) -> None:
            write_parquet(target, table)
            if not compacted:
                other = Store.open(index.path)
                try:
                    compacted.append(compact(other).rows_after)
                finally:
                    other.close()

        monkeypatch.setattr(interchange, "_write_parquet", compact_after_the_first_shard)
        during = export_embeddings(index, tmp_path / "during", shard_rows=4)
    assert compacted == [11] and before.rows == during.rows == 11 and during.shards == 3
    for i in range(3):
        shard = f"img_emb/img_emb_{i}.npy"
        assert np.array_equal(np.load(tmp_path / "before" / shard), np.load(tmp_path / "during" / shard))


def test_export_then_import_searches_like_numpy_and_indexing_encodes_nothing(
        labelled_index: Path, tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    out = tmp_path / "export"
    assert run_cli("export", str(out), "--index", str(labelled_index), "--shard-rows", "4").exit_code == 0
    target = tmp_path / "imported"
    result = run_cli("import", str(out), "--index", str(target), *model_args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["imported"] == 12 and summary["skipped"] == 0 and summary["shards_imported"] == 3
    assert summary["layout"] == "clipdex" and summary["roots"] == [str(photos)]

    vectors = np.concatenate([np.load(out / "img_emb" / f"img_emb_{i}.npy") for i in range(3)])
    names = [Path(p).stem for i in range(3)
             for p in pq.read_table(out / "metadata" / f"metadata_{i}.parquet")["image_path"].to_pylist()]
    with Index.open(target) as index:
        hits = index.search("@photo-003", k=5)
    assert [Path(h.path).stem for h in hits] == _neighbours(vectors, names, "photo-003", 5)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    taken_sql = "SELECT path, taken_at FROM files ORDER BY path"
    with Index.open(labelled_index) as original, Index.open(target) as imported:
        assert (list(imported.store.conn.execute(taken_sql)) == list(original.store.conn.execute(taken_sql)))

    indexed = run_cli("index", str(photos), "--index", str(target), *model_args, "--json")
    assert indexed.exit_code == 0, indexed.output
    report = json.loads(indexed.output)
    assert report["encoded"] == 0 and report["unchanged"] == 12, report


def test_import_clip_retrieval_urls_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 6, B32_DIM)
    urls = [f"https://images.example.com/a/{i}/cat-{i}.jpg" for i in range(4)] + [
        "http://other.example.org/dog-4.jpg", "http://other.example.org/x/dog-5.jpg"]
    source = tmp_path / "clip-retrieval"
    _write_shards(source, vectors, {"url": urls, "caption": [f"caption {i}" for i in range(6)]}, shards=2)

    result = run_cli("import", str(source), "--index", str(tmp_path / "idx"), "--model", "ViT-B-32",
                     "--storage", "fp16", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["imported"] == 6 and summary["layout"] == "clip-retrieval"
    assert summary["roots"] == ["http://other.example.org", "https://images.example.com"]
    with Index.open(tmp_path / "idx") as index:
        status = index.status()
        assert status.indexed == 6 and not status.missing_roots and not status.problems
        assert sorted(status.roots) == summary["roots"]
        assert index.model_record().storage == "f16"
        hits = index.search("@cat-2", k=3)
    assert hits[0].path == urls[2]
    names = [u.rsplit("/", 1)[1].removesuffix(".jpg") for u in urls]
    assert [h.path for h in hits] == [urls[names.index(n)] for n in _neighbours(vectors, names, "cat-2", 3)]


def test_import_features_and_ids_with_images_then_index_encodes_nothing(
        tmp_path: Path, model_args: list[str]) -> None:
    images = tmp_path / "images"
    files = write_photos(images, 5)
    (images / "photo-002.jpg").rename(images / "photo-002.PNG.jpeg")  # any image extension
    ids = ["photo-000", "photo-001", "photo-002.PNG", "photo-003", "photo-004"]
    source = tmp_path / "features"
    source.mkdir()
    vectors = _unit(np.random.default_rng(2), 5, TINY_DIM)
    np.save(source / "features.npy", vectors.astype(np.float16))
    with open(source / "photo_ids.csv", "w", newline="") as f:
        csv.writer(f).writerows([["photo_id"], *([i] for i in ids)])

    idx = str(tmp_path / "idx")
    result = run_cli("import", str(source), "--images", str(images), "--index", idx, *model_args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["layout"] == "features" and summary["imported"] == 5 and summary["roots"] == [str(images)]
    with Index.open(idx) as index:
        record = index.store.file_by_path(str(files[0]))
        assert record is not None and record.content_hash == synthetic_hash(str(files[0]))
        stat = os.stat(files[0])
        assert (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        assert index.store.file_by_path(str(images / "photo-002.PNG.jpeg")) is not None
        hits = index.search("@photo-003", k=5)
    assert [Path(h.path).name.split(".")[0] for h in hits] == [
        n.split(".")[0] for n in _neighbours(vectors, ids, "photo-003", 5)]

    indexed = run_cli("index", str(images), "--index", idx, *model_args, "--json")
    assert indexed.exit_code == 0, indexed.output
    report = json.loads(indexed.output)
    assert report["encoded"] == 0 and report["unchanged"] == 5, report


def test_dimension_mismatch_names_both_dimensions_and_the_model(tmp_path: Path, model_args: list[str],
                                                                model_kwargs: dict[str, str]) -> None:
    source = tmp_path / "wrong"
    _write_shards(source, _unit(np.random.default_rng(3), 4, 16),
                  {"image_path": [f"/nowhere/p{i}.jpg" for i in range(4)]}, shards=1)
    result = run_cli("import", str(source), "--index", str(tmp_path / "idx"), *model_args)
    assert result.exit_code == 1
    assert "16-dimensional" in result.output and f"{TINY_DIM}-dimensional" in result.output
    assert "clipdex-tiny" in result.output and "--model" in result.output
    assert not (tmp_path / "idx").exists()  # refused before an index was made

    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index, \
            pytest.raises(DimensionMismatch) as caught:
        import_embeddings(index, source)
    assert (caught.value.found, caught.value.expected) == (16, TINY_DIM)
    with Index.open(tmp_path / "idx") as index:
        assert index.store.models() == []  # an existing index is left as it was

    b32 = run_cli("import", str(source), "--index", str(tmp_path / "idx2"), "--model", "ViT-B-32")
    assert b32.exit_code == 1 and f"{B32_DIM}-dimensional" in b32.output and "ViT-B-32" in b32.output


def test_rows_of_zeros_or_nan_are_reported_and_skipped(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    vectors = _unit(np.random.default_rng(4), 6, TINY_DIM)
    vectors[1] = 0.0
    vectors[4, 3] = np.nan
    vectors[5] *= 7.0  # not a unit vector: normalised again
    paths = [f"/elsewhere/photos/p{i}.jpg" for i in range(6)]
    source = tmp_path / "source"
    _write_shards(source, vectors, {"image_path": paths}, shards=1)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        report = import_embeddings(index, source)
        assert report.imported == 4 and report.skipped == 2
        assert [(r.row, r.reason) for r in report.skipped_rows] == [
            (1, "a row of zeros"), (4, "not a finite vector (NaN or inf)")]
        found = index.searchable()
        assert sorted(found.paths) == [paths[i] for i in (0, 2, 3, 5)]
        assert np.allclose(np.linalg.norm(found.vectors, axis=1), 1.0, atol=1e-5)
        assert index.store.roots() == ["/elsewhere/photos"] and not index.store.missing_roots()


class _StopAfter:
    """A progress that presses Ctrl-C after ``chunks`` committed chunks."""

    def __init__(self, chunks: int) -> None:
        self.left = chunks

    def start(self, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        self.left -= 1
        if self.left <= 0:
            raise KeyboardInterrupt


def test_an_interrupted_import_resumes_after_its_finished_shards(tmp_path: Path,
                                                                 model_kwargs: dict[str, str]) -> None:
    vectors = _unit(np.random.default_rng(5), 9, TINY_DIM)
    paths = [f"/elsewhere/photos/p{i}.jpg" for i in range(9)]
    source = tmp_path / "source"
    _write_shards(source, vectors, {"image_path": paths}, shards=3)

    def counts(index: Index) -> tuple[int, int, int]:
        c = index.store.conn
        return (c.execute("SELECT count(*) FROM files").fetchone()[0],
                c.execute("SELECT count(*) FROM embeddings").fetchone()[0],
                c.execute("SELECT count(*) FROM imports").fetchone()[0])

    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        # Ctrl-C after shard 1's rows are committed, before it is recorded as finished.
        with pytest.raises(KeyboardInterrupt):
            import_embeddings(index, source, progress=_StopAfter(2))
        assert counts(index) == (6, 6, 1)

        again = import_embeddings(index, source)
        assert again.shards_done_before == 1 and again.shards_imported == 2
        assert again.vectors_added == 3 and again.reused == 3  # shard 1's vectors were already held
        assert counts(index) == (9, 9, 3)  # nothing twice

        assert import_embeddings(index, source).shards_done_before == 3  # all done: nothing read

        changed = source / "metadata" / "metadata_0.parquet"
        os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
        redone = import_embeddings(index, source)
        assert redone.shards_imported == 1 and redone.reused == 3 and redone.vectors_added == 0
        assert counts(index) == (9, 9, 3)
        hits = index.search("@p4", k=9)
    assert [Path(h.path).stem for h in hits] == _neighbours(vectors, [f"p{i}" for i in range(9)], "p4", 9)


def test_a_changed_shard_imported_again_replaces_its_vectors(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    rng = np.random.default_rng(8)
    vectors = _unit(rng, 9, TINY_DIM)
    names = [f"p{i}" for i in range(9)]
    source = tmp_path / "source"
    _write_shards(source, vectors, {"image_path": [f"/elsewhere/photos/{n}.jpg" for n in names]}, shards=3)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        import_embeddings(index, source)
        changed = vectors.copy()
        changed[3:6] = _unit(rng, 3, TINY_DIM)  # shard 1 written again with other vectors
        changed[4] = changed[7] + 0.05 * changed[4]  # p4 now close to p7
        np.save(source / "img_emb" / "img_emb_1.npy", changed[3:6].astype(np.float16))

        redone = import_embeddings(index, source)
        assert (redone.shards_imported, redone.replaced, redone.vectors_added, redone.reused) == (1, 3, 3, 0)
        hits = index.search("@p4", k=9)
        assert [Path(h.path).stem for h in hits] == _neighbours(changed, names, "p4", 9)
        assert index.store.reclaimable(index.model_record())[0] == 3  # the old vectors: for compact

        os.utime(source / "img_emb" / "img_emb_1.npy")  # the same vectors again: nothing new
        again = import_embeddings(index, source)
        assert (again.shards_imported, again.replaced, again.vectors_added, again.reused) == (1, 0, 0, 3)
    with Index.open(tmp_path / "idx") as index:
        hits = index.search("@p4", k=9)
    assert [Path(h.path).stem for h in hits] == _neighbours(changed, names, "p4", 9)


def test_an_import_maps_one_shard_at_a_time(tmp_path: Path, model_kwargs: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    _write_shards(source, _unit(np.random.default_rng(9), 9, TINY_DIM),
                  {"image_path": [f"/elsewhere/p{i}.jpg" for i in range(9)]}, shards=3)
    readers: list[interchange._ShardReader] = []
    mapped_at_once: list[int] = []
    real_import_shard = interchange._import_shard

    def import_shard(store: Store, record: object, reader: interchange._ShardReader, *args: object) -> object:
        readers.append(reader)
        done = real_import_shard(store, record, reader, *args)
        mapped_at_once.append(sum(r._vectors is not None for r in readers))
        return done

    monkeypatch.setattr(interchange, "_import_shard", import_shard)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        assert import_embeddings(index, source).imported == 9
    assert mapped_at_once == [1, 1, 1] and all(r._vectors is None for r in readers)


def test_relative_image_paths_need_images(tmp_path: Path, model_args: list[str]) -> None:
    images = tmp_path / "pictures"
    write_photos(images / "sub", 2)
    source = tmp_path / "source"
    _write_shards(source, _unit(np.random.default_rng(6), 2, TINY_DIM),
                  {"image_path": ["sub/photo-000.jpg", "sub/photo-001.jpg"]}, shards=1)
    idx = str(tmp_path / "idx")
    refused = run_cli("import", str(source), "--index", idx, *model_args)
    assert refused.exit_code == 1 and "relative paths" in refused.output and "--images" in refused.output

    result = run_cli("import", str(source), "--index", idx, *model_args, "--images", str(images), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["roots"] == [str(images / "sub")]
    with Index.open(idx) as index:
        record = index.store.file_by_path(str(images / "sub" / "photo-001.jpg"))
    assert record is not None and record.size == os.path.getsize(images / "sub" / "photo-001.jpg")


def test_import_refuses_a_folder_it_cannot_read(tmp_path: Path, model_args: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("import", str(empty), "--index", str(tmp_path / "idx"), *model_args)
    assert result.exit_code == 1 and "img_emb/" in result.output and "features.npy" in result.output
    no_model = run_cli("import", str(empty), "--index", str(tmp_path / "idx"))
    assert no_model.exit_code == 2 and "--model" in no_model.output


def test_export_leaves_out_folders_that_are_gone(labelled_index: Path, tmp_path: Path,
                                                 model_kwargs: dict[str, str]) -> None:
    import shutil

    other = tmp_path / "other"
    write_photos(other, 3, start=40)
    with Index.open(labelled_index, **model_kwargs) as index:
        index.add(other)
    shutil.rmtree(other)
    result = run_cli("export", str(tmp_path / "export"), "--index", str(labelled_index), "--json",
                     "--model", "clipdex-tiny")  # a custom model, by the name status shows
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 12
    other_model = run_cli("export", str(tmp_path / "export2"), "--index", str(labelled_index), "-m", "ViT-B-32")
    assert other_model.exit_code == 1 and "--model clipdex-tiny" in other_model.output


def test_taken_at_comes_from_the_metadata(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    paths = [f"/elsewhere/p{i}.jpg" for i in range(4)]
    columns: dict[str, list[object]] = {
        "image_path": paths,
        "DateTimeOriginal": ["2019:05:01 12:30:05", None, "0000:00:00 00:00:00", None],
        "exif": [None, json.dumps({"EXIF DateTimeOriginal": "2020:01:02 03:04:05"}), None, "not json"],
    }
    source = tmp_path / "source"
    _write_shards(source, _unit(np.random.default_rng(8), 4, TINY_DIM), columns, shards=1)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        import_embeddings(index, source)
        taken = dict(index.store.conn.execute("SELECT path, taken_at || ' ' || taken_source FROM files"))
    assert taken == {paths[0]: "2019-05-01T12:30:05 import", paths[1]: "2020-01-02T03:04:05 import",
                     paths[2]: None, paths[3]: None}  # not on disk, no date: none


def test_rows_that_name_no_image_are_skipped(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    source = tmp_path / "source"
    _write_shards(source, _unit(np.random.default_rng(9), 3, TINY_DIM),
                  {"url": ["http://h.example/a.jpg", None, ""], "caption": ["a", "b", "c"]}, shards=1)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        report = import_embeddings(index, source)
    assert report.imported == 1 and report.skipped == 2
    assert {r.reason for r in report.skipped_rows} == {"no image_path, url or id names its image"}


def test_indexing_an_import_folder_whose_images_are_elsewhere_says_so(tmp_path: Path) -> None:
    from clipdex import Index, PhotoFolderError
    from clipdex.store import Store

    store = Store.open(tmp_path / "idx", create=True)
    store.add_root("/data/elsewhere", kind="import")
    store.close()
    with Index.open(tmp_path / "idx") as index, pytest.raises(PhotoFolderError, match="nothing to index"):
        index.add("/data/elsewhere")


def test_metadata_that_names_no_image_is_refused_before_anything_is_written(tmp_path: Path,
                                                                           model_args: list[str]) -> None:
    source = tmp_path / "source"
    _write_shards(source, _unit(np.random.default_rng(7), 3, TINY_DIM), {"caption": ["a", "b", "c"]}, shards=1)
    result = run_cli("import", str(source), "--index", str(tmp_path / "idx"), *model_args)
    assert result.exit_code == 1 and "has no image_path or url column" in result.output, result.output
    assert "Traceback" not in result.output


def test_impossible_dates_are_no_dates() -> None:
    assert interchange.taken_at("2021-02-31") is None and interchange.taken_at("2021:13:01 00:00:00") is None
    assert interchange.taken_at("2024-02-29 10:00:00") == "2024-02-29T10:00:00"
