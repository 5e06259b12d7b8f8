"""The web app: search and classification review pages, and the JSON API beside them.

A thin client of :class:`clipdex.Index`. It serves only photos of the index,
addressed by their integer id (never by path), escapes everything it shows
(Jinja2 autoescape; the scripts set ``textContent``), bounds every request,
and keeps uploads inside the index folder.
"""

from __future__ import annotations

import hashlib
import html
import io
import os
import shlex
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from clipdex.classify import UNCERTAIN
from clipdex.errors import ClipdexError, PhotoNotFound, QueryError
from clipdex.fileio import write_atomically
from clipdex.index import Index
from clipdex.web.thumbs import PLACEHOLDER_SVG, ThumbnailCache

HERE = Path(__file__).parent
PAGE_SIZE = 48
MAX_PAGE = 200
MAX_OFFSET = 10_000
MAX_QUERY = 1000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
UPLOAD_DIR = "uploads"
UPLOAD_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
                "image/bmp": ".bmp", "image/tiff": ".tif"}
THUMB_SIZES = (256, 1024)


class Correction(BaseModel):
    file_id: int = Field(ge=1)
    label: str = Field(min_length=1, max_length=200)


def create_app(index: Index, metadata: dict[str, dict[str, str]] | None = None) -> FastAPI:
    """The ASGI app for an open index (the model loads on the first query, or at ``serve``).

    ``metadata`` maps photo paths to rows of the user's own table, shown on photo pages.
    """
    metadata = metadata or {}
    app = FastAPI(title="clipdex", description="Search and label a photo collection with CLIP.",
                  version="1", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    lock = threading.Lock()  # one SQLite connection: one request at a time touches the index
    thumbs = ThumbnailCache(index.path / "thumbs")
    uploads = (index.path / UPLOAD_DIR).resolve()
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.globals["urlencode"] = urlencode
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def render(template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        with lock:
            sets = _safe(index.label_sets, [])
        body = env.get_template(template).render(label_sets=sets, **context)
        return HTMLResponse(body, status_code=http_status)

    def only_uploads(path: str) -> bool:
        return Path(path).resolve().parent == uploads

    def search_page(q: str, offset: int, limit: int, label_set: str, label: str) -> list[dict[str, Any]]:
        if len(q) > MAX_QUERY:
            raise QueryError(q[:40] + "…", f"queries are limited to {MAX_QUERY} characters here")
        with lock:
            hits = index.search(q, k=limit, offset=offset, image_files=only_uploads,
                                label=(label_set, label) if label_set and label else None)
        return [{"id": h.file_id, "rank": h.rank, "score": round(h.score, 4), "path": h.path,
                 "name": os.path.basename(h.path)} for h in hits]

    # -- error handling: pages for people, JSON for scripts --------------------
    @app.exception_handler(ClipdexError)
    async def clipdex_error(request: Request, exc: ClipdexError) -> Response:
        status = 404 if isinstance(exc, PhotoNotFound) else 400
        return _error(request, status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail))

    def _error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return render("error.html", http_status=status, status_code=status, message=message)

    # -- pages ----------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def home(q: str = Query("", max_length=MAX_QUERY), like: int | None = None,
                   set: str = Query("", max_length=200), label: str = Query("", max_length=200),
                   page: int = Query(1, ge=1, le=MAX_OFFSET // PAGE_SIZE)) -> HTMLResponse:
        if like is not None:
            with lock:
                q = "@" + shlex.quote(index.photo(like).path)
        results: list[dict[str, Any]] = []
        error = ""
        if q.strip():
            try:
                results = search_page(q, (page - 1) * PAGE_SIZE, PAGE_SIZE, set, label)
            except ClipdexError as e:
                error = str(e)
        elif set and label:  # browse one label, most confident first
            with lock:
                results = _label_browse(index, set, label, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        labels_of_set: list[str] = []
        if set:
            with lock:
                labels_of_set = _safe(lambda: index.classification_labels(set), [])
        with lock:
            status = index.status()
        return render("search.html", q=q, results=results, error=error, page=page,
                      page_size=PAGE_SIZE, set=set, label=label, labels_of_set=labels_of_set,
                      status=status)

    @app.get("/photo/{file_id}", response_class=HTMLResponse)
    async def photo_page(file_id: int) -> HTMLResponse:
        with lock:
            record = index.photo(file_id)
            labels = index.photo_labels(file_id)
            sets = {pl.set_name: index.classification_labels(pl.set_name) for pl in labels}
        exists = os.path.isfile(record.path)
        row = {k: v for k, v in metadata.get(record.path, {}).items() if v not in ("", None)}
        return render("photo.html", photo=record, labels=labels, set_labels=sets, exists=exists,
                      name=os.path.basename(record.path), like_query="@" + shlex.quote(record.path),
                      metadata=row)

    @app.get("/api", response_class=HTMLResponse)
    async def api_index() -> HTMLResponse:
        from fastapi.routing import APIRoute

        routes = [(sorted(r.methods or {"GET"})[0], r.path, (r.endpoint.__doc__ or "").strip())
                  for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")]
        return render("api.html", routes=routes)

    @app.get("/labels", response_class=HTMLResponse)
    async def labels_index() -> HTMLResponse:
        with lock:
            summaries = [(name, index.classification(name).counts()) for name in index.label_sets()]
        return render("labels.html", summaries=summaries)

    @app.get("/labels/{name}", response_class=HTMLResponse)
    async def label_set_page(name: str, sort: str = Query("random", pattern="^(random|least|most)$"),
                             per: int = Query(12, ge=1, le=MAX_PAGE), seed: int = 0,
                             label: str = Query("", max_length=200)) -> HTMLResponse:
        with lock:
            sections = _label_sections(index, name, sort, per, seed, label)
            labels = index.classification_labels(name)
        return render("label_set.html", name=name, sections=sections, labels=labels, sort=sort,
                      per=per, seed=seed, only=label)

    @app.post("/upload")
    async def upload(file: UploadFile = File(...), q: str = Form("")) -> Response:
        path = await _save_upload(file, uploads)
        term = "@" + shlex.quote(str(path))
        extra = q.strip()
        return RedirectResponse("/?" + urlencode({"q": f"{term} + {extra}" if extra else term}), 303)

    # -- images ---------------------------------------------------------------
    @app.get("/thumb/{file_id}")
    async def thumb(file_id: int, size: int = Query(256)) -> Response:
        if size not in THUMB_SIZES:
            raise HTTPException(422, f"size must be one of {THUMB_SIZES}")
        with lock:
            record = index.store.file_by_id(file_id)
        if record is None or record.status != "ok" or not record.content_hash:
            return Response(PLACEHOLDER_SVG, 404, media_type="image/svg+xml")
        data = await run_in_threadpool(thumbs.get, record.path, record.content_hash, size)
        if data is None:  # deleted or unreadable since it was indexed
            return Response(PLACEHOLDER_SVG, 404, media_type="image/svg+xml")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    # -- JSON API -------------------------------------------------------------
    @app.get("/api/search")
    async def api_search(q: str = Query(..., min_length=1, max_length=MAX_QUERY),
                         k: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE),
                         offset: int = Query(0, ge=0, le=MAX_OFFSET),
                         set: str = Query("", max_length=200),
                         label: str = Query("", max_length=200)) -> dict[str, Any]:
        """Photos ranked by a query (same syntax as the CLI)."""
        return {"query": q, "offset": offset, "results": search_page(q, offset, k, set, label)}

    @app.get("/api/similar/{file_id}")
    async def api_similar(file_id: int, k: int = Query(PAGE_SIZE, ge=1, le=MAX_PAGE),
                          offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> dict[str, Any]:
        """Photos most like an indexed photo ("more like this")."""
        with lock:
            q = "@" + shlex.quote(index.photo(file_id).path)
        return {"query": q, "offset": offset, "results": search_page(q, offset, k, "", "")}

    @app.get("/api/photos/{file_id}")
    async def api_photo(file_id: int) -> dict[str, Any]:
        """A photo's stored facts and its labels in every classification run."""
        with lock:
            record = index.photo(file_id)
            labels = index.photo_labels(file_id)
        return {"id": record.id, "path": record.path, "size": record.size, "width": record.width,
                "height": record.height, "mtime_ns": record.mtime_ns, "sha256": record.content_hash,
                "exists": os.path.isfile(record.path), "labels": [vars(pl) for pl in labels],
                "metadata": metadata.get(record.path, {})}

    @app.get("/api/labels")
    async def api_labels() -> dict[str, Any]:
        """Label sets run on the index, with photo counts per label."""
        with lock:
            return {"sets": [{"name": n, "counts": index.classification(n).counts()}
                             for n in index.label_sets()]}

    @app.get("/api/labels/{name}")
    async def api_label_set(name: str, sort: str = Query("random", pattern="^(random|least|most)$"),
                            per: int = Query(12, ge=1, le=MAX_PAGE), seed: int = 0,
                            label: str = Query("", max_length=200)) -> dict[str, Any]:
        """Examples per label of a set, with probabilities and corrections."""
        with lock:
            return {"set": name, "sections": _label_sections(index, name, sort, per, seed, label)}

    @app.post("/api/labels/{name}/corrections")
    async def api_correct(name: str, correction: Correction) -> dict[str, Any]:
        """Record a person's label for a photo (ground truth for `clipdex evaluate`)."""
        with lock:
            index.correct(name, correction.file_id, correction.label)
        return {"set": name, "file_id": correction.file_id, "label": correction.label, "saved": True}

    @app.get("/api/status")
    async def api_status() -> dict[str, Any]:
        """The index: folders, counts, models."""
        with lock:
            status = index.status()
        return {"path": status.path, "roots": status.roots, "indexed": status.indexed,
                "failed": status.failed, "models": [vars(m) for m in status.models]}

    return app


def load_metadata(index: Index, table: str | os.PathLike[str], key: str) -> dict[str, dict[str, str]]:
    """The user's table, keyed by indexed photo path (rows that match no photo are left out)."""
    from clipdex.export import KeyMatcher, read_table

    _header, rows = read_table(table, key)
    matcher = KeyMatcher(index.searchable().paths)
    out = {}
    for row in rows:
        path = matcher.match(row.get(key) or "")
        if path is not None:
            out[path] = row
    return out


def _safe(fn: Any, default: Any) -> Any:
    try:
        return fn()
    except ClipdexError:
        return default


def _label_browse(index: Index, name: str, label: str, offset: int, limit: int) -> list[dict[str, Any]]:
    result = index.classification(name)
    members = [i for i, labels in enumerate(result.effective_labels()) if label in labels]
    members.sort(key=lambda i: -float(result.confidence[i]))
    return [{"id": result.file_ids[i], "rank": offset + n + 1, "score": round(float(result.confidence[i]), 4),
             "path": result.paths[i], "name": os.path.basename(result.paths[i])}
            for n, i in enumerate(members[offset:offset + limit])]


def _label_sections(index: Index, name: str, sort: str, per: int, seed: int,
                    only: str) -> list[dict[str, Any]]:
    """Per label: count and ``per`` example photos (random, least or most confident)."""
    from clipdex.review import review_rows

    result = index.classification(name)
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


async def _save_upload(file: UploadFile, folder: Path) -> Path:
    """Keep an uploaded query image in the index folder, named by its content hash."""
    suffix = UPLOAD_TYPES.get(file.content_type or "")
    if suffix is None:
        raise HTTPException(415, f"uploads must be images ({', '.join(UPLOAD_TYPES)}), "
                                 f"not {html.escape(file.content_type or 'unknown')}")
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"uploads are limited to {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise HTTPException(400, "the upload is not a readable image") from None
    path = folder / (hashlib.sha256(data).hexdigest()[:32] + suffix)
    write_atomically(path, data)
    return path
