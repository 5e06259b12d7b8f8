"""`clipdex index --engine ray` in Ray's local mode (`ray.init(num_cpus=2)`), with the tiny model.

The same files are sent and the same vectors and catalog rows result as with
local indexing; a killed encoder actor costs only its batches; a killed driver
leaves its shards, which the next run adopts before sending only the rest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipdex import Index
from clipdex.cluster import shards
from clipdex.errors import ClipdexError
from clipdex.indexer import IndexSettings
from tests.images import write_edge_cases, write_photos

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'clipdex[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is an extra: pip install 'clipdex[ray]'")

from clipdex.cluster.engine import RayOptions, index_on_ray  # noqa: E402  (after the skip)

ENCODER = "EncodeActor"
CATALOG_FIELDS = ("size", "mtime_ns", "width", "height", "taken_at", "status", "reason", "failure_kind")


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray for the module: two CPUs, and one GPU that is not there (Ray schedules by
    resources, so an actor asking for a GPU is placed; building a CUDA model then fails)."""
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _vectors(index: Index) -> dict[str, np.ndarray]:
    found = index.searchable()
    return {os.path.realpath(p): v for p, v in zip(found.paths, found.vectors)}


def _catalog(index: Index, root: Path) -> dict[str, tuple[Any, ...]]:
    return {p: tuple(getattr(f, name) for name in CATALOG_FIELDS)
            for p, f in index.store.files_under(str(root)).items()}


def _encoder_actors() -> list[dict[str, Any]]:
    import ray._private.state as state

    return [a for a in state.actors().values() if ENCODER in a["ActorClassName"]]


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    """Photos and every troublesome kind of file (corrupt, CMYK, rotated, a bomb…)."""
    folder = tmp_path / "mixed"
    write_photos(folder / "trip", 6)
    write_edge_cases(folder)
    return folder


def _trip(folder: Path) -> list[Path]:
    return sorted((folder / "trip").iterdir())


def test_same_vectors_catalog_and_diff_as_local_indexing(ray_local: None, mixed: Path, tmp_path: Path,
                                                          model_kwargs: dict[str, str]) -> None:
    with Index.open(tmp_path / "local", create=True, **model_kwargs) as index:
        local = index.add(mixed)
        local_vectors, local_catalog = _vectors(index), _catalog(index, mixed)
    with Index.open(tmp_path / "ray", create=True, **model_kwargs) as index:
        report = index_on_ray(index, str(mixed), options=RayOptions(shard_rows=5))
        ray_vectors, ray_catalog = _vectors(index), _catalog(index, mixed)
    assert report.encoded == local.encoded > 0 and report.shards_written >= 3
    assert sorted(f.path for f in report.failed) == sorted(f.path for f in local.failed)
    assert {f.path: f.kind for f in report.failed} == {f.path: f.kind for f in local.failed}
    assert ray_catalog == local_catalog  # sizes, mtimes, upright sizes, EXIF dates, failures and why
    assert set(ray_vectors) == set(local_vectors)
    cosines = [float(ray_vectors[p] @ local_vectors[p]) for p in local_vectors]
    assert min(cosines) >= 0.9999

    # Nothing is sent again; a local run of the same folder finds everything unchanged too.
    with Index.open(tmp_path / "ray") as index:
        again = index_on_ray(index, str(mixed))
        assert (again.new, again.changed, again.encoded, again.shards_written) == (0, 0, 0, 0)
        assert again.unchanged == len(ray_catalog)
        assert index.add(mixed).encoded == 0
    # Only what changed is sent; what is gone leaves the index; a renamed photo keeps its vector
    # without being decoded (its content hash is held), with its upright size and EXIF date.
    changed, gone, renamed = _trip(mixed)[:3]
    write_photos(tmp_path / "other", 1, start=50)[0].replace(changed)
    gone.unlink()
    moved = renamed.rename(renamed.with_name("renamed.jpg"))
    with Index.open(tmp_path / "ray") as index:
        update = index_on_ray(index, str(mixed))
        assert (update.changed, update.encoded, update.removed, update.new, update.reused) == (1, 1, 2, 1, 1)
        catalog = _catalog(index, mixed)
        assert str(gone) not in catalog and str(renamed) not in catalog
        assert catalog[str(moved)][2:] == local_catalog[str(renamed)][2:]  # width, height, date, status…
        assert len(_vectors(index)) == len(ray_vectors) - 1


def test_list_and_prefix_sources_and_shards_clipdex_import_reads(ray_local: None, tmp_path: Path,
                                                                model_kwargs: dict[str, str]) -> None:
    photos = tmp_path / "photos"
    paths = write_photos(photos, 6)
    (photos / "broken.jpg").write_bytes(b"not a photo")
    listed = tmp_path / "some.txt"
    listed.write_text("# two photos, one twice, one missing\n" + "\n".join(
        [str(paths[0]), f"photos/{paths[1].name}", str(paths[0]), str(photos / "missing.jpg")]) + "\n")
    out, out2 = tmp_path / "shards", tmp_path / "shards2"
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        report = index_on_ray(index, str(listed), options=RayOptions(out=str(out)))
        assert (report.source_kind, report.encoded, report.new) == ("list", 2, 2)
        assert [(f.path, f.kind) for f in report.failed] == [(str(photos / "missing.jpg"), "transient")]
        # A list of URIs (file:// read through pyarrow by the workers, as s3:// would be): its files
        # are URIs, so the two listed photos are new paths whose content the index holds: reused.
        uris = tmp_path / "uris.txt"
        uris.write_text("".join(f"file://{p}\n" for p in sorted(photos.iterdir())))
        with pytest.raises(ClipdexError, match="holds the shards of another SOURCE"):
            index_on_ray(index, str(uris), options=RayOptions(out=str(out)))
        prefix = index_on_ray(index, str(uris), options=RayOptions(out=str(out2)))
        assert (prefix.source_kind, prefix.new, prefix.encoded, prefix.reused) == ("list", 7, 4, 2)
        assert [f.path for f in prefix.failed] == [f"file://{photos}/broken.jpg"]
    manifest = shards.read_manifest(str(out))
    assert manifest is not None and manifest["format"] == shards.FORMAT
    assert manifest["model"]["precision"] == "fp32"
    # The shards are clip-retrieval's layout: `clipdex import` adopts them into another index.
    from clipdex.interchange import import_embeddings

    with Index.open(tmp_path / "imported", create=True, **model_kwargs) as index:
        first = import_embeddings(index, out)
        assert (first.imported, first.vectors_added, first.failed) == (2, 2, 0)
        second = import_embeddings(index, out2)
        assert (second.imported, second.vectors_added, second.reused, second.failed) == (6, 4, 2, 1)


def test_an_encoder_actor_killed_mid_run_costs_only_its_batches(ray_local: None, tmp_path: Path,
                                                                model_kwargs: dict[str, str]) -> None:
    photos = tmp_path / "photos"
    write_photos(photos, 60)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_the_encoder_after_the_first_shard() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            time.sleep(0.02)
            if not any((out / shards.METADATA_DIR).glob("*.parquet")):
                continue
            for actor in _encoder_actors():
                if actor["State"] == "ALIVE":
                    os.kill(actor["Pid"], signal.SIGKILL)
                    killed.append(actor["Pid"])
                    return

    killer = threading.Thread(target=kill_the_encoder_after_the_first_shard, daemon=True)
    killer.start()
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        report = index_on_ray(index, str(photos), options=RayOptions(out=str(out), shard_rows=4),
                              settings=IndexSettings(batch_size=2))
        killer.join()
        assert killed, "the encoder actor was never seen alive after a shard"
        assert (report.encoded, report.reused, report.indexed_total, report.failed) == (60, 0, 60, [])
        assert len(_vectors(index)) == 60
    assert any(a["NumRestarts"] >= 1 for a in _encoder_actors())
    import pyarrow.parquet as pq  # every file in exactly one shard: none lost, none written twice

    names = [n for f in sorted((out / shards.METADATA_DIR).glob("*.parquet"))
             for n in pq.read_table(f, columns=["image_path"]).column(0).to_pylist()]
    assert sorted(names) == sorted(str(p) for p in photos.iterdir())


def test_a_killed_driver_leaves_its_shards_and_the_next_run_sends_only_the_rest(
        tmp_path: Path, model_args: list[str], clipdex_home: Path) -> None:
    photos = tmp_path / "photos"
    write_photos(photos, 40)
    out, index = tmp_path / "out", tmp_path / "idx"
    command = [sys.executable, "-m", "clipdex", "index", str(photos), "--index", str(index), *model_args,
               "--engine", "ray", "--out", str(out), "--shard-rows", "4", "--batch-size", "2", "--json"]
    env = {**os.environ, "CLIPDEX_HOME": str(clipdex_home), "CLIPDEX_PRECISION": "fp32"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list((out / shards.METADATA_DIR).glob("*.parquet")) and time.monotonic() < deadline:
        assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    written = len(list((out / shards.METADATA_DIR).glob("*.parquet")))
    assert 1 <= written < 10
    # Half a shard, as a writer killed between its two renames leaves it: dropped, never adopted.
    half = out / shards.EMBEDDINGS_DIR / "img_emb_0000000000000000001.npy"
    np.save(half, np.ones((3, 8), np.float16))
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout)
    assert report["resumed"] >= written  # (at least one file a shard; a shard may finish as the driver dies)
    assert (report["unchanged"], report["new"]) == (report["resumed"], report["encoded"])  # none sent again
    assert (report["resumed"] + report["encoded"], report["reused"]) == (40, 0)
    assert report["indexed_total"] == 40 and not report["failed"]
    assert not half.exists()


def test_an_actor_that_cannot_build_its_model_says_why(ray_local: None, photos: Path, tmp_path: Path,
                                                        model_kwargs: dict[str, str]) -> None:
    """A GPU worker on a machine without CUDA: Ray places the actor (the GPU is a resource it
    was told of), the model cannot be built there, and the error says so, not a Ray traceback."""
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index, \
            pytest.raises(ClipdexError, match=r"Ray pipeline stopped: device .cuda. was asked for but CUDA") as failed:
        index_on_ray(index, str(photos), options=RayOptions(gpus_per_worker=1, out=str(tmp_path / "out")))
    assert "run the same command again" in str(failed.value)


def test_an_output_folder_of_another_model_or_a_file_is_refused(ray_local: None, photos: Path, tmp_path: Path,
                                                                 model_kwargs: dict[str, str]) -> None:
    out = tmp_path / "out"
    shards.write_manifest(str(out), shards.manifest("ViT-B-32@openai", "ViT-B-32", 512, "fp32", "/elsewhere"))
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        with pytest.raises(ClipdexError, match="holds shards of ViT-B-32"):
            index_on_ray(index, str(photos), options=RayOptions(out=str(out)))
        with pytest.raises(ClipdexError, match="is a file, not a folder"):
            index_on_ray(index, str(photos), options=RayOptions(out=str(a_file)))


def test_a_file_uri_of_this_machine_is_its_folder(ray_local: None, photos: Path, tmp_path: Path,
                                                  model_kwargs: dict[str, str]) -> None:
    """file:///x is the folder /x: the same paths and root, not a second copy of every photo."""
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        again = index_on_ray(index, f"file://{photos}/")
        assert (again.source_kind, again.new, again.encoded, again.unchanged) == ("folder", 0, 0, 12)
        assert index.store.roots() == [str(photos)]


def test_a_remote_output_is_copied_here_adopted_and_its_copies_dropped(
        ray_local: None, tmp_path: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--out in object storage: the driver copies each finished shard to the index folder, adopts
    it there, and after the run deletes the copies, keeping the names adopted (a file:// URI
    taken as remote stands in for s3://, which this machine cannot reach)."""
    photos = tmp_path / "photos"
    write_photos(photos, 5)
    out = f"file://{tmp_path / 'bucket' / 'shards'}"
    monkeypatch.setattr(shards, "is_local", lambda uri: False)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        first = index_on_ray(index, str(photos), options=RayOptions(out=out, shard_rows=2))
        assert (first.encoded, first.indexed_total, first.shards_written) == (5, 5, 3)
        mirrors = list((index.path / "ray-shards" / "mirror").iterdir())
        assert [m.suffix for m in mirrors] == [".adopted"]  # the copies went; the ledger names the 3 shards
        assert len(mirrors[0].read_text().split()) == 3
        write_photos(photos, 1, start=40)
        second = index_on_ray(index, str(photos), options=RayOptions(out=out, shard_rows=2))
        assert (second.encoded, second.unchanged, second.indexed_total) == (1, 5, 6)
        assert len(mirrors[0].read_text().split()) == 4
