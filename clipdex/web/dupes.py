"""The duplicates page: groups of copies side by side, keeper first, and marking which to keep.

``GET /duplicates`` shows the groups :func:`clipdex.duplicates.find_duplicates` finds with the model's
stored rule (calibrated by ``clipdex duplicates``, else the default: the web app never encodes);
``GET /api/duplicates`` gives them as JSON; ``POST /api/duplicates/keepers`` marks a photo to keep
(stored in the index: ``clipdex duplicates --move-extras`` never moves it, and its group's other
photos become the extras). Groups are computed once and kept until the index changes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from clipdex.web.context import WebContext

if TYPE_CHECKING:
    from clipdex.duplicates import DuplicateReport

PAGE_GROUPS = 40  # groups a page shows
MAX_PAGE = 100_000
MAX_ID = 2**63 - 1  # SQLite's largest integer


class KeeperMark(BaseModel):
    """A photo to keep (``keep`` true) or to take the mark from."""

    file_id: int = Field(ge=1, le=MAX_ID)
    keep: bool = True


class _Cache:
    """The last report, with the catalog stamp it was computed at (one index, one report)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stamp: object = None
        self.value: tuple[DuplicateReport, str] | None = None


def add_routes(app: FastAPI, ctx: WebContext) -> None:
    """Register the duplicates page and its API routes on app."""
    cache = _Cache()

    def report() -> tuple["DuplicateReport", str]:
        from clipdex.duplicates import find_duplicates, rule_for

        with ctx.access.locked() as index:
            stamp = index.store.stamp()
        with cache.lock:  # one computation at a time; a second request waits and reuses it
            if cache.value is not None and cache.stamp == stamp:
                return cache.value
            with ctx.access.reader() as reader:
                rule, note = rule_for(reader)
                found = find_duplicates(reader, rule)
            with ctx.access.locked() as index:  # what it wrote (pHashes cached) is part of this state
                cache.stamp = index.store.stamp()
            cache.value = (found, note)
            return cache.value

    def page_view(page: int) -> HTMLResponse:
        found, note = report()
        start = (page - 1) * PAGE_GROUPS
        groups = found.groups[start:start + PAGE_GROUPS]
        pages = max(1, -(-len(found.groups) // PAGE_GROUPS))
        return ctx.render("duplicates.html", report=found, note=note, groups=groups, page=page, pages=pages,
                          estimates=found.rule.estimates(), name=_name, size=_size)

    @app.get("/duplicates", response_class=HTMLResponse)
    async def duplicates_page(page: int = Query(1, ge=1, le=MAX_PAGE)) -> HTMLResponse:
        result: HTMLResponse = await ctx.off_loop(ctx.search_threads, page_view, page)
        return result

    def api_view(offset: int, limit: int) -> dict[str, Any]:
        from clipdex.duplicates import report_json

        found, note = report()
        return report_json(found, note, found.groups[offset:offset + limit])

    @app.get("/api/duplicates")
    async def api_duplicates(offset: int = Query(0, ge=0, le=10_000_000),
                             limit: int = Query(PAGE_GROUPS, ge=1, le=1_000)) -> dict[str, Any]:
        """Groups of duplicate photos, largest first, keeper first: the rule used, how they were found,
        and a page of groups (``offset``, ``limit``), each member with its cosine and pHash distance
        to the keeper."""
        result: dict[str, Any] = await ctx.off_loop(ctx.search_threads, api_view, offset, limit)
        return result

    def mark_view(mark: KeeperMark) -> dict[str, Any]:
        from clipdex.duplicate_moves import mark_keeper

        with ctx.access.locked() as index:
            record = mark_keeper(index, mark.file_id, mark.keep)
        return {"file_id": record.id, "path": record.path, "keep": mark.keep}

    @app.post("/api/duplicates/keepers")
    async def api_mark_keeper(mark: KeeperMark) -> dict[str, Any]:
        """Mark a photo to keep (``{"file_id": N, "keep": true}``), or take the mark away (``keep``
        false). `clipdex duplicates --move-extras DIR` never moves a marked photo; in its group the
        photos not marked are the extras."""
        result: dict[str, Any] = await ctx.off_loop(None, mark_view, mark)
        return result


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
