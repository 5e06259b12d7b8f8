"""Videos in an indexed folder: sampled into moments, found by example, incremental and resumable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clipdex import Index
from clipdex.errors import QueryError
from clipdex.indexer import IndexSettings
from clipdex.video import frame_path
from tests.images import write_photos
from tests.videos import slideshow_images, write_corrupt, write_truncated, write_video

SECONDS_EACH = 3.0
INTERVAL = 1.0


@pytest.fixture()
def media(tmp_path: Path) -> Path:
    """A folder with three photos and a slideshow video of five other pictures, 3 s each."""
    folder = tmp_path / "media"
    write_photos(folder, 3, start=40)
    write_video(folder / "clips" / "party.mp4", slideshow_images(5, width=192, height=144),
                seconds_each=SECONDS_EACH)
    return folder


def open_index(tmp_path: Path, model_kwargs: dict[str, str]) -> Index:
    return Index.open(tmp_path / "idx", create=True, **model_kwargs)


def settings(**kw: object) -> IndexSettings:
    return IndexSettings(video_interval=INTERVAL, **kw)  # type: ignore[arg-type]


def test_a_video_is_indexed_as_moments_found_by_example(tmp_path: Path, media: Path,
                                                        model_kwargs: dict[str, str]) -> None:
    pictures = slideshow_images(5, width=192, height=144)
    with open_index(tmp_path, model_kwargs) as index:
        report = index.add(media, settings=settings())
        assert report.videos == 1 and not report.failed
        assert 5 <= report.frames <= 5 * SECONDS_EACH / INTERVAL + 1  # scenes kept, static stretches merged
        assert report.video_seconds == pytest.approx(5 * SECONDS_EACH, abs=0.5)
        counts = index.store.counts()
        assert counts["ok"] == 4 and counts["videos"] == 1 and counts["frames"] == report.frames
        for i in (1, 3):
            query = tmp_path / f"picture-{i}.png"
            pictures[i].save(query)
            best = index.search(f"@{query}", k=3)[0]
            assert best.path.endswith("party.mp4") and best.t is not None and best.video_id is not None
            assert i * SECONDS_EACH - INTERVAL <= best.t < (i + 1) * SECONDS_EACH + INTERVAL
            assert best.image_path == frame_path(best.path, best.t)


def test_moments_fold_and_cap_per_video(tmp_path: Path, media: Path, model_kwargs: dict[str, str]) -> None:
    with open_index(tmp_path, model_kwargs) as index:
        index.add(media, settings=settings())
        everything = index.search("a photo", k=50)
        moments = [r for r in everything if r.t is not None]
        assert moments, everything
        for a in moments:  # no moment is listed twice: same shot, within MOMENT_SECONDS of a better one
            assert sum(1 for b in moments if b.t == a.t) == 1
        capped = index.search("a photo", k=50, per_video=1)
        assert sum(1 for r in capped if r.t is not None) == 1
        assert [r.path for r in capped if r.t is None] == [r.path for r in everything if r.t is None]
        assert [r.rank for r in capped] == list(range(1, len(capped) + 1))
        # pages agree with one long list
        first, second = index.search("a photo", k=3), index.search("a photo", k=3, offset=3)
        assert [r.file_id for r in first + second] == [r.file_id for r in everything[:6]]


def test_a_moment_queries_by_example_and_the_timeline_scores_a_video(tmp_path: Path, media: Path,
                                                                     model_kwargs: dict[str, str]) -> None:
    with open_index(tmp_path, model_kwargs) as index:
        index.add(media, settings=settings())
        video = next(r for r in index.search("a photo", k=50) if r.t is not None)
        assert video.video_id is not None
        frames = index.moments(video.video_id)
        assert [f.t for f in frames] == sorted(f.t for f in frames if f.t is not None)
        kept = frames[2]
        assert kept.t is not None
        best = index.search(f"@party.mp4@{kept.t}", k=1)[0]
        assert best.file_id == kept.file_id and best.score == pytest.approx(1.0, abs=1e-4)
        between = index.search(f"@party.mp4@{kept.t + 0.4:.1f}", k=1)[0]  # no kept frame there: decoded
        assert between.path.endswith("party.mp4")
        scored = index.moments(video.video_id, f"@party.mp4@{kept.t}")
        assert scored[0].file_id == kept.file_id and scored[0].score >= scored[-1].score
        with pytest.raises(QueryError, match="is a video: name a moment"):
            index.search("@party.mp4")
        with pytest.raises(QueryError, match="past its end"):
            index.search("@party.mp4@1:00:00")
        for bad in ("1:99", "abc"):
            with pytest.raises(QueryError, match=r"is not a time of party\.mp4"):
                index.search(f"@party.mp4@{bad}")
        record, sampling = index.video(video.video_id)
        assert record.path.endswith("party.mp4") and sampling.interval == INTERVAL


def test_unchanged_moved_and_copied_videos_are_not_decoded_again(tmp_path: Path, media: Path,
                                                                model_kwargs: dict[str, str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with open_index(tmp_path, model_kwargs) as index:
        first = index.add(media, settings=settings())
        import clipdex.video_sampling as sampling

        def no_decoding(*args: object, **kw: object) -> None:
            raise AssertionError("a video was decoded again")

        monkeypatch.setattr(sampling, "sample", no_decoding)
        again = index.add(media, settings=settings())
        assert again.encoded == 0 and again.videos == 0 and again.unchanged == 4
        shutil.move(media / "clips" / "party.mp4", media / "party-moved.mp4")
        shutil.copy(media / "party-moved.mp4", media / "party-copy.mp4")
        moved = index.add(media, settings=settings())
        assert moved.encoded == 0 and moved.videos == 0 and moved.reused == 2 and moved.removed == 1
        assert index.store.counts()["frames"] == 2 * first.frames


def test_another_interval_samples_again_and_no_video_leaves_videos_alone(tmp_path: Path, media: Path,
                                                                        model_kwargs: dict[str, str]) -> None:
    with open_index(tmp_path, model_kwargs) as index:
        index.add(media, settings=settings())
        frames = index.store.counts()["frames"]
        photos_only = index.add(media, settings=settings(videos=False))
        assert photos_only.videos == 0 and photos_only.removed == 0
        assert index.store.counts()["frames"] == frames
        coarser = index.add(media, settings=IndexSettings(video_interval=SECONDS_EACH * 2))
        assert coarser.videos == 1 and coarser.frames <= frames


def test_bad_videos_are_recorded_and_skipped(tmp_path: Path, media: Path, model_kwargs: dict[str, str]) -> None:
    good = media / "clips" / "party.mp4"
    write_truncated(media / "cut.mp4", good, keep=0.4)
    write_corrupt(media / "noise.mov")
    with open_index(tmp_path, model_kwargs) as index:
        report = index.add(media, settings=settings())
        failed = {Path(f.path).name: f.reason for f in report.failed}
        assert set(failed) == {"cut.mp4", "noise.mov"}, failed
        assert all(failed.values())
        assert report.videos == 1 and index.store.counts()["failed"] == 2
        again = index.add(media, settings=settings())  # permanent failures are not tried again
        assert again.videos == 0 and {Path(f.path).name for f in again.failed} == {"cut.mp4", "noise.mov"}


def test_a_run_stopped_midway_keeps_its_frames_and_resumes(tmp_path: Path, media: Path,
                                                           model_kwargs: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from clipdex.indexer import Indexer

    real = Indexer._flush_frames
    calls = {"n": 0}

    def flush_then_stop(self: Indexer, *args: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Indexer, "_flush_frames", flush_then_stop)
    with open_index(tmp_path, model_kwargs) as index:
        with pytest.raises(KeyboardInterrupt):
            index.add(media, settings=settings(batch_size=4))
        assert index.store.counts().get("videos", 0) == 0  # the video is not recorded half-done
        monkeypatch.setattr(Indexer, "_flush_frames", real)
        resumed = index.add(media, settings=settings(batch_size=4))
        assert resumed.videos == 1
        assert resumed.encoded == resumed.frames - 4  # the first batch's frames were kept


def test_a_deleted_video_takes_its_moments_with_it(tmp_path: Path, media: Path,
                                                   model_kwargs: dict[str, str]) -> None:
    with open_index(tmp_path, model_kwargs) as index:
        index.add(media, settings=settings())
        (media / "clips" / "party.mp4").unlink()
        report = index.add(media, settings=settings())
        assert report.removed == 1
        counts = index.store.counts()
        assert "frames" not in counts and counts["ok"] == 3
        assert all(r.t is None for r in index.search("a photo", k=20))


def test_a_search_keeps_photos_only_or_moments_only(tmp_path: Path, media: Path, model_kwargs: dict[str, str]) -> None:
    from clipdex.search.filters import SearchFilter

    with open_index(tmp_path, model_kwargs) as index:
        index.add(media, settings=settings())
        photos = index.search("a photo", k=20, filters=SearchFilter(media="photos"))
        moments = index.search("a photo", k=20, filters=SearchFilter(media="videos"))
        assert len(photos) == 3 and all(r.t is None for r in photos)
        assert moments and all(r.t is not None for r in moments)


def test_a_video_that_turns_failed_loses_its_moments(tmp_path: Path, media: Path, model_kwargs: dict[str, str]) -> None:
    video = media / "clips" / "party.mp4"
    with open_index(tmp_path, model_kwargs) as index:
        index.add(media, settings=settings())
        video.unlink()
        video.symlink_to(tmp_path / "nowhere.mp4")  # the walk records a broken link as a failure row
        report = index.add(media, settings=settings())
        assert [Path(f.path).name for f in report.failed] == ["party.mp4"]
        counts = index.store.counts()
        assert "frames" not in counts and counts["failed"] == 1
        assert all(r.t is None for r in index.search("a photo", k=20))


def test_copies_keep_their_own_moments_and_remove_counts_files(tmp_path: Path, media: Path,
                                                                model_kwargs: dict[str, str]) -> None:
    with open_index(tmp_path, model_kwargs) as index:
        first = index.add(media, settings=settings())
        for n in (1, 2):
            shutil.copy(media / "clips" / "party.mp4", media / f"copy-{n}.mp4")
        copies = index.add(media, settings=settings())
        assert copies.reused == 2 and copies.videos == 0 and copies.encoded == 0
        assert index.store.counts()["frames"] == 3 * first.frames
        assert index.remove_folder(media) == 6  # three photos, three videos (frames are no files)
        assert index.indexed_paths() == []


def test_web_clients_query_kept_moments_only_and_intervals_are_bounded(tmp_path: Path, media: Path,
                                                                       model_kwargs: dict[str, str]) -> None:
    with open_index(tmp_path, model_kwargs) as index:
        index.add(media, settings=settings())
        assert all(not p.endswith(".mp4") for p in index.indexed_paths())  # photos only, for table joins
        kept = index.moments(index.search("@party.mp4@0", k=1)[0].video_id or 0)[1]
        assert kept.t is not None
        assert index.search(f"@party.mp4@{kept.t}", k=1, image_files=lambda path: False)[0].file_id == kept.file_id
        with pytest.raises(QueryError, match="the nearest is"):
            index.search(f"@party.mp4@{kept.t + 0.3:.1f}", k=1, image_files=lambda path: False)
    for bad in (0.0, 0.05, 61.0, float("nan")):
        with pytest.raises(ValueError, match="video_interval"):
            IndexSettings(video_interval=bad)


def test_a_video_cut_short_keeps_the_moments_before_the_cut(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    folder = tmp_path / "cut"
    whole = write_video(tmp_path / "whole.mp4", slideshow_images(6, width=192, height=144),
                        seconds_each=SECONDS_EACH, faststart=True)  # its index first, as phones write
    write_truncated(folder / "phone.mp4", whole, keep=0.6)
    with open_index(tmp_path, model_kwargs) as index:
        report = index.add(folder, settings=settings())
        assert not report.failed and [Path(p.path).name for p in report.partial] == ["phone.mp4"]
        assert "truncated" in report.partial[0].reason and "moments up to" in report.partial[0].reason
        moments = index.search("a photo", k=50)
        assert moments and all(r.t is not None and r.t < 6 * SECONDS_EACH for r in moments)
        assert index.add(folder, settings=settings()).videos == 0  # not sampled again until it changes
