"""Videos on the web: the player page of a moment, the video file itself and a video's moments.

A search that finds a moment of a video (a frame: :mod:`clipdex.video`) links to the frame's page,
``/photo/{frame id}?q=...``, which is the player: a ``<video>`` that starts at the moment's second,
and under it a timeline of the video's other moments for the same query (marks along its length,
darker where the query matches better; a click seeks there). A video's own page
(``/photo/{video id}``) plays it from the start, its frames on the timeline by time.

The file is served by ``GET /video/{video id}`` only: an id of the index that is an indexed
video (not a photo, not a frame), under one of the index's folders that is still there (not
hidden from search), in no hidden folder below it. No path ever comes from the client.
Starlette's :class:`~starlette.responses.FileResponse` answers HTTP range requests (206 with
``Content-Range``, 416 for a range past the end), which is how a browser seeks in a video
without downloading it whole.

A browser plays H.264, VP8, VP9 and AV1 (HEVC in some); it plays no AVI file and no older codec
(MPEG-4 Part 2, MPEG-2, WMV...). Such a video's page says so at once and shows the frame and the
timeline instead of a player; a video the browser refuses only when it tries (HEVC, a file
damaged since indexing) gets the same note from the page's script (``static/video.js``).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response

from clipdex.classify import SIGMOID, scoring_of
from clipdex.errors import ClipdexError, PhotoNotFound
from clipdex.search import SearchResult, parse_query
from clipdex.store.catalog import is_under
from clipdex.video import MOMENT_SECONDS, format_time, is_video
from clipdex.web.context import WebContext
from clipdex.web.uploads import UPLOAD_PREFIX

if TYPE_CHECKING:
    from clipdex.index import Index
    from clipdex.store import FileRecord, VideoSampling

MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_QUERY = 1000  # as the search page's (clipdex.web.app.MAX_QUERY)
MAX_MOMENTS = 500  # frames a video's timeline or /api/videos/{id}/moments lists at most
BEST_MOMENTS = 12  # the best moments of a video shown as frames under its timeline
MIN_STRENGTH = 0.15  # a timeline mark's least opacity: the worst-matching frame still shows
VideoId = Annotated[int, PathParam(ge=1, le=MAX_ID)]  # videos are addressed by id, never by path
_UPLOAD_TERM = re.compile("@" + re.escape(UPLOAD_PREFIX) + r"[0-9a-f]{32}\.\w+")  # shown as words, not a hash

# What each container is served as (the Content-Type a <video> element gets).
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".avi": "video/x-msvideo"}
# Containers no browser's <video> opens, whatever codec they hold.
UNPLAYABLE_CONTAINERS = {".avi": "AVI"}
# Codecs (FFmpeg's names, as the index stores them) that browsers decode, with the RFC 6381
# codec string that asks a browser whether it does (canPlayType). HEVC plays in some browsers
# only (Safari, Chrome with a hardware decoder): the page asks the browser; any other codec is
# one no browser plays (MPEG-4 Part 2, MPEG-2, WMV, ProRes...).
BROWSER_CODECS = {"h264": "avc1.640028", "vp8": "vp8", "vp9": "vp09.00.10.08", "av1": "av01.0.05M.08"}
SOME_BROWSERS_CODECS = {"hevc": "hvc1.1.6.L93.B0"}


@dataclass(frozen=True)
class Playability:
    """Whether a browser plays a video: True, False (``reason`` says why not), or None when only
    the browser can tell (``check``: the media type to ask it with ``canPlayType``)."""

    playable: bool | None
    reason: str = ""
    check: str = ""


def media_type(path: str) -> str:
    """The Content-Type a video file is served with (by its extension)."""
    return MEDIA_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


def playability(path: str, codec: str | None) -> Playability:
    """Whether a browser plays ``path`` holding ``codec`` (see the module docstring)."""
    extension = os.path.splitext(path)[1].lower()
    if extension in UNPLAYABLE_CONTAINERS:
        return Playability(False, f"browsers do not play {UNPLAYABLE_CONTAINERS[extension]} files")
    name = (codec or "").lower()
    if not name or name in BROWSER_CODECS:
        return Playability(True)
    if name in SOME_BROWSERS_CODECS:
        container = "video/webm" if extension in (".webm", ".mkv") else "video/mp4"
        return Playability(None, f"only some browsers play {name.upper()} video",
                           f'{container}; codecs="{SOME_BROWSERS_CODECS[name]}"')
    return Playability(False, f"browsers do not play {name} video")


@dataclass(frozen=True)
class Served:
    """A video file that may be served: where it is, its stat and its Content-Type."""

    fs_path: str
    stat: os.stat_result
    media_type: str
    name: str


def servable(index: "Index", video_id: int) -> Served | str:
    """The file of video ``video_id`` if it may be served, else why not (a sentence).

    Only an indexed video of the index is served, under one of its folders that is still there
    (a moved or unmounted folder's files are hidden from search, and not served either), never
    inside a hidden folder (``.name``) below that folder, and only while it is a regular file
    of the size and time it had when indexed.
    """
    try:
        record, _sampling = index.video(video_id)
    except PhotoNotFound:
        return (f"#{video_id} is not a video of this index (videos are played by their own id; "
                "a photo or a frame of a video has a page: /photo/ID)")
    store = index.store
    missing = set(store.missing_roots())
    root = next((r for r in store.roots() if is_under(record.path, r)), None)
    if root is None or root in missing:
        return (f"{record.path} is in no folder of the index that is there now; "
                "run `clipdex index` on its folder again")
    below = os.path.relpath(os.path.dirname(record.path), root)
    if any(part.startswith(".") and part not in (".", "..") for part in Path(below).parts):
        return f"{record.path} is inside a hidden folder; it is not served"
    try:
        info = os.stat(record.fs_path)
    except OSError:
        return f"{record.path} is no longer on disk; run `clipdex index` on its folder to update the index"
    if not stat.S_ISREG(info.st_mode):
        return f"{record.path} is not a regular file; it is not served"
    if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
        # Not the file that was indexed (replaced, edited, or a link pointed elsewhere since): its
        # bytes are not served under the index's word for what they are.
        return (f"{record.path} has changed since it was indexed; run `clipdex index` on its folder "
                "to index it again")
    return Served(record.fs_path, info, media_type(record.path), os.path.basename(record.path))


def add_routes(app: FastAPI, ctx: WebContext) -> None:
    """Register GET/HEAD /video/{video_id} and GET /api/videos/{video_id}/moments on ``app``
    (the player page itself is :func:`player_page`, reached through /photo/{id})."""

    @app.api_route("/video/{video_id}", methods=["GET", "HEAD"], include_in_schema=False)
    async def video_file(video_id: VideoId) -> Response:
        served = await ctx.off_loop(None, _servable, video_id)
        if isinstance(served, str):
            raise HTTPException(404, served)
        # inline: played in the page, and saved under its own name ("Save video as...")
        return FileResponse(served.fs_path, media_type=served.media_type, stat_result=served.stat,
                            filename=served.name, content_disposition_type="inline",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    def _servable(video_id: int) -> Served | str:
        with ctx.access.reader() as reader:
            return servable(reader, video_id)

    @app.get("/api/videos/{video_id}/moments")
    async def api_moments(video_id: VideoId, q: str = Query("", max_length=MAX_QUERY),
                          limit: int = Query(MAX_MOMENTS, ge=1, le=MAX_MOMENTS)) -> dict[str, Any]:
        """A video's facts (duration, sampling interval, codec, whether browsers play it, its
        ``src``) and its kept frames scored against query ``q``, best first (no ``q``: every
        frame by time, scored 0): where in the video the search matches."""
        return await ctx.off_loop(ctx.search_threads, api_moments_view, video_id, q, limit)

    def api_moments_view(video_id: int, q: str, limit: int) -> dict[str, Any]:
        with ctx.access.reader() as reader:
            record, sampling = reader.video(video_id)
        found = moments(ctx, video_id, q, limit)
        return {"video": video_json(record, sampling), "query": q.strip() or None, "count": len(found),
                "moments": [moment_json(m) for m in found]}


def moments(ctx: WebContext, video_id: int, q: str, limit: int = MAX_MOMENTS) -> list[SearchResult]:
    """The frames of video ``video_id`` scored against the query ``q`` (:meth:`Index.moments`).

    As on the search page, a query may use photos of the index and uploads (their cached
    vectors), never another file of the server."""
    return ctx.access.moments(video_id, parse_query(q) if q.strip() else None, limit)


def video_json(record: "FileRecord", sampling: "VideoSampling") -> dict[str, Any]:
    """A video's facts for the page and the API."""
    play = playability(record.path, sampling.codec)
    return {"id": record.id, "path": record.path, "name": os.path.basename(record.path),
            "duration": round(float(sampling.duration), 3), "interval": sampling.interval,
            "codec": sampling.codec, "fps": sampling.fps, "size": record.size, "width": record.width,
            "height": record.height, "taken_at": record.taken_at, "sha256": record.content_hash,
            "media_type": media_type(record.path), "playable": play.playable, "unplayable_reason": play.reason,
            "src": f"/video/{record.id}"}


def moment_json(result: SearchResult) -> dict[str, Any]:
    """One moment of a video: its rank, score, frame id, seconds and ``0:01:23``."""
    t = float(result.t or 0.0)
    return {"rank": result.rank, "score": round(float(result.score), 6), "id": result.file_id,
            "t": round(t, 3), "time": format_time(t)}


def player_page(ctx: WebContext, record: "FileRecord", q: str, like_params: list[tuple[str, str]],
                filtered: bool) -> HTMLResponse:
    """The page of a frame (``record`` with ``video_id``) or of a video (its own row): the video
    playing from the frame's second, the timeline of its moments for ``q``, the frame's labels."""
    frame = record if record.video_id is not None else None
    video_id = record.video_id if frame is not None else record.id
    assert video_id is not None
    with ctx.access.reader() as reader:
        video, sampling = reader.video(video_id)
        labels = reader.photo_labels(record.id) if frame is not None else []
        sigmoid = scoring_of(reader.model_record().logit_bias) == SIGMOID if labels else False
        served = servable(reader, video_id)
    t = float(frame.frame_t or 0.0) if frame is not None else 0.0
    query_error = ""
    try:
        found = moments(ctx, video_id, q)
    except ClipdexError as e:  # the video still plays; the timeline lists its frames by time
        query_error, found = str(e), moments(ctx, video_id, "")
    view = video_json(video, sampling)
    play = playability(video.path, sampling.codec)
    marks = timeline(found, sampling.duration, frame.id if frame is not None else None)
    best = [m for m in marks if m["best"]]
    best.sort(key=lambda m: m["rank"] if q.strip() and not query_error else m["t"])
    from clipdex import serialize

    return ctx.render(
        "video.html", video=view, t=t, time=format_time(t), frame_id=record.id if frame is not None else None,
        moment=f"{view['name']} @ {format_time(t)}" if frame is not None else view["name"],
        q=q.strip(), query_shown=_UPLOAD_TERM.sub("the photo you dropped", q.strip()), query_error=query_error,
        marks=marks, best=best,
        served=not isinstance(served, str), not_served=served if isinstance(served, str) else "",
        playable=play.playable, unplayable_reason=play.reason, check_type=play.check,
        duration=format_time(sampling.duration), labels=[serialize.photo_label(pl) for pl in labels],
        sigmoid=sigmoid, like_params=like_params, filtered=filtered)


def timeline(found: list[SearchResult], duration: float, current: int | None) -> list[dict[str, Any]]:
    """The marks of a video's timeline, by time: each frame's position (percent of the length),
    its strength (how well it matches, 0.15-1 between the worst and the best frame) and whether
    it is one of the best moments: the best frames at least :data:`MOMENT_SECONDS` apart (a
    twelfth of a shorter video), up to :data:`BEST_MOMENTS` (the frame opened is always one)."""
    if not found:
        return []
    scores = [float(m.score) for m in found]
    low, high = min(scores), max(scores)
    spread = high - low
    # Apart by MOMENT_SECONDS (one moment, as a search folds them), less in a short video: its
    # best moments spread along it rather than one or two.
    apart = min(MOMENT_SECONDS, duration / BEST_MOMENTS)
    best: list[float] = []
    best_ids = set()
    for m in found:  # best first
        t = float(m.t or 0.0)
        if m.file_id == current or (len(best) < BEST_MOMENTS and all(abs(t - b) >= apart for b in best)):
            best.append(t)
            best_ids.add(m.file_id)
    length = max(duration, *(float(m.t or 0.0) for m in found), 1e-6)
    marks = []
    for m in sorted(found, key=lambda m: float(m.t or 0.0)):
        t = float(m.t or 0.0)
        strength = 1.0 if spread <= 0 else MIN_STRENGTH + (1 - MIN_STRENGTH) * (float(m.score) - low) / spread
        marks.append({"id": m.file_id, "rank": m.rank, "t": round(t, 3), "time": format_time(t),
                      "score": round(float(m.score), 4), "left": round(100 * t / length, 3),
                      "strength": round(strength, 3), "best": m.file_id in best_ids,
                      "current": m.file_id == current})
    return marks


def is_video_page(index: "Index", record: "FileRecord") -> bool:
    """Whether ``/photo/{id}`` of ``record`` is a player page: a frame of a video, or a video."""
    return record.video_id is not None or (is_video(record.path) and index.store.video_sampling(record.id) is not None)


