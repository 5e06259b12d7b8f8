"""The web app: search and classification review pages, and the JSON API beside them.

A thin client of :class:`clipdex.Index`. It serves only photos of the index,
addressed by their integer id (never by path), escapes everything it shows
(Jinja2 autoescape; the scripts set ``textContent``), bounds every request,
keeps uploads inside the index folder, answers only to the hosts it was
started for and refuses writes from other sites (:mod:`clipdex.web.guard`).

Errors are pages for people and JSON for scripts: every route under ``/api/``
answers ``{"error": "<message>", "status": <code>}``, every other route an
HTML page that says what went wrong and what to do.

Blocking work (search, decoding, SQLite) runs in worker threads, never on the
event loop; searches and thumbnails have separate thread budgets, so a page of
thumbnails is not queued behind other people's searches (see
:mod:`clipdex.web.access` for how the index is shared between threads).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlencode

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import Scope

from clipdex import serialize
from clipdex.classify import SIGMOID, UNCERTAIN, Classification, describe_scores, scoring_of
from clipdex.errors import (
    ClipdexError,
    EmptyIndex,
    IndexDamaged,
    IndexLocked,
    IndexStorageError,
    LabelSetNotRun,
    ModelError,
    PhotoNotFound,
    shorten,
)
from clipdex.index import Index
from clipdex.search import SearchResult, parse_query
from clipdex.search.filters import SearchFilter
from clipdex.video import split_frame_path
from clipdex.web import dupes, learning, topics, video
from clipdex.web.access import IndexAccess
from clipdex.web.context import WebContext
from clipdex.web.filters import MAX_FOLDERS, FilterForm, date_field, describe
from clipdex.web.guard import DEFAULT_ALLOWED_HOSTS, Guard, HostPolicy
from clipdex.web.thumbs import FRAME_PLACEHOLDER_SVG, PLACEHOLDER_SVG, ThumbnailCache
from clipdex.web.uploads import MAX_UPLOAD_BYTES, UPLOAD_DIR, UPLOAD_PREFIX, check_upload, save_upload

__all__ = ["DEFAULT_ALLOWED_HOSTS", "create_app", "load_metadata"]

HERE = Path(__file__).parent
PAGE_SIZE = 48
MAX_PAGE = 200
MAX_OFFSET = 10_000
MAX_QUERY = 1000
MAX_NAME = 200
MAX_BODY = MAX_UPLOAD_BYTES + 1024 * 1024  # an upload and its form fields
THUMB_SIZES = (256, 1024)
THUMB_THREADS = 8  # thumbnails have threads of their own: never queued behind searches
MAX_SHOWN = 60
MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_DATE = 40  # a date filter: "2021-06-01T18:30:15" and some room
FOLDERS_WHERE = "they are listed at /api/status"
MAX_FOLDER_SHOWN = 48  # characters of a folder in the menu: its end, which tells folders apart

T = TypeVar("T")
PhotoId = Annotated[int, PathParam(ge=1, le=MAX_ID)]  # photos are addressed by id, never by path
# The search filters, the same on every route that searches (see clipdex.web.filters).
Folders = Annotated[list[Annotated[str, Field(max_length=MAX_QUERY)]] | None, Query(max_length=MAX_FOLDERS)]
After = Annotated[str, Query(max_length=MAX_DATE)]
Before = Annotated[str, Query(max_length=MAX_DATE)]
SetName = Annotated[str, Query(max_length=MAX_NAME)]
LabelName = Annotated[str, Query(max_length=MAX_NAME)]
Only = Annotated[Literal["photos", "videos"] | None, Query()]  # photos only, or moments of videos only
PerVideo = Annotated[int | None, Query(ge=1, le=MAX_PAGE)]  # moments listed of one video, at most


class Correction(BaseModel):
    file_id: int = Field(ge=1, le=MAX_ID)
    label: str = Field(min_length=1, max_length=MAX_NAME)


class SafeJSONResponse(JSONResponse):
    """JSON whose strings can never fail to encode (a stray surrogate becomes a ``\\udcNN`` escape)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8", "backslashreplace")


def create_app(index: Index, metadata: dict[str, dict[str, str]] | None = None, *,
               allowed_hosts: Sequence[str] = DEFAULT_ALLOWED_HOSTS) -> FastAPI:
    """The ASGI app for an open index (the model loads on the first query, or at ``serve``).

    ``metadata`` maps photo paths to rows of the user's own table, shown on photo pages.
    ``allowed_hosts`` are the names the server answers to (``Host`` header): the
    defaults, the address it listens on and any the user added; with ``0.0.0.0``
    or ``::`` among them, this machine's own names and addresses too, and ``*`` for any.
    """
    metadata = metadata or {}
    uploads = (index.path / UPLOAD_DIR).resolve()
    access = IndexAccess(index, uploads)
    thumbs = ThumbnailCache(index.path / "thumbs")
    search_threads = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
    thumb_threads = anyio.CapacityLimiter(THUMB_THREADS)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.globals["urlencode"] = urlencode

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        access.close()

    app = FastAPI(title="clipdex", description="Search and label a photo collection with CLIP.",
                  version="1", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json",
                  default_response_class=SafeJSONResponse, lifespan=lifespan)
    app.state.access = access
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    async def off_loop(limiter: anyio.CapacityLimiter | None, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=limiter)

    def render(template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        body = env.get_template(template).render(**context)
        return HTMLResponse(body.encode("utf-8", "backslashreplace"), status_code=http_status)

    pages = WebContext(access=access, render=render, off_loop=off_loop, search_threads=search_threads,
                       metadata=metadata)

    # -- error handling: pages for people, JSON for scripts --------------------
    def error_response(path: str, status: int, message: str,
                       headers: dict[str, str] | None = None) -> Response:
        if path.startswith("/api/"):
            return SafeJSONResponse({"error": message, "status": status}, status_code=status, headers=headers)
        response = render("error.html", http_status=status, status_code=status, message=message)
        response.headers.update(headers or {})
        return response

    async def guard_error(scope: Scope, status: int, message: str) -> Response:
        return error_response(scope.get("path", ""), status, message)

    @app.exception_handler(ClipdexError)
    async def clipdex_error(request: Request, exc: ClipdexError) -> Response:
        return error_response(request.url.path, _status_of(exc), str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(request.url.path, exc.status_code, _http_message(request, exc),
                              dict(exc.headers) if exc.headers else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        status, message = _validation_message(request, exc)
        return error_response(request.url.path, status, message)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(request.url.path, 500, f"the server failed on this request "
                              f"({type(exc).__name__}); its log says more. Try again, or report it.")

    # -- pages ----------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def home(q: str = Query("", max_length=MAX_QUERY), like: int | None = Query(None, ge=1, le=MAX_ID),
                   folder: Folders = None, after: After = "", before: Before = "", set: SetName = "",
                   label: LabelName = "", only: Only = None,
                   page: int = Query(1, ge=1, le=MAX_OFFSET // PAGE_SIZE)) -> Response:
        form = FilterForm.of(folder or (), after, before, set, label, only)
        return await off_loop(search_threads, home_page, q, like, form, page)

    def home_page(q: str, like: int | None, form: FilterForm, page: int) -> Response:
        offset = (page - 1) * PAGE_SIZE
        hits: list[SearchResult] = []
        error = ""
        error_status = 400
        similar_to = None
        searched = False
        counts = access.counts()  # not status(): no per-model counts on every search; cached
        filters = None
        try:
            filters = form.check(counts.roots, where="in the folder menu")
            if q.strip():  # a query typed on a "more like this" page starts a new search
                hits = access.search(parse_query(q), PAGE_SIZE, offset, filters)
                searched = True
            elif like is not None:
                record, hits = access.similar(like, PAGE_SIZE, offset, filters)
                similar_to = {"id": record.id, "name": os.path.basename(record.path)}
                q, searched = "", True
            elif form.set and form.label and not form.narrows:  # browse one label, most confident first
                with access.locked() as idx:
                    result = idx.classification(form.set)
                result.check_label(form.label)
                hits = _label_browse(result, form.label, offset, PAGE_SIZE)
                searched = True
        except PhotoNotFound:
            raise
        except ClipdexError as e:
            error, error_status = str(e), _status_of(e)  # the form stays, with what went wrong
        with access.reader() as reader:
            label_sets = _names(reader.label_sets)
            labels_of_set = _names(lambda: reader.classification_labels(form.set)) if form.set else []
        status = {"indexed": counts.indexed, "photos": counts.indexed - counts.videos, "videos": counts.videos,
                  "moments": counts.moments, "roots": counts.roots,
                  "models": [{"name": name} for name in counts.models]}
        folder_choices = [(f, _tail(f, MAX_FOLDER_SHOWN))
                          for f in counts.roots + [f for f in form.folders if f not in counts.roots]]
        return render("search.html", http_status=error_status if error else 200, q=q, like=similar_to,
                      results=[serialize.search_result(h) for h in hits],
                      error=error, page=page,
                      like_id=like if like is not None and not q.strip() else None,
                      page_size=PAGE_SIZE, set=form.set, label=form.label, label_sets=label_sets,
                      labels_of_set=labels_of_set, status=status, searched=searched and not error,
                      folders=form.folders, folder_choices=folder_choices, only=form.only,
                      after=date_field(form.after), before=date_field(form.before),
                      narrows=form.narrows, filter_params=form.params(),
                      api_filter_params=form.params(for_api=True),
                      applied=describe(filters) if filters and not error else [])

    @app.get("/photo/{file_id}", response_class=HTMLResponse)
    async def photo_page(file_id: PhotoId, q: str = Query("", max_length=MAX_QUERY), folder: Folders = None,
                         after: After = "", before: Before = "", set: SetName = "",
                         label: LabelName = "") -> Response:
        # The filters of the search that led here, handed on to "more like this" (checked there);
        # the query, to a moment of a video: its timeline shows the video's other moments for it.
        form = FilterForm.of(folder or (), after, before, set, label)
        return await off_loop(None, photo_view, file_id, form, q)

    def photo_view(file_id: int, form: FilterForm, q: str) -> Response:
        like_params = [("like", str(file_id)), *form.params()]
        with access.reader() as reader:
            record = reader.photo(file_id)
            player = video.is_video_page(reader, record)
            labels = [] if player else reader.photo_labels(file_id)
            sigmoid = scoring_of(reader.model_record().logit_bias) == SIGMOID if labels else False
        if player:  # a moment of a video, or a video: the player (it borrows a reader of its own)
            return video.player_page(pages, record, q, like_params, form.any)
        row = {k: v for k, v in metadata.get(record.path, {}).items() if v not in ("", None)}
        view = serialize.photo(record, labels, exists=os.path.isfile(record.fs_path), metadata=row)
        return render("photo.html", photo=view, like_params=like_params, filtered=form.any, sigmoid=sigmoid)

    @app.get("/api", response_class=HTMLResponse)
    async def api_index() -> Response:
        routes = [(sorted(r.methods or {"GET"})[0], r.path, (r.endpoint.__doc__ or "").strip())
                  for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")]
        return render("api.html", routes=routes)

    @app.get("/labels", response_class=HTMLResponse)
    async def labels_index() -> Response:
        return await off_loop(None, labels_view)

    def labels_view() -> Response:
        with access.locked() as idx:
            summaries = [(name, idx.classification(name).counts()) for name in idx.label_sets()]
        return render("labels.html", summaries=summaries)

    @app.get("/labels/{name}", response_class=HTMLResponse)
    async def label_set_page(name: str, sort: str = Query("random", pattern="^(random|least|most)$"),
                             per: int = Query(12, ge=1, le=MAX_PAGE), seed: int = Query(0, ge=0, le=2**31),
                             label: str = Query("", max_length=MAX_NAME)) -> Response:
        return await off_loop(None, label_set_view, name, sort, per, seed, label)

    def label_set_view(name: str, sort: str, per: int, seed: int, label: str) -> Response:
        with access.locked() as idx:
            result = idx.classification(name)
            labels = idx.classification_labels(name)
            scoring = result.scoring or scoring_of(idx.model_record().logit_bias)
        sections = _label_sections(result, sort, per, seed, label)
        return render("label_set.html", name=name, sections=sections, labels=labels, sort=sort,
                      per=per, seed=seed, only=label,
                      scores=describe_scores(scoring, result.label_set.multi_label))

    @app.post("/upload")
    async def upload(file: UploadFile = File(...), q: str = Form("", max_length=MAX_QUERY)) -> Response:
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        name = await off_loop(search_threads, check_and_save, data, file.content_type)
        term = f"@{UPLOAD_PREFIX}{name}"
        extra = q.strip()
        return RedirectResponse("/?" + urlencode({"q": f"{term} + {extra}" if extra else term}), 303)

    def check_and_save(data: bytes, content_type: str | None) -> str:
        return save_upload(data, check_upload(data, content_type), uploads)

    # -- images ---------------------------------------------------------------
    @app.get("/thumb/{file_id}")
    async def thumb(file_id: PhotoId, size: int = Query(256)) -> Response:
        if size not in THUMB_SIZES:
            raise HTTPException(400, f"query parameter 'size' must be one of "
                                     f"{', '.join(map(str, THUMB_SIZES))} (got {size})")
        data, placeholder = await off_loop(thumb_threads, thumbnail, file_id, size)
        if data is None:  # not indexed, or deleted or unreadable since it was indexed
            return Response(placeholder, 404, media_type="image/svg+xml")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    def thumbnail(file_id: int, size: int) -> tuple[bytes | None, bytes]:
        """The thumbnail's JPEG (None: none can be made) and the placeholder to show instead."""
        with access.reader() as reader:
            record = reader.store.file_by_id(file_id)
            poster = record is not None and record.video_id is None and video.is_video_page(reader, record)
        if record is None or record.status != "ok" or not record.content_hash:
            return None, PLACEHOLDER_SVG
        if poster:  # a video itself: its first frame (a frame's path is decoded from its video)
            return thumbs.poster(record.fs_path, record.content_hash, size), FRAME_PLACEHOLDER_SVG
        placeholder = PLACEHOLDER_SVG if record.video_id is None else FRAME_PLACEHOLDER_SVG
        return thumbs.get(record.fs_path, record.content_hash, size), placeholder

    # -- JSON API -------------------------------------------------------------
    @app.get("/api/search")
    async def api_search(q: str = Query(..., min_length=1, max_length=MAX_QUERY),
                         k: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE),
                         offset: int = Query(0, ge=0, le=MAX_OFFSET),
                         folder: Folders = None, after: After = "", before: Before = "",
                         set: SetName = "", label: LabelName = "", only: Only = None,
                         per_video: PerVideo = None) -> dict[str, Any]:
        """Photos ranked by a query (same syntax as the CLI); filters: folder (repeatable), after,
        before (dates taken), set with label, only (photos, or videos: their moments). A moment of a
        video carries ``t`` (seconds), ``video_id`` and ``moment`` ("video.mp4 @ 0:01:23"); its ``id``
        is the frame's; per_video caps the moments listed of one video."""
        form = FilterForm.of(folder or (), after, before, set, label, only)
        return await off_loop(search_threads, api_search_view, q, k, offset, form, per_video)

    def api_search_view(q: str, k: int, offset: int, form: FilterForm,
                        per_video: int | None = None) -> dict[str, Any]:
        filters = api_filters(form)
        hits = access.search(parse_query(q), k, offset, filters, per_video)
        return serialize.search_results(q, offset, hits, filters)

    @app.get("/api/similar/{file_id}")
    async def api_similar(file_id: PhotoId, k: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE),
                          offset: int = Query(0, ge=0, le=MAX_OFFSET),
                          folder: Folders = None, after: After = "", before: Before = "",
                          set: SetName = "", label: LabelName = "") -> dict[str, Any]:
        """Photos most like an indexed photo ("more like this"), by its stored vector; the same
        filters as /api/search."""
        form = FilterForm.of(folder or (), after, before, set, label)
        return await off_loop(search_threads, api_similar_view, file_id, k, offset, form)

    def api_similar_view(file_id: int, k: int, offset: int, form: FilterForm) -> dict[str, Any]:
        filters = api_filters(form)
        record, hits = access.similar(file_id, k, offset, filters)
        return serialize.search_results("@" + shlex.quote(record.path), offset, hits, filters)

    def api_filters(form: FilterForm) -> SearchFilter | None:
        if bool(form.set) != bool(form.label):
            raise HTTPException(400, "a label filter takes both a set and a label: "
                                     "set=NAME&label=LABEL (the sets are listed at /api/labels)")
        return form.check(access.counts().roots, where=FOLDERS_WHERE)

    @app.get("/api/photos/{file_id}")
    async def api_photo(file_id: PhotoId) -> dict[str, Any]:
        """A photo's stored facts and its labels in every classification run (a frame of a video:
        also ``t``, its second, and ``video_id``, the video to play: /video/{video_id})."""
        return await off_loop(None, api_photo_view, file_id)

    def api_photo_view(file_id: int) -> dict[str, Any]:
        with access.reader() as reader:
            record = reader.photo(file_id)
            labels = reader.photo_labels(file_id)
        frame = split_frame_path(record.fs_path)
        view = serialize.photo(record, labels, exists=os.path.isfile(frame[0] if frame else record.fs_path),
                               metadata=metadata.get(record.path))
        if record.video_id is not None:  # a moment of a video: its time and the video to play
            view.update(t=record.frame_t, video_id=record.video_id)
        return view

    @app.get("/api/labels")
    async def api_labels() -> dict[str, Any]:
        """Label sets run on the index, with photo counts per label."""
        return await off_loop(None, api_labels_view)

    def api_labels_view() -> dict[str, Any]:
        with access.locked() as idx:
            return {"sets": [{"name": n, "counts": idx.classification(n).counts()} for n in idx.label_sets()]}

    @app.get("/api/labels/{name}")
    async def api_label_set(name: str, sort: str = Query("random", pattern="^(random|least|most)$"),
                            per: int = Query(12, ge=1, le=MAX_PAGE), seed: int = Query(0, ge=0, le=2**31),
                            label: str = Query("", max_length=MAX_NAME)) -> dict[str, Any]:
        """Examples per label of a set, with probabilities and corrections; ``scoring`` says how
        to read them: "softmax" (a softmax model's labels share 1.0) or "sigmoid" (SigLIP: each
        label scored on its own)."""
        return await off_loop(None, api_label_set_view, name, sort, per, seed, label)

    def api_label_set_view(name: str, sort: str, per: int, seed: int, label: str) -> dict[str, Any]:
        with access.locked() as idx:
            result = idx.classification(name)
            scoring = result.scoring or scoring_of(idx.model_record().logit_bias)
        return {"set": name, "scoring": scoring, "sections": _label_sections(result, sort, per, seed, label)}

    @app.post("/api/labels/{name}/corrections")
    async def api_correct(name: str, correction: Correction) -> dict[str, Any]:
        """Record a person's label for a photo (ground truth for `clipdex evaluate`)."""
        return await off_loop(None, api_correct_view, name, correction)

    def api_correct_view(name: str, correction: Correction) -> dict[str, Any]:
        with access.locked() as idx:
            idx.correct(name, correction.file_id, correction.label)
        return {"set": name, "file_id": correction.file_id, "label": correction.label, "saved": True}

    @app.get("/api/status")
    async def api_status() -> dict[str, Any]:
        """The index: folders, counts, models."""
        return await off_loop(None, api_status_view)

    def api_status_view() -> dict[str, Any]:
        with access.reader() as reader:
            return serialize.index_status(reader.status())

    for module in (dupes, topics, learning, video):
        module.add_routes(app, pages)

    app.add_middleware(Guard, hosts=HostPolicy(allowed_hosts), max_body=MAX_BODY,  # type: ignore[arg-type]
                       error_page=guard_error)
    return app


def load_metadata(index: Index, table: str | os.PathLike[str], key: str) -> dict[str, dict[str, str]]:
    """The user's table, keyed by indexed photo path (rows that match no photo are left out)."""
    from clipdex.export import KeyMatcher, read_table

    _header, rows = read_table(table, key)
    matcher = KeyMatcher(index.indexed_paths())
    out = {}
    for row in rows:
        path = matcher.match(row.get(key) or "")
        if path is not None:
            out[path] = row
    return out


def _names(fn: Callable[[], list[str]]) -> list[str]:
    """Label set or label names for a menu: none when the index cannot say (the page still shows)."""
    try:
        return fn()
    except ClipdexError:
        return []


def _status_of(exc: ClipdexError) -> int:
    """The HTTP status of an error: the client's fault (4xx) or the server's state (5xx)."""
    if isinstance(exc, (PhotoNotFound, LabelSetNotRun)):
        return 404
    if isinstance(exc, (IndexLocked, ModelError)):  # the server's state: busy, or no model here
        return 503
    if isinstance(exc, (IndexDamaged, IndexStorageError)):
        return 500
    if isinstance(exc, EmptyIndex):
        return 409
    return 400


def _tail(path: str, most: int) -> str:
    """``path`` cut from the left to ``most`` characters (``…/photos/trip``), for a narrow menu."""
    return path if len(path) <= most else "…" + path[-(most - 1):]


def _shown(value: Any) -> str:
    return shorten(repr(value), MAX_SHOWN)


def _http_message(request: Request, exc: HTTPException) -> str:
    """Starlette's bare reasons ("Not Found") made into sentences that say what to do."""
    path = _shown(request.url.path)
    if exc.status_code == 404 and exc.detail in ("Not Found", None, ""):
        return f"there is no page {path} on this server; start from the search page"
    if exc.status_code == 405 and exc.detail in ("Method Not Allowed", None, ""):
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow") or "GET"
        return f"{request.method} is not allowed on {path} (use {allowed})"
    return str(exc.detail)


def _validation_message(request: Request, exc: RequestValidationError) -> tuple[int, str]:
    """404 when the path names no page (e.g. ``/photo/abc``), else 400; the message names the parameter."""
    errors = list(exc.errors())
    status = 404 if any(e.get("loc", ("",))[0] == "path" for e in errors) else 400
    parts = []
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ())]
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "")
            parts.append(f"the body is not valid JSON ({reason}, at character {loc[-1] if loc else '?'})")
            continue
        where, name = (loc[0], ".".join(loc[1:])) if loc else ("request", "")
        message = str(e.get("msg", "is not valid"))
        if message[:2].istitle():  # "Field required" -> "field required"; "JSON …" stays
            message = message[:1].lower() + message[1:]
        got = e.get("input")
        shown = f" (got {_shown(got)})" if got is not None and where in ("path", "query") else ""
        where = "field" if where == "body" else f"{where} parameter"
        parts.append(f"{where} {name!r}: {message}{shown}" if name else f"{where}: {message}")
    if status == 404:
        hint = " Photos are numbered: /photo/1, /api/photos/1." if "file_id" in str(errors) else ""
        return 404, f"there is no page {_shown(request.url.path)}: " + "; ".join(parts) + "." + hint
    return 400, "bad request: " + "; ".join(parts) + "."


def _label_browse(result: Classification, label: str, offset: int, limit: int) -> list[SearchResult]:
    """The photos with ``label`` (a correction wins), most confident first."""
    rows = result.members(label)
    members = rows[np.argsort(-np.asarray(result.confidence)[rows], kind="stable")]
    return [SearchResult(rank=offset + n + 1, score=float(result.confidence[i]), path=result.paths[i],
                         file_id=int(result.file_ids[i]))
            for n, i in enumerate(members[offset:offset + limit])]


def _label_sections(result: Classification, sort: str, per: int, seed: int,
                    only: str) -> list[dict[str, Any]]:
    """Per label: count and ``per`` example photos (random, least or most confident)."""
    from clipdex.review import review_rows

    if only:
        result.check_label(only)
    mode = {"random": "random", "least": "least-confident", "most": "most-confident"}[sort]
    rows = review_rows(result, per_label=per, seed=seed, mode=mode)
    position = {p: i for i, p in enumerate(result.paths)}
    counts = result.counts()
    sections = []
    for label, row in zip(result.labels + [UNCERTAIN], rows):
        if only and label != only:
            continue
        photos = []
        for tile in row.tiles:
            i = position[tile.path]
            photos.append({"id": result.file_ids[i], "name": os.path.basename(tile.path),
                           "label": result.predicted[i], "prob": round(float(result.confidence[i]), 4),
                           "corrected": (result.truth[i] if result.truth else "") or None})
        sections.append({"label": label, "count": counts.get(label, 0), "photos": photos})
    return sections
