"""One JSON shape per result type, for the CLI's ``--json``, the web API and the exports.

Every function returns plain JSON-ready data (dicts, lists, str, int, float,
bool, None). The CLI and the web app call these and nothing else to describe
a result, so ``clipdex search --json`` and ``GET /api/search`` agree field for
field (a test holds them to it).

Paths are the index's display paths: a name that is not valid UTF-8 is shown
with ``\\xNN`` escapes (the file itself is still found by its exact bytes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipdex.classify import Classification
    from clipdex.index import IndexStatus, PhotoLabel
    from clipdex.indexer import IndexReport
    from clipdex.interchange import ExportReport, ImportReport
    from clipdex.models.auto import PrecisionChoice
    from clipdex.search import SearchResult
    from clipdex.search.filters import SearchFilter
    from clipdex.store import FileRecord


def search_result(result: "SearchResult") -> dict[str, Any]:
    """One ranked photo: ``{"rank", "score", "id", "path", "name"}``; a moment of a video (``path``
    the video's, ``id`` the frame's) adds ``"t"`` (seconds from its start), ``"video_id"`` and
    ``"moment"`` (``video.mp4 @ 0:01:23``)."""
    data: dict[str, Any] = {"rank": result.rank, "score": round(float(result.score), 6), "id": result.file_id,
                            "path": result.path, "name": os.path.basename(result.path)}
    if result.t is not None:
        from clipdex.video import moment_name

        data.update(t=round(float(result.t), 3), video_id=result.video_id, moment=moment_name(result.path, result.t))
    return data


def search_filter(filters: "SearchFilter | None") -> dict[str, Any]:
    """The filters a search kept photos by: ``{"folders": [...], "after", "before", "label", "only"}``.

    ``after``/``before`` are local times as the filter holds them
    (``YYYY-MM-DDTHH:MM:SS``; None when not set); ``label`` is ``{"set", "label"}``
    or None; ``only`` is "photos", "videos" (moments of videos) or None. A search without
    filters has every part empty (the same shape).
    """
    if filters is None:
        return {"folders": [], "after": None, "before": None, "label": None, "only": None}
    label = {"set": filters.label[0], "label": filters.label[1]} if filters.label else None
    return {"folders": list(filters.folders), "after": filters.after, "before": filters.before,
            "label": label, "only": filters.media}


def search_results(query: str, offset: int, results: Sequence["SearchResult"],
                   filters: "SearchFilter | None" = None) -> dict[str, Any]:
    """A page of results: ``{"query", "offset", "count", "filters": search_filter, "results":
    [search_result…]}``."""
    return {"query": query, "offset": offset, "count": len(results), "filters": search_filter(filters),
            "results": [search_result(r) for r in results]}


def failure(path: str, reason: str | None, kind: str | None = None) -> dict[str, Any]:
    """A file that could not be indexed: ``{"path", "reason", "kind"}``; ``kind`` says when it
    is tried again ('transient': every run, 'limit': once --max-megapixels is raised,
    'permanent': with --retry-failed)."""
    return {"path": path, "reason": reason or "failed", "kind": kind or "permanent"}


def precision_choice(choice: "PrecisionChoice", host: str | None = None) -> dict[str, Any]:
    """What ``--precision auto`` chose for a model on one kind of host: ``{"host", "this_host",
    "precision", "runtime", "reason", "cosine", "speedup", "photos", "min_cosine", "chosen_at"}``.

    ``cosine`` is the lowest cosine to fp32 over the ``photos`` checked and ``speedup`` the
    speed over fp32 (None when nothing was measured); ``chosen_at`` a local time
    ``YYYY-MM-DDTHH:MM:SS``; ``this_host`` whether it is this machine's (None: unknown
    without asking torch which GPU this is)."""
    return {"host": choice.host, "this_host": None if host is None else choice.host == host,
            "precision": choice.precision, "runtime": choice.runtime, "reason": choice.reason,
            "cosine": None if choice.cosine is None else round(choice.cosine, 6),
            "speedup": None if choice.speedup is None else round(choice.speedup, 3),
            "photos": choice.photos, "min_cosine": choice.min_cosine,
            "chosen_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(choice.chosen_at))
            if choice.chosen_at else None}


def index_status(status: "IndexStatus", failures: Sequence["FileRecord"] | None = None) -> dict[str, Any]:
    """What an index holds; ``failures`` (when given) lists the failed files.

    Each model says how many of its vectors were computed in each precision
    (``"precisions": {"bf16": 600, "fp32": 400}``: full precisions share one vector set)
    and what ``--precision auto`` chose per kind of host (``"auto"``: [precision_choice…]);
    ``host`` is this machine as those choices name hosts (None where only torch could say);
    ``videos`` and ``moments`` (indexed videos, their kept frames) appear where the index has any."""
    data: dict[str, Any] = {
        "path": status.path, "roots": list(status.roots), "indexed": status.indexed,
        "failed": status.failed,
        "models": [{"key": m.key, "name": m.name, "dim": m.dim, "photos": m.photos,
                    "precision": m.precision, "precisions": dict(m.precisions), "scoring": m.scoring,
                    "auto": [precision_choice(c, status.host) for c in m.choices],
                    "search": m.search, "search_stale": m.search_stale,
                    "reclaimable_bytes": m.reclaimable_bytes} for m in status.models],
        "missing_roots": list(status.missing_roots), "missing_photos": status.missing_photos,
        "problems": list(status.problems), "readonly": status.readonly, "host": status.host}
    if status.videos or status.moments:  # "indexed" counts each video's own row too
        data.update(videos=status.videos, moments=status.moments)
    if failures is not None:
        data["failures"] = [failure(f.path, f.reason, f.failure_kind) for f in failures]
    return data


def index_report(report: "IndexReport") -> dict[str, Any]:
    """What one ``index`` run did. ``precision`` is what new vectors were computed in (None when
    nothing was encoded under ``auto``: nothing was chosen); ``precision_note`` how it was chosen
    ("auto: " and auto's reason, or "asked for (--precision fp32)"); ``indexed_total`` counts the
    photos and videos under the folder, ``videos_total`` the videos among them; ``videos`` sampled, the
    ``frames`` kept of them, their length in ``video_seconds`` and ``video_realtime`` (seconds of video
    indexed per second of the video stage); ``partial`` the videos indexed only up to a cut or
    damage (``{"path", "reason"}``)."""
    return {"root": report.root, "model": report.model, "new": report.new, "changed": report.changed,
            "reused": report.reused, "unchanged": report.unchanged, "removed": report.removed,
            "encoded": report.encoded, "retried": report.retried, "dated": report.dated,
            "indexed_total": report.indexed_total, "videos_total": report.videos_total,
            "seconds": round(report.seconds, 3), "encode_seconds": round(report.encode_seconds, 3),
            "images_per_second": round(report.images_per_second, 3),
            "precision": report.precision or None, "precision_note": report.precision_note,
            "device_decoded": report.device_decoded, "videos": report.videos, "frames": report.frames,
            "video_seconds": round(report.video_seconds, 3), "video_realtime": round(report.video_realtime, 3),
            "failed": [failure(f.path, f.reason, f.kind) for f in report.failed],
            "partial": [{"path": f.path, "reason": f.reason} for f in report.partial],
            **_engine_facts(report)}


def _engine_facts(report: "IndexReport") -> dict[str, Any]:
    """A Ray run's own facts (:class:`clipdex.cluster.engine.RayIndexReport`); none for a local run."""
    if getattr(report, "engine", "local") != "ray":
        return {"engine": "local"}
    names = ("engine", "source_kind", "out", "shards_written", "resumed", "workers")
    return {**{name: getattr(report, name) for name in names},
            "startup_seconds": round(getattr(report, "startup_seconds", 0.0), 3),
            "steady_images_per_second": round(getattr(report, "steady_images_per_second", 0.0), 3)}


def photo_label(label: "PhotoLabel") -> dict[str, Any]:
    """A photo's result in one stored label set."""
    return {"set_name": label.set_name, "label": label.label, "prob": round(label.prob, 6),
            "probs": {k: round(v, 6) for k, v in label.probs.items()}, "corrected": label.corrected}


def photo(record: "FileRecord", labels: Sequence["PhotoLabel"], *, exists: bool,
          metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """An indexed photo's stored facts, its labels in every set and the user's table row.

    ``taken_at`` is when it was taken, local time ``YYYY-MM-DDTHH:MM:SS`` (EXIF, else the
    file's modification time); None when unknown."""
    return {"id": record.id, "path": record.path, "name": os.path.basename(record.path),
            "size": record.size, "width": record.width, "height": record.height,
            "mtime_ns": record.mtime_ns, "taken_at": record.taken_at, "sha256": record.content_hash,
            "exists": exists, "labels": [photo_label(pl) for pl in labels], "metadata": dict(metadata or {})}


def classification(result: "Classification", top_k: int | None = None) -> dict[str, Any]:
    """One label set's predictions for every photo (``top`` with ``top_k``)."""
    tops = result.top_k(top_k) if top_k else None  # once per set, not once per photo
    return {"set": result.label_set.name, "labels": list(result.labels), "scoring": result.scoring,
            "photos": [{"id": int(result.file_ids[i]), "path": p, "label": result.predicted[i],
                        "prob": round(float(result.confidence[i]), 6),
                        "probs": {k: round(float(v), 6) for k, v in zip(result.labels, result.probs[i])},
                        **({"top": [[label, round(float(prob), 6)] for label, prob in tops[i]]}
                           if tops is not None else {})}
                       for i, p in enumerate(result.paths)]}


def export_report(report: "ExportReport") -> dict[str, Any]:
    """What one ``export`` wrote: ``{"folder", "model", "dim", "rows", "shards", "columns", "seconds"}``."""
    return {"folder": report.folder, "model": report.model, "dim": report.dim, "rows": report.rows,
            "shards": report.shards, "columns": list(report.columns), "seconds": round(report.seconds, 3)}


def import_report(report: "ImportReport") -> dict[str, Any]:
    """What one ``import`` did. ``skipped_rows`` names the first skipped rows (``{"shard", "row",
    "reason"}``; ``skipped`` counts them all); ``failed`` counts the rows of files that could not be
    encoded where they were made (a Ray run's failure rows: failed files now), ``failures`` names
    the first; ``seconds`` is the import itself, ``search_seconds``
    bringing the approximate search index up to date afterwards."""
    return {"source": report.source, "model": report.model, "layout": report.layout, "rows": report.rows,
            "imported": report.imported, "vectors_added": report.vectors_added, "reused": report.reused,
            "replaced": report.replaced, "skipped": report.skipped,
            "skipped_rows": [{"shard": r.shard, "row": r.row, "reason": r.reason} for r in report.skipped_rows],
            "shards": report.shards, "shards_imported": report.shards_imported,
            "shards_done_before": report.shards_done_before, "partial_shards": report.partial_shards,
            "failed": report.failed, "failures": [{"path": p, "reason": r} for p, r in report.failures],
            "roots": list(report.roots),
            "seconds": round(report.seconds, 3), "search_seconds": round(report.search_seconds, 3)}
