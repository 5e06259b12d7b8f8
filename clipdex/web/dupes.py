"""The duplicates page: groups of copies side by side, keeper first, and marking which to keep.

``GET /duplicates`` shows the groups :func:`clipdex.duplicates.find_duplicates` finds with the model's
stored rule (calibrated by ``clipdex duplicates``, else the default: the web app never encodes);
``GET /api/duplicates`` gives them as JSON; ``POST /api/duplicates/keepers`` marks a photo to keep
(stored in the index: ``clipdex duplicates --move-extras`` never moves it, and its group's other
photos become the extras).

Finding groups takes a while on a large collection, so it runs in a background thread of its own
(never in a request, never holding a search slot) while the page shows how far it got and polls
``GET /api/duplicates/status``. The groups are kept until the photos change (added, removed,
replaced, moved aside by ``--move-extras`` in another process, a folder forgotten, the model's rows
renumbered, the rule calibrated again): :meth:`Store.files_stamp`, taken before the work starts. A
keeper mark changes no group: marks are applied when the groups are drawn.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from clipdex.errors import DuplicatesError
from clipdex.web.context import WebContext

if TYPE_CHECKING:
    from clipdex.duplicates import DuplicateGroup, DuplicateMember, DuplicateReport

log = logging.getLogger(__name__)

PAGE_GROUPS = 40  # groups a page shows
MAX_PAGE = 100_000
MAX_ID = 2**63 - 1  # SQLite's largest integer
POLL_MS = 1_000  # how often the page asks how far the search got


class KeeperMark(BaseModel):
    """A photo to keep (``keep`` true) or to take the mark from."""

    file_id: int = Field(ge=1, le=MAX_ID)
    keep: bool = True


class _Job:
    """The last report, the files stamp it was computed for, and the run in progress (one at a time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: object = None  # the files stamp of ``value``
        self.value: tuple[DuplicateReport, str] | None = None
        self.running: object = None  # the stamp being computed for (None: no run)
        self.failed: tuple[object, str] | None = None  # (stamp, why) of the last run that failed
        self.stage = ""
        self.done = 0
        self.total = 0
        self.runs = 0  # runs started, for tests and the log

    def progress(self, stage: str) -> Any:
        def update(done: int, total: int) -> None:
            self.stage, self.done, self.total = stage, done, total
        return update

    def status(self) -> dict[str, Any]:
        return {"stage": self.stage, "done": self.done, "total": self.total}


def add_routes(app: FastAPI, ctx: WebContext) -> None:
    """Register the duplicates page and its API routes on app."""
    job = _Job()

    def compute(key: object) -> None:
        from clipdex.duplicates import find_duplicates, rule_for

        try:
            with ctx.access.reader() as reader:
                rule, note = rule_for(reader)
                found = find_duplicates(reader, rule, progress=job.progress("neighbours"),
                                        phash_progress=job.progress("pHash"))
        except Exception as e:  # shown on the page; the next change of the photos tries again
            log.exception("finding duplicates failed")
            with job.lock:
                job.failed, job.running = (key, f"{type(e).__name__}: {e}"), None
            return
        with job.lock:
            job.key, job.value, job.running, job.failed = key, (found, note), None, None

    def state() -> tuple[tuple["DuplicateReport", str] | None, dict[str, Any]]:
        """The report for the photos as they are now, or None and how far its run got (started here
        when none runs for them)."""
        with ctx.access.reader() as reader:
            key = reader.store.files_stamp()
        with job.lock:
            if job.value is not None and job.key == key:
                return job.value, {"state": "ready"}
            if job.failed is not None and job.failed[0] == key:
                return None, {"state": "failed", "error": job.failed[1]}
            if job.running is None:
                job.running, job.stage, job.done, job.total = key, "starting", 0, 0
                job.runs += 1
                threading.Thread(target=compute, args=(key,), name="clipdex-duplicates", daemon=True).start()
            return None, {"state": "finding", **job.status()}

    def marked() -> set[str]:
        with ctx.access.reader() as reader:
            return reader.store.keepers()

    def page_view(page: int) -> HTMLResponse:
        value, status = state()
        if value is None:
            return ctx.render("duplicates.html", report=None, status=status, poll_ms=POLL_MS)
        found, note = value
        groups = _with_marks(found.groups, marked())
        start = (page - 1) * PAGE_GROUPS
        pages = max(1, -(-len(groups) // PAGE_GROUPS))
        return ctx.render("duplicates.html", report=found, note=note, groups=groups[start:start + PAGE_GROUPS],
                          extras=sum(len(g.extras) for g in groups), page=page, pages=pages, status=status,
                          estimates=found.rule.estimates(), name=_name, size=_size, why=_why)

    @app.get("/duplicates", response_class=HTMLResponse)
    async def duplicates_page(page: int = Query(1, ge=1, le=MAX_PAGE)) -> HTMLResponse:
        result: HTMLResponse = await ctx.off_loop(None, page_view, page)
        return result

    def api_view(offset: int, limit: int) -> Response | dict[str, Any]:
        from clipdex.duplicates import report_json

        value, status = state()
        if value is None:
            return JSONResponse(status, status_code=500 if status["state"] == "failed" else 202)
        found, note = value
        groups = _with_marks(found.groups, marked())
        data = report_json(replace(found, groups=groups), note, groups[offset:offset + limit])
        for g, shown in zip(groups[offset:offset + limit], data["groups"], strict=True):
            for m, member in zip(g.members, shown["members"], strict=True):
                member.setdefault("why", list(getattr(m, "why", ()) or ()))
        return data

    @app.get("/api/duplicates", response_model=None)
    async def api_duplicates(offset: int = Query(0, ge=0, le=10_000_000),
                             limit: int = Query(PAGE_GROUPS, ge=1, le=1_000)) -> Response | dict[str, Any]:
        """Groups of duplicate photos, largest first, keeper first: the rule used, how they were found,
        and a page of groups (``offset``, ``limit``), each member with its cosine and pHash distance
        to the keeper and ``why`` it joined. While they are being found (in the background, after the
        photos changed): HTTP 202 and ``{"state": "finding", "stage", "done", "total"}``."""
        result: Response | dict[str, Any] = await ctx.off_loop(None, api_view, offset, limit)
        return result

    @app.get("/api/duplicates/status")
    async def api_duplicates_status() -> dict[str, Any]:
        """Whether the groups are ready for the photos as they are now (``{"state": "ready"}``), being
        found (``"finding"``, with ``stage``, ``done`` and ``total``; asking starts the run), or
        ``"failed"`` (with ``error``)."""
        _, status = await ctx.off_loop(None, state)
        result: dict[str, Any] = status
        return result

    def mark_view(mark: KeeperMark) -> dict[str, Any]:
        from clipdex.duplicate_moves import mark_keeper

        if mark.keep:
            with job.lock:
                value = job.value
            if value is None:
                raise HTTPException(409, "duplicates are still being found; mark a photo once the page shows them")
            if not any(m.file_id == mark.file_id for g in value[0].groups for m in g.members):
                with ctx.access.locked() as index:
                    index.photo(mark.file_id)  # 404 for a photo the index lacks
                raise DuplicatesError(f"photo #{mark.file_id}", "is in no group of duplicates",
                                      "Mark a photo the duplicates page shows.")
        with ctx.access.locked() as index:
            record = mark_keeper(index, mark.file_id, mark.keep)
        return {"file_id": record.id, "path": record.path, "keep": mark.keep}

    @app.post("/api/duplicates/keepers")
    async def api_mark_keeper(mark: KeeperMark) -> dict[str, Any]:
        """Mark a photo to keep (``{"file_id": N, "keep": true}``; it must be in a group: 400 if not,
        404 for no such photo), or take the mark away (``keep`` false). `clipdex duplicates
        --move-extras DIR` never moves a marked photo; in its group the photos not marked are the
        extras. A mark changes no group: the groups are not searched again."""
        result: dict[str, Any] = await ctx.off_loop(None, mark_view, mark)
        return result

    app.state.duplicates_job = job  # for tests: how many runs started


def _with_marks(groups: list["DuplicateGroup"], marks: set[str]) -> list["DuplicateGroup"]:
    """``groups`` with the keeper marks as they are now: marked photos first (kept), else the photo
    the keeper rule prefers. The groups themselves (members, numbers, closeness) stay as found."""
    out = []
    for g in groups:
        members = [replace(m, marked=m.path in marks) for m in g.members]
        if all(m.marked == old.marked for m, old in zip(members, g.members, strict=True)):
            out.append(g)
            continue
        if any(m.marked for m in members):
            members.sort(key=lambda m: not m.marked)  # stable: the found order otherwise
        elif any(old.marked for old in g.members):  # the mark that chose the keeper is gone
            members.sort(key=_preferred)
        out.append(replace(g, members=[replace(m, keeper=i == 0) for i, m in enumerate(members)]))
    return out


def _preferred(m: "DuplicateMember") -> tuple[Any, ...]:
    """The keeper rule's order among unmarked members (most pixels, oldest, largest file, shortest path)."""
    return (-m.pixels, m.taken_at or "\uffff", -m.size, len(m.path), m.path)


def _why(m: object) -> str:
    return "+".join(getattr(m, "why", ()) or ())


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
