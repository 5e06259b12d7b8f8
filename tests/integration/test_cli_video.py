"""Videos on the command line: moments listed with their time, found by example, capped, counted,
summarised per video by classify, drawn in grids; --no-video and --video-interval."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdex.grid import MISSING, PAD_PX, THUMB_PX, TITLE_PX
from clipdex.video import format_time
from tests.conftest import run_cli as run
from tests.images import write_photos
from tests.videos import slideshow_images, write_video

SECONDS_EACH = 3.0  # each picture of the slideshow is on screen this long
PICTURES = 5
INTERVAL = 1.0  # --video-interval of these tests: a moment is found within a second of its picture


@pytest.fixture()
def media(tmp_path: Path) -> Path:
    """Three photos and a slideshow video of five other pictures, 3 s each (picture i from i * 3 s)."""
    folder = tmp_path / "media"
    write_photos(folder, 3, start=40)
    write_video(folder / "clips" / "party.mp4", slideshow_images(PICTURES, width=192, height=144),
                seconds_each=SECONDS_EACH)
    return folder


@pytest.fixture()
def indexed(tmp_path: Path, media: Path, model_args: list[str]) -> tuple[str, str]:
    """(index folder, `clipdex index` output) of ``media`` at --video-interval 1."""
    idx = str(tmp_path / "idx")
    result = run("index", str(media), "--index", idx, "--video-interval", str(INTERVAL), *model_args)
    assert result.exit_code == 0, result.output
    return idx, result.output


def picture(tmp_path: Path, i: int) -> str:
    """Picture ``i`` of the slideshow as a file outside the indexed folder (a query by example)."""
    path = tmp_path / f"picture-{i}.png"
    slideshow_images(PICTURES, width=192, height=144)[i].save(path)
    return str(path)


def search_json(idx: str, *args: str) -> list[dict[str, object]]:
    result = run("search", *args, "--index", idx, "--json")
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output)["results"])


def moments_of(results: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in results if "t" in r]


def test_index_reports_videos_and_search_finds_the_moment_by_example(tmp_path: Path, media: Path,
                                                                     indexed: tuple[str, str]) -> None:
    idx, output = indexed
    found = re.search(r"videos\s+1\s+sampled: (\d+) moments kept from 0:00:1[45](?:\.\d)? of video, "
                      r"([\d.]+)× real time", output)
    assert found, output
    kept = int(found[1])
    assert PICTURES <= kept <= PICTURES * SECONDS_EACH / INTERVAL + 1
    assert float(found[2]) > 0
    video = str(media / "clips" / "party.mp4")
    for i in (1, 3):
        query = "@" + picture(tmp_path, i)
        table = run("search", query, "--index", idx, "-n", "3")
        assert table.exit_code == 0, table.output
        first = table.output.splitlines()[2]  # after the query line and the header
        shown = re.fullmatch(rf"\s+1\s+[-\d.]+\s+{re.escape(video)} @ (\d:\d\d:\d\d(?:\.\d)?)", first)
        assert shown, table.output
        best = search_json(idx, query, "-n", "3")[0]
        t = float(best["t"])  # type: ignore[arg-type]
        assert best["path"] == video and isinstance(best["video_id"], int) and best["id"] != best["video_id"]
        assert i * SECONDS_EACH - INTERVAL <= t < (i + 1) * SECONDS_EACH + INTERVAL
        assert shown[1] == format_time(t) and best["moment"] == f"party.mp4 @ {format_time(t)}"


def test_csv_carries_the_seconds_and_photos_leave_them_empty(indexed: tuple[str, str], media: Path) -> None:
    idx, _ = indexed
    result = run("search", "a photo", "--index", idx, "-n", "50", "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert list(rows[0]) == ["rank", "score", "id", "path", "t"]
    photos = [r for r in rows if not r["path"].endswith(".mp4")]
    moments = [r for r in rows if r["path"].endswith(".mp4")]
    assert len(photos) == 3 and all(r["t"] == "" for r in photos)
    assert moments and all(r["path"] == str(media / "clips" / "party.mp4") for r in moments)
    assert all(0 <= float(r["t"]) < PICTURES * SECONDS_EACH for r in moments)
    as_json = search_json(idx, "a photo", "-n", "50")
    assert [(r["id"], r.get("t")) for r in as_json] == \
        [(int(r["id"]), float(r["t"]) if r["t"] else None) for r in rows]
    assert all(set(r) == {"rank", "score", "id", "path", "name"} for r in as_json if "t" not in r)


def test_a_moment_is_a_query_by_its_seconds_or_its_time(indexed: tuple[str, str]) -> None:
    idx, _ = indexed
    moment = moments_of(search_json(idx, "a photo", "-n", "50"))[-1]
    t = float(moment["t"])  # type: ignore[arg-type]
    best = search_json(idx, f"@party.mp4@{t:g}", "-n", "1")[0]
    assert (best["id"], best["t"]) == (moment["id"], moment["t"])
    assert best["score"] == pytest.approx(1.0, abs=1e-4)
    minutes, seconds = divmod(t, 60)
    written = f"@party.mp4@{int(minutes)}:{seconds:04.1f}"  # 0:07.0 for 7 s
    assert search_json(idx, written, "-n", "1")[0]["id"] == moment["id"]
    no_time = run("search", "@party.mp4", "--index", idx)
    assert no_time.exit_code == 1 and "is a video: name a moment" in no_time.output


def test_per_video_caps_the_moments_of_each_video(indexed: tuple[str, str]) -> None:
    idx, _ = indexed
    everything = search_json(idx, "a photo", "-n", "50")
    assert len(moments_of(everything)) > 1
    capped = search_json(idx, "a photo", "-n", "50", "--per-video", "1")
    assert len(moments_of(capped)) == 1
    assert [r["path"] for r in capped if "t" not in r] == [r["path"] for r in everything if "t" not in r]
    bad = run("search", "a photo", "--index", idx, "--per-video", "0")
    assert bad.exit_code == 2 and "--per-video" in bad.output


def test_status_counts_photos_videos_and_moments_apart(indexed: tuple[str, str]) -> None:
    idx, output = indexed
    kept = int(re.search(r"sampled: (\d+) moments", output)[1])  # type: ignore[index]
    status = run("status", "--index", idx)
    assert status.exit_code == 0, status.output
    assert "photos   3 indexed, 0 failed" in status.output
    assert f"videos   1 indexed: {kept} moments searched like photos" in status.output
    data = json.loads(run("status", "--index", idx, "--json").output)
    assert (data["indexed"], data["videos"], data["moments"]) == (4, 1, kept)


def tile_colour(sheet_path: Path, x: int, y: int, size: int) -> tuple[float, ...]:
    with Image.open(sheet_path) as sheet:
        return tuple(np.asarray(sheet.convert("RGB").crop((x, y, x + size, y + size))).reshape(-1, 3).mean(0))


def test_grids_draw_the_frames_of_moments(tmp_path: Path, indexed: tuple[str, str]) -> None:
    idx, _ = indexed
    sheet = tmp_path / "moments.png"
    result = run("search", "@" + picture(tmp_path, 2), "--index", idx, "-n", "1", "--grid", str(sheet))
    assert result.exit_code == 0, result.output
    assert tile_colour(sheet, PAD_PX, PAD_PX, THUMB_PX) != pytest.approx(MISSING, abs=3)  # decoded, not grey

    classify = run("classify", "--name", "look", "--labels", "plain,busy", "--index", idx)
    assert classify.exit_code == 0, classify.output
    review = tmp_path / "review.png"
    result = run("review", "look", "--grid", str(review), "--per-label", "20", "--index", idx)
    assert result.exit_code == 0, result.output
    with Image.open(review) as drawn:
        assert drawn.width > 3 * 160
    # every tile of the first row is a photo or a frame that opened (a grey tile is one that did not)
    for col in range(3):
        x = PAD_PX + col * (160 + PAD_PX)
        assert tile_colour(review, x, PAD_PX + TITLE_PX, 160) != pytest.approx(MISSING, abs=3)


def test_classify_summarises_each_video_by_its_moments(tmp_path: Path, media: Path,
                                                       indexed: tuple[str, str]) -> None:
    idx, output = indexed
    kept = int(re.search(r"sampled: (\d+) moments", output)[1])  # type: ignore[index]
    video = str(media / "clips" / "party.mp4")
    table = tmp_path / "media.csv"
    table.write_text("file,note\nphoto-040.jpg,a photo\nparty.mp4,the party\n", encoding="utf-8")
    out = tmp_path / "pred.csv"
    args = ["classify", "--name", "time", "--labels", "day,night", "--index", idx]
    result = run(*args, "--out", str(out), "--metadata", str(table), "--key", "file")
    assert result.exit_code == 0, result.output
    assert f"3 photos and {kept} moments of 1 video" in result.output
    line = re.search(rf"^  {re.escape(video)}  ((?:day|night) \d+%(?:  (?:day|night) \d+%)?)  \({kept} moments\)$",
                     result.output, re.M)
    assert line, result.output
    assert "2 photos without a row" in result.output  # its moments are never expected to have rows

    data = json.loads(run(*args, "--json").output)[0]
    assert len(data["photos"]) == 3 + kept
    (summary,) = data["videos"]
    assert (summary["path"], summary["moments"]) == (video, kept)
    assert sum(summary["counts"].values()) == kept and sum(summary["shares"].values()) == pytest.approx(1.0)
    assert summary["label"] == max(summary["counts"], key=summary["counts"].get)
    assert line[1].startswith(f"{summary['label']} {round(100 * summary['share'])}%")

    with open(out, newline="", encoding="utf-8") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert len(rows) == 3 + kept + 1  # photos, moments, and the video's own row
    assert rows[video]["time"] == summary["label"]
    assert float(rows[video]["time_prob"]) == pytest.approx(summary["share"], abs=1e-6)
    with open(tmp_path / "media-pred.csv", newline="", encoding="utf-8") as f:
        joined = {r["file"]: r for r in csv.DictReader(f)}
    assert joined["party.mp4"]["time"] == summary["label"] and joined["photo-040.jpg"]["time"] in ("day", "night")


def test_no_video_indexes_the_photos_only(tmp_path: Path, media: Path, model_args: list[str]) -> None:
    idx = str(tmp_path / "idx")
    result = run("index", str(media), "--index", idx, "--no-video", *model_args)
    assert result.exit_code == 0, result.output
    assert re.search(r"new\s+3\b", result.output) and "sampled" not in result.output
    status = run("status", "--index", idx)
    assert "photos   3 indexed" in status.output and "videos" not in status.output
    assert moments_of(search_json(idx, "a photo", "-n", "20")) == []


def test_a_folder_of_videos_only_is_indexed(tmp_path: Path, model_args: list[str]) -> None:
    folder = tmp_path / "clips"
    write_video(folder / "walk.webm", slideshow_images(2, start=10), seconds_each=2.0)
    result = run("index", str(folder), "--index", str(tmp_path / "idx"), *model_args)
    assert result.exit_code == 0, result.output
    assert re.search(r"videos\s+1\s+sampled", result.output)
    found = search_json(str(tmp_path / "idx"), "a photo")
    assert found and all(r["path"] == str(folder / "walk.webm") for r in found)


@pytest.mark.parametrize("value", ["0.05", "0", "-1", "nan", "soon"])
def test_a_bad_video_interval_is_refused_clearly(tmp_path: Path, media: Path, model_args: list[str],
                                                 value: str) -> None:
    idx = tmp_path / "idx"
    result = run("index", str(media), "--index", str(idx), "--video-interval", value, *model_args)
    assert result.exit_code == 2
    assert "--video-interval" in result.output
    assert "0.1" in result.output or "not a valid float" in result.output or "finite" in result.output
    assert not idx.exists()  # refused before anything was made


def test_video_options_are_for_local_indexing(tmp_path: Path, media: Path) -> None:
    result = run("index", str(media), "--index", str(tmp_path / "idx"), "--engine", "ray", "--no-video")
    assert result.exit_code == 2 and "--no-video" in result.output and "local" in result.output
