"""`clipdex duplicates` on an index of generated photos and altered copies (the tiny model): exact
copies and altered copies grouped with the keeper first, calibration stored and reused, the message
when the weights are missing, JSON/CSV shapes, --grid, --move-extras and --undo (and a refused undo),
and the web page's keeper marks (ASGI client)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipdex import Index
from clipdex.duplicates import DuplicateRule, find_duplicates, stored_rule
from tests.conftest import run_cli
from tests.images import photo, write_photos_with_copies

# Fixed for these tests: the tiny random model gives altered copies cosine > 0.9999 and different
# photos <= 0.998; generated photos differ in >= 26 pHash bits, their copies in <= 4.
RULE = ["--threshold", "0.9999", "--max-phash", "8"]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Eight generated photos; an exact copy of photo 0, a half-size PNG of photo 1 and a recompressed
    JPEG of photo 2 in copies/."""
    photos = write_photos_with_copies(tmp_path / "photos", 8)
    return photos


@pytest.fixture()
def index_dir(tmp_path: Path, folder: Path, model_args: list[str]) -> str:
    index = str(tmp_path / "idx")
    result = run_cli("index", str(folder), "--index", index, *model_args)
    assert result.exit_code == 0, result.output
    return index


def _groups(output: str) -> list[set[str]]:
    data = json.loads(output)
    return [{m["path"].rsplit("/", 1)[-1] for m in g["members"]} for g in data["groups"]]


def test_copies_are_grouped_with_the_keeper_first(index_dir: str) -> None:
    result = run_cli("duplicates", "--index", index_dir, *RULE, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert sorted(map(sorted, _groups(result.output))) == [
        ["photo-000.jpg", "same-0.jpg"], ["photo-001.jpg", "small-1.png"], ["photo-002.jpg", "recompressed-2.jpg"]]
    by_keeper = {g["members"][0]["path"].rsplit("/", 1)[-1]: g for g in data["groups"]}
    # the larger original is kept over its half-size copy; the older of two identical files
    assert set(by_keeper) == {"photo-000.jpg", "photo-001.jpg", "photo-002.jpg"}
    small = by_keeper["photo-001.jpg"]["members"][1]
    assert small["keeper"] is False and small["exact"] is False and small["pixels"] == 320 * 240
    assert small["cosine"] > 0.999 and small["phash_distance"] is not None and small["phash_distance"] <= 4
    same = by_keeper["photo-000.jpg"]["members"][1]
    assert same["exact"] is True and same["cosine"] == 1.0 and same["phash_distance"] == 0
    assert set(data) >= {"rule", "rule_note", "keeper_rule", "photos", "extras", "search", "seconds", "groups"}
    assert data["photos"] == 11 and data["extras"] == 3 and data["rule"]["source"].startswith("--threshold")
    assert set(small) >= {"id", "path", "keeper", "marked", "exact", "cosine", "phash_distance", "size", "width",
                          "height", "pixels", "taken_at"}


def test_csv_is_one_row_per_photo(index_dir: str) -> None:
    result = run_cli("duplicates", "--index", index_dir, *RULE, "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 6 and sum(r["keeper"] == "1" for r in rows) == 3
    assert list(rows[0]) == ["group", "keeper", "marked", "exact", "cosine", "phash_distance", "why", "id", "path",
                             "size", "width", "height", "pixels", "taken_at"]


def test_the_table_grid_and_exact_only(index_dir: str, tmp_path: Path) -> None:
    sheets = tmp_path / "sheets"
    result = run_cli("duplicates", "--index", index_dir, *RULE, "--grid", str(sheets))
    assert result.exit_code == 0, result.output
    assert "3 groups, 3 extra photos among 11 photos" in result.output
    assert "keep" in result.output and "most pixels" in result.output
    assert sorted(p.name for p in sheets.iterdir()) == ["group-0001.jpg", "group-0002.jpg", "group-0003.jpg"]
    exact = run_cli("duplicates", "--index", index_dir, "--exact-only", "--json", *RULE)
    assert exact.exit_code == 0, exact.output
    assert _groups(exact.output) == [{"photo-000.jpg", "same-0.jpg"}]


def test_calibration_is_stored_per_model_and_reused(index_dir: str, model_args: list[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdex import duplicates

    monkeypatch.setattr(duplicates, "MIN_CALIBRATION_PHOTOS", 2)  # 11 photos here: enough for the CLI's path
    first = run_cli("duplicates", "--index", index_dir, *model_args, "--calibration-photos", "4")
    assert first.exit_code == 0, first.output
    assert "calibrated on your photos:" in first.output and "estimated precision" in first.output
    with Index.open(index_dir) as index:
        rule = stored_rule(index)
    assert rule is not None and rule.source == "calibrated" and rule.copies == 4 * 7
    assert rule.precision is not None and rule.recall is not None and set(rule.by_alteration) >= {"jpeg", "crop"}
    again = run_cli("duplicates", "--index", index_dir, "--json")  # no weights needed now: the stored rule
    assert again.exit_code == 0, again.output
    data = json.loads(again.output)
    assert data["rule"]["source"] == "calibrated" and "calibrated on your photos on" in data["rule_note"]
    assert {"photo-000.jpg", "same-0.jpg"} in _groups(again.output)


def test_missing_weights_are_said_and_the_default_rule_used(index_dir: str, tiny_model: tuple[Path, Path],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdex import duplicates

    monkeypatch.setattr(duplicates, "MIN_CALIBRATION_PHOTOS", 2)
    config, weights = tiny_model
    gone = tmp_path / "gone.pt"
    shutil.copy(weights, gone)
    idx = str(tmp_path / "idx2")
    assert run_cli("index", str(tmp_path / "photos"), "--index", idx, "--model-config", str(config),
                   "--weights", str(gone)).exit_code == 0
    gone.unlink()
    result = run_cli("duplicates", "--index", idx, "--json")
    assert result.exit_code == 0, result.output
    assert "not calibrated" in result.output and "--weights FILE" in result.output
    assert json.loads(result.output[result.output.index("{"):])["rule"]["source"] == "default"
    refused = run_cli("duplicates", "--index", idx, "--calibrate", catch_exceptions=True)
    assert refused.exit_code == 1
    assert "weights are not at hand" in refused.output and "--threshold COSINE" in refused.output


def test_move_extras_and_undo_round_trip(index_dir: str, folder: Path, tmp_path: Path) -> None:
    aside = tmp_path / "aside"
    before = {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
    result = run_cli("duplicates", "--index", index_dir, *RULE, "--move-extras", str(aside))
    assert result.exit_code == 0, result.output
    assert "moved 3 photos" in result.output
    moved = {p.relative_to(aside) for p in aside.rglob("*") if p.is_file()}
    assert moved == {Path("photos/copies/same-0.jpg"), Path("photos/copies/small-1.png"),
                     Path("photos/copies/recompressed-2.jpg")}
    with Index.open(index_dir) as index:
        paths = {p.rsplit("/", 1)[-1] for p in index.indexed_paths()}
        assert "small-1.png" not in paths and len(paths) == 8  # search no longer shows them
        journal = (Path(index_dir) / "duplicates-journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["op"] for line in journal] == ["plan", "move", "move", "move", "end"]
    assert run_cli("duplicates", "--index", index_dir, *RULE, "--json").output.count('"id"') == 0  # none left
    back = run_cli("duplicates", "--index", index_dir, "--undo")
    assert back.exit_code == 0, back.output
    assert "put back 3 photos" in back.output
    assert {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()} == before
    assert not any(p.is_file() for p in aside.rglob("*"))
    with Index.open(index_dir) as index:
        assert len(index.indexed_paths()) == 11
    assert len(_groups(run_cli("duplicates", "--index", index_dir, *RULE, "--json").output)) == 3
    nothing = run_cli("duplicates", "--index", index_dir, "--undo", catch_exceptions=True)
    assert nothing.exit_code == 1 and "no move to undo" in nothing.output


def test_an_undo_is_refused_when_a_moved_file_changed(index_dir: str, folder: Path, tmp_path: Path) -> None:
    aside = tmp_path / "aside"
    assert run_cli("duplicates", "--index", index_dir, *RULE, "--move-extras", str(aside)).exit_code == 0
    changed = aside / "photos" / "copies" / "small-1.png"
    changed.write_bytes(changed.read_bytes() + b"edited")
    refused = run_cli("duplicates", "--index", index_dir, "--undo", catch_exceptions=True)
    assert refused.exit_code == 1
    assert "small-1.png changed since it was moved" in refused.output and "nothing was moved back" in refused.output
    assert not (folder / "copies" / "same-0.jpg").exists()  # nothing moved back, not even the others


def test_move_extras_refuses_a_folder_inside_the_photos(index_dir: str, folder: Path) -> None:
    refused = run_cli("duplicates", "--index", index_dir, *RULE, "--move-extras", str(folder / "dupes"),
                      catch_exceptions=True)
    assert refused.exit_code == 1 and "is inside the indexed folder" in refused.output
    assert (folder / "copies" / "small-1.png").exists()


def test_a_chain_of_near_copies_is_not_one_group(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    """Photos that drift step by step (each a copy of the next by pHash, the ends far apart) are split."""
    from PIL import Image

    chain = tmp_path / "chain"
    chain.mkdir()
    base = photo(5)
    other = photo(6)
    for step in range(5):  # a cross-fade from photo 5 to photo 6 in five steps
        Image.blend(base, other, step / 4).save(chain / f"step-{step}.jpg", quality=92)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(chain)
        rule = DuplicateRule(copy_cosine=1.01, band_cosine=0.0, max_phash=14, burst_seconds=None)
        report = find_duplicates(index, rule)
    assert report.groups  # neighbours along the chain are copies by this rule
    for group in report.groups:
        names = [m.path.rsplit("/", 1)[-1] for m in group.members]
        assert not {"step-0.jpg", "step-4.jpg"} <= set(names), names
        assert all(rule.accepts(0.5, m.phash_distance, None) for m in group.members)


@pytest.fixture()
def client(index_dir: str) -> Iterator[tuple[object, Index]]:
    from fastapi.testclient import TestClient

    from clipdex.web import create_app

    with Index.open(index_dir) as index:
        with index.lock:
            index.store.save_duplicate_rule(index.model_record().id,
                                            DuplicateRule(0.9999, 0.9, 8, source="calibrated").to_json())
        yield TestClient(create_app(index), base_url="http://127.0.0.1"), index


def _ready(http: object) -> None:
    """Wait for the background search of the duplicates page (a few seconds at most here)."""
    import time

    for _ in range(300):
        state = http.get("/api/duplicates/status").json()["state"]  # type: ignore[attr-defined]
        if state == "ready":
            return
        assert state == "finding"
        time.sleep(0.05)
    raise AssertionError("the duplicates were not found in 15 s")


def test_the_web_page_marks_a_keeper(client: tuple[object, Index], tmp_path: Path) -> None:
    http, index = client
    _ready(http)
    page = http.get("/duplicates")  # type: ignore[attr-defined]
    assert page.status_code == 200 and "Group 1" in page.text and "keep this" in page.text
    data = http.get("/api/duplicates").json()  # type: ignore[attr-defined]
    assert data["groups_found"] == 3
    group = next(g for g in data["groups"] if g["members"][0]["path"].endswith("photo-001.jpg"))
    small = group["members"][1]
    marked = http.post("/api/duplicates/keepers", json={"file_id": small["id"], "keep": True})  # type: ignore[attr-defined]
    assert marked.status_code == 200 and marked.json()["keep"] is True
    again = http.get("/api/duplicates").json()  # type: ignore[attr-defined]
    group = next(g for g in again["groups"] if any(m["id"] == small["id"] for m in g["members"]))
    assert group["members"][0]["id"] == small["id"] and group["members"][0]["marked"] is True
    # --move-extras keeps the marked copy and moves the suggested keeper instead
    result = run_cli("duplicates", "--index", str(index.path), "--move-extras", str(tmp_path / "aside"), "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "aside" / "photos" / "photo-001.jpg").exists()
    assert not (tmp_path / "aside" / "photos" / "copies" / "small-1.png").exists()
    bad = http.post("/api/duplicates/keepers", json={"file_id": 10_000, "keep": True})  # type: ignore[attr-defined]
    assert bad.status_code == 404 and "no indexed photo" in bad.json()["error"]


def test_a_large_component_is_split_around_each_photos_neighbours(index_dir: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdex import duplicates

    monkeypatch.setattr(duplicates, "MAX_COMPONENT", 1)  # every component counts as large
    with Index.open(index_dir) as index:
        report = find_duplicates(index, DuplicateRule(0.9999, 0.9, 8))
    assert sorted(sorted(m.path.rsplit("/", 1)[-1] for m in g.members) for g in report.groups) == [
        ["photo-000.jpg", "same-0.jpg"], ["photo-001.jpg", "small-1.png"], ["photo-002.jpg", "recompressed-2.jpg"]]


def test_burst_shots_are_grouped_by_their_exif_times(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    """Two different frames taken a second apart are one moment; the same two ten seconds apart are not."""
    from PIL import Image

    def shot(path: Path, seed: int, when: str) -> None:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = when  # DateTimeOriginal
        photo(seed).save(path, "JPEG", quality=90, exif=exif.tobytes())

    folder = tmp_path / "burst"
    folder.mkdir()
    shot(folder / "a.jpg", 10, "2021:06:01 12:00:00")
    shot(folder / "b.jpg", 11, "2021:06:01 12:00:01")
    shot(folder / "c.jpg", 12, "2021:06:01 12:00:30")
    rule = DuplicateRule(copy_cosine=1.01, band_cosine=0.0, max_phash=None, burst_seconds=2.0)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(folder)
        report = find_duplicates(index, rule)
    assert [sorted(m.path.rsplit("/", 1)[-1] for m in g.members) for g in report.groups] == [["a.jpg", "b.jpg"]]


def test_folders_and_destinations_are_checked_first(index_dir: str, folder: Path, tmp_path: Path) -> None:
    gone = run_cli("duplicates", "--index", index_dir, *RULE, "--folder", str(tmp_path / "nonexistent"),
                   catch_exceptions=True)
    assert gone.exit_code == 1 and "is not a folder of this index" in gone.output
    (tmp_path / "link").symlink_to(folder)
    for dry in ((), ("--dry-run",)):
        refused = run_cli("duplicates", "--index", index_dir, *RULE, "--move-extras", str(tmp_path / "link" / "d"),
                          *dry, catch_exceptions=True)
        assert refused.exit_code == 1 and "is inside the indexed folder" in refused.output, refused.output
    dry_run = run_cli("duplicates", "--index", index_dir, *RULE, "--move-extras", str(tmp_path / "aside"),
                      "--dry-run")
    assert dry_run.exit_code == 0 and "3 photos would move" in dry_run.output
    assert str(tmp_path / "aside" / "photos" / "copies" / "small-1.png") in dry_run.output
    assert not (tmp_path / "aside").exists()


def test_exact_only_never_calibrates(index_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdex import duplicates

    def no(*args: object, **kwargs: object) -> None:
        raise AssertionError("--exact-only calibrated (loaded the model)")

    monkeypatch.setattr(duplicates, "calibrate", no)
    result = run_cli("duplicates", "--index", index_dir, "--exact-only", "--json")  # no rule stored yet
    assert result.exit_code == 0, result.output
    assert _groups(result.output[result.output.index("{"):]) == [{"photo-000.jpg", "same-0.jpg"}]


def test_the_table_keeps_paths_whole_in_a_pipe(index_dir: str, folder: Path) -> None:
    result = run_cli("duplicates", "--index", index_dir, *RULE)  # CliRunner's stdout is not a terminal
    assert result.exit_code == 0, result.output
    whole = str(folder / "copies" / "recompressed-2.jpg")
    assert any(line.rstrip().endswith(whole) for line in result.output.splitlines()), result.output
    assert "why" in result.output


def test_a_keeper_mark_is_no_recompute_and_a_cli_move_is_noticed(client: tuple[object, Index],
                                                                  tmp_path: Path) -> None:
    http, index = client
    _ready(http)
    job = http.app.state.duplicates_job  # type: ignore[attr-defined]
    data = http.get("/api/duplicates").json()  # type: ignore[attr-defined]
    group = data["groups"][0]
    numbers = [g["id"] for g in data["groups"]]
    marked = http.post("/api/duplicates/keepers",  # type: ignore[attr-defined]
                       json={"file_id": group["members"][1]["id"], "keep": True})
    assert marked.status_code == 200
    again = http.get("/api/duplicates").json()  # type: ignore[attr-defined]
    assert job.runs == 1 and [g["id"] for g in again["groups"]] == numbers
    assert again["groups"][0]["members"][0]["id"] == group["members"][1]["id"]
    loner = next(f for f in index.store.files_by_ids(range(1, 40)).values() if f.path.endswith("photo-005.jpg"))
    refused = http.post("/api/duplicates/keepers", json={"file_id": loner.id, "keep": True})  # type: ignore[attr-defined]
    assert refused.status_code == 400 and "is in no group" in refused.json()["error"]
    moved = run_cli("duplicates", "--index", str(index.path), *RULE, "--move-extras", str(tmp_path / "aside"))
    assert moved.exit_code == 0, moved.output
    assert http.get("/api/duplicates").status_code in (200, 202)  # type: ignore[attr-defined]
    _ready(http)
    assert job.runs == 2
    assert http.get("/api/duplicates").json()["groups_found"] == 0  # type: ignore[attr-defined]


def test_a_read_only_index_is_not_calibrated_by_itself(index_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdex import duplicates
    from clipdex.store.catalog import Store

    opened = Store.open.__func__  # type: ignore[attr-defined]

    def read_only(cls: type, path: str, **kw: object) -> Store:
        store: Store = opened(cls, path, **{**kw, "readonly": True})
        return store

    monkeypatch.setattr(Store, "open", classmethod(read_only))

    def no(*args: object, **kwargs: object) -> None:
        raise AssertionError("a read-only index was calibrated without --calibrate")

    monkeypatch.setattr(duplicates, "calibrate", no)
    result = run_cli("duplicates", "--index", index_dir, "--json")
    assert result.exit_code == 0, result.output
    assert "index is read-only" in result.output and "using the default rule" in result.output
    assert json.loads(result.output[result.output.index("{"):])["rule"]["source"] == "default"
