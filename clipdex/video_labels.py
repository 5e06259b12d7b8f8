"""Per-video summaries of a classification: the share of a video's moments per label.

A video is classified through its sampled frames (:mod:`clipdex.video`): each kept
frame is a row of the catalog with its own vector, so a label set gives every
moment its label as it gives a photo its label. People also want the video's
answer ("how much of party.mp4 is at night?"), which is the share of its moments
that got each label: ``party.mp4  night 62%  day 38%  (24 moments)``.

A moment counts once per label it has (a person's correction wins over the
prediction, as in :meth:`clipdex.classify.Classification.effective_labels`); in a
multi-label set one moment may hold several labels, so the shares need not add
up to 1. A video's *majority* is its label with the most moments (ties: the set's
order). Sampled frames are spread over time (at least one every
``--video-interval`` seconds, more at scene changes), so a share of moments is
close to a share of time without being one: a short scene with many cuts weighs
more than its seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipdex.classify import Classification
from clipdex.labels import UNCERTAIN
from clipdex.video import split_frame_path

if TYPE_CHECKING:
    from clipdex.store import Store

# Digits of a share in JSON and tables: a moment of a 10,000-moment video still shows.
SHARE_DIGITS = 6


@dataclass(frozen=True)
class VideoLabels:
    """One video's moments in one label set: how many got each label, in the set's order
    (``uncertain`` last, where some moments are below ``--min-prob``)."""

    video_id: int
    path: str  # the video's display path (as search results and tables show it)
    moments: int  # its frames in the classification
    counts: dict[str, int]  # label -> moments with it (labels no moment has are left out)

    @property
    def shares(self) -> dict[str, float]:
        """Label -> the fraction of the video's moments that have it, most first."""
        total = max(1, self.moments)
        ranked = sorted(self.counts.items(), key=lambda item: -item[1])  # stable: ties keep the set's order
        return {label: count / total for label, count in ranked}

    @property
    def majority(self) -> tuple[str, float]:
        """(the label most of the video's moments have, its share); ("", 0.0) for no moment."""
        return next(iter(self.shares.items()), ("", 0.0))

    def describe(self, most: int | None = None) -> str:
        """``night 62%  day 38%  (24 moments)``: the shares, most first (at most ``most`` of them)."""
        shares = list(self.shares.items())
        shown = shares if most is None else shares[:most]
        text = "  ".join(f"{label} {_percent(share)}" for label, share in shown)
        if len(shown) < len(shares):
            text += f"  (+{len(shares) - len(shown)} more)"
        noun = "moment" if self.moments == 1 else "moments"
        return f"{text}  ({self.moments} {noun})".strip()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"id", "path", "moments", "label", "share", "shares": {label: share}, "counts"}``
        (``label``/``share``: the majority)."""
        label, share = self.majority
        return {"id": self.video_id, "path": self.path, "moments": self.moments, "label": label,
                "share": round(share, SHARE_DIGITS),
                "shares": {k: round(v, SHARE_DIGITS) for k, v in self.shares.items()},
                "counts": dict(self.counts)}


def _percent(share: float) -> str:
    """A share as people read it: whole percents, but never 0% or 100% for a share that is neither."""
    percent = round(100 * share)
    if percent == 0 and share > 0:
        return "<1%"
    if percent == 100 and share < 1:
        return ">99%"
    return f"{percent}%"


def summarise(result: Classification, frame_videos: Mapping[int, int],
              video_paths: Mapping[int, str]) -> list[VideoLabels]:
    """Each video's share of moments per label in ``result``, videos by path.

    ``frame_videos`` maps the file id of every frame in ``result`` to its video's
    id (rows whose id is absent are photos, and are left out); ``video_paths``
    gives each video's display path. Pure: :func:`video_labels` reads both from
    the catalog.
    """
    order = {label: j for j, label in enumerate([*result.labels, UNCERTAIN])}
    per_video: dict[int, dict[str, int]] = {}
    moments: dict[int, int] = {}
    for file_id, labels in zip(result.file_ids, result.effective_labels()):
        video_id = frame_videos.get(int(file_id))
        if video_id is None:
            continue
        moments[video_id] = moments.get(video_id, 0) + 1
        counts = per_video.setdefault(video_id, {})
        for label in dict.fromkeys(labels):  # a label named twice by a correction counts once
            if label:
                counts[label] = counts.get(label, 0) + 1
    summaries = []
    for video_id, counts in per_video.items():
        ordered = dict(sorted(counts.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
        path = video_paths.get(video_id)
        if path is None:
            raise KeyError(f"video {video_id} has frames in the classification but no path was given")
        summaries.append(VideoLabels(video_id, path, moments[video_id], ordered))
    return sorted(summaries, key=lambda s: (s.path, s.video_id))


def frame_videos(store: "Store", file_ids: Iterable[int], paths: Sequence[str]) -> dict[int, int]:
    """Frame file id -> its video's id, for the rows of a classification (``file_ids`` and
    ``paths`` row-aligned). Only rows whose path is a frame's (``video.mp4#t=…``) are read
    from the catalog, so a collection of photos costs no query; the catalog's
    ``video_id`` decides (a path that merely looks like a frame's is not one)."""
    candidates = [int(i) for i, path in zip(file_ids, paths) if split_frame_path(path) is not None]
    if not candidates:
        return {}
    records = store.files_by_ids(candidates)
    return {i: r.video_id for i, r in records.items() if r.video_id is not None}


def video_labels(store: "Store", result: Classification) -> list[VideoLabels]:
    """:func:`summarise` of ``result`` with its frames' videos read from ``store``: one entry
    per video that has moments in the classification, by path; empty for photos only."""
    owners = frame_videos(store, result.file_ids, result.paths)
    if not owners:
        return []
    videos = store.files_by_ids(sorted(set(owners.values())))
    missing = sorted(set(owners.values()) - set(videos))
    if missing:  # a frame outlives its video only in a damaged catalog (its trigger deletes them)
        owners = {frame: video for frame, video in owners.items() if video in videos}
    return summarise(result, owners, {i: r.path for i, r in videos.items()})
