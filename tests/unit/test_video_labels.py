"""Per-video summaries of a classification (clipdex.video_labels), and the rows they add to tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from clipdex.classify import Classification
from clipdex.export import join_metadata, write_predictions
from clipdex.grid import tile_name
from clipdex.labels import UNCERTAIN, make_label_set
from clipdex.video import frame_path
from clipdex.video_labels import VideoLabels, summarise, video_labels

PARTY = "/v/party.mp4"
WALK = "/v/walk.mov"


def classification(rows: list[tuple[int, str, str]], labels: tuple[str, ...] = ("day", "night"),
                   truth: list[str] | None = None, multi_label: bool = False) -> Classification:
    """A hand-made result: (file id, path, predicted label) per row; probabilities favour the prediction."""
    n, k = len(rows), len(labels)
    probs = np.full((n, k), 0.1 / max(1, k - 1), dtype=np.float32)
    for i, (_, _, label) in enumerate(rows):
        for name in label.split(";"):
            if name in labels:
                probs[i, labels.index(name)] = 0.9
    return Classification(label_set=make_label_set("time", list(labels), multi_label=multi_label),
                          file_ids=[r[0] for r in rows], paths=[r[1] for r in rows], probs=probs,
                          predicted=[r[2] for r in rows], confidence=probs.max(axis=1), truth=truth)


def party_rows() -> list[tuple[int, str, str]]:
    """A photo, party.mp4 (id 10) with 5 moments at night and 3 by day, walk.mov (id 20) with 2 by day."""
    rows = [(1, "/p/a.jpg", "day")]
    rows += [(11 + i, frame_path(PARTY, 2.0 * i), "night" if i < 5 else "day") for i in range(8)]
    rows += [(21 + i, frame_path(WALK, 2.0 * i), "day") for i in range(2)]
    return rows


def owners(rows: list[tuple[int, str, str]]) -> dict[int, int]:
    return {file_id: (10 if PARTY in path else 20) for file_id, path, _ in rows if "#t=" in path}


def test_each_video_gets_the_share_of_its_moments_per_label() -> None:
    rows = party_rows()
    summaries = summarise(classification(rows), owners(rows), {10: PARTY, 20: WALK})
    assert [s.path for s in summaries] == [PARTY, WALK]  # photos are left out; videos by path
    party, walk = summaries
    assert (party.video_id, party.moments, party.counts) == (10, 8, {"day": 3, "night": 5})
    assert party.shares == {"night": 5 / 8, "day": 3 / 8}  # most first
    assert party.majority == ("night", 5 / 8)
    assert party.describe() == "night 62%  day 38%  (8 moments)"
    assert walk.describe() == "day 100%  (2 moments)"
    data = party.to_dict()
    assert (data["id"], data["path"], data["moments"], data["label"]) == (10, PARTY, 8, "night")
    assert data["share"] == 0.625 and data["shares"] == {"night": 0.625, "day": 0.375}
    assert data["counts"] == {"day": 3, "night": 5}


def test_a_correction_wins_and_uncertain_moments_count_apart() -> None:
    rows = party_rows()
    truth = [""] * len(rows)
    truth[1] = "day"  # a person said the first night moment is day: 4 night, 4 day
    rows[2] = (rows[2][0], rows[2][1], UNCERTAIN)  # below --min-prob
    party = summarise(classification(rows, truth=truth), owners(rows), {10: PARTY, 20: WALK})[0]
    assert party.counts == {"day": 4, "night": 3, UNCERTAIN: 1}
    assert party.moments == 8
    assert party.majority == ("day", 0.5)


def test_a_multi_label_set_counts_each_label_a_moment_has() -> None:
    rows = [(11, frame_path(PARTY, 0.0), "people;outdoor"), (12, frame_path(PARTY, 2.0), "people"),
            (13, frame_path(PARTY, 4.0), "")]
    party = summarise(classification(rows, labels=("people", "outdoor"), multi_label=True),
                      {11: 10, 12: 10, 13: 10}, {10: PARTY})[0]
    assert party.counts == {"people": 2, "outdoor": 1}  # a moment with no label counts as a moment only
    assert party.shares == {"people": 2 / 3, "outdoor": 1 / 3}  # shares of moments: need not add up to 1
    assert party.describe() == "people 67%  outdoor 33%  (3 moments)"


def test_tiny_and_nearly_whole_shares_never_read_as_0_or_100_percent() -> None:
    video = VideoLabels(1, PARTY, 1000, {"night": 999, "day": 1})
    assert video.describe() == "night >99%  day <1%  (1000 moments)"
    assert video.describe(most=1) == "night >99%  (+1 more)  (1000 moments)"
    assert VideoLabels(1, PARTY, 1, {"day": 1}).describe() == "day 100%  (1 moment)"


def test_photos_only_give_no_summary() -> None:
    rows = [(1, "/p/a.jpg", "day"), (2, "/p/b.jpg", "night")]
    assert summarise(classification(rows), {}, {}) == []


def test_a_video_row_in_the_predictions_table_holds_its_majority_and_shares(tmp_path: Path) -> None:
    rows = party_rows()
    result = classification(rows)
    videos = [summarise(result, owners(rows), {10: PARTY, 20: WALK})]
    out = tmp_path / "pred.csv"
    written = write_predictions([result], out, top_k=2, videos=videos)
    assert written == len(rows) + 2  # every moment is a row, and each video one more
    with open(out, newline="", encoding="utf-8") as f:
        table = {r["path"]: r for r in csv.DictReader(f)}
    party = table[PARTY]
    assert (party["photo_id"], party["time"], party["time_prob"]) == ("party", "night", "0.625000")
    assert (party["time_prob_day"], party["time_prob_night"]) == ("0.375000", "0.625000")
    assert party["time_top"] == "night:0.625;day:0.375"
    assert table[WALK]["time"] == "day" and table[WALK]["time_prob"] == "1.000000"
    moment = table[frame_path(PARTY, 0.0)]
    assert moment["time"] == "night" and float(moment["time_prob"]) == pytest.approx(0.9)


def test_the_users_row_naming_a_video_gets_its_majority_label(tmp_path: Path) -> None:
    rows = party_rows()
    result = classification(rows)
    videos = [summarise(result, owners(rows), {10: PARTY, 20: WALK})]
    table = tmp_path / "media.csv"
    table.write_text("file,note\na.jpg,cake\nparty.mp4,birthday\nmissing.mp4,\n", encoding="utf-8")
    out = tmp_path / "joined.csv"
    report = join_metadata([result], table, "file", out, videos=videos)
    assert (report.rows, report.matched, report.rows_without_image) == (3, 2, 1)
    assert report.images_without_row == [WALK]  # a video without a row is listed; its moments never are
    with open(out, newline="", encoding="utf-8") as f:
        joined = list(csv.DictReader(f))
    assert [(r["file"], r["time"], r["time_prob"]) for r in joined] == [
        ("a.jpg", "day", "0.900000"), ("party.mp4", "night", "0.625000"), ("missing.mp4", "", "")]


def test_a_grid_names_a_moment_by_its_video_and_time() -> None:
    assert tile_name(frame_path(PARTY, 83.5)) == "party.mp4 @ 0:01:23.5"
    assert tile_name(frame_path(PARTY, 3.0)) == "party.mp4 @ 0:00:03"
    assert tile_name("/p/trip/c.jpg") == "c.jpg"
    assert tile_name("/p/odd#t=3.000") == "odd#t=3.000"  # not a video's frame: the file's own name


def test_the_catalog_says_which_rows_are_moments_of_which_video(tmp_path: Path) -> None:
    from clipdex.store import NewFile, Store
    from clipdex.store.catalog import VideoFrame, VideoSampling

    store = Store.open(tmp_path / "idx", create=True)
    try:
        ids = {}
        for path, times in ((PARTY, (0.0, 2.0, 4.0)), (WALK, (0.0,))):
            video_id = store.commit_video(NewFile(path, 1000, 1, f"sha-{path}", 160, 120),
                                          [VideoFrame(t, f"sha-{path}@{t:.3f}") for t in times],
                                          VideoSampling(6.0, 2.0, "h264", 10.0))
            ids[path] = (video_id, [f.id for f in store.video_frames(video_id)])
        party_id, party_frames = ids[PARTY]
        walk_id, walk_frames = ids[WALK]
        rows = [(1000, "/p/a.jpg", "day"),  # not in the catalog: a photo's id is never looked up
                (1001, "/p/clip.mp4#t=1.000", "day"),  # looks like a frame, is not in the catalog: left out
                *[(i, frame_path(PARTY, t), label) for i, t, label in
                  zip(party_frames, (0.0, 2.0, 4.0), ("night", "night", "day"))],
                (walk_frames[0], frame_path(WALK, 0.0), "day")]
        party, walk = video_labels(store, classification(rows))
        assert (party.video_id, party.path, party.moments, party.counts) == (party_id, PARTY, 3, {"day": 1, "night": 2})
        assert (walk.video_id, walk.path, walk.moments) == (walk_id, WALK, 1)
        assert video_labels(store, classification([(1000, "/p/a.jpg", "day")])) == []
    finally:
        store.close()
