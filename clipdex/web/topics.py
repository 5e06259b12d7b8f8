"""The Topics page: a mosaic of each topic's most typical photos, its name and size, linking to
the search page filtered to the topic and to its label page; and the API to read topics or find
them (:func:`clipdex.topics.find_topics`, run in a worker thread, one run at a time)."""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from clipdex.errors import ModelError
from clipdex.web.context import WebContext

MAX_NAME = 200  # as the app's label set names (clipdex.web.app.MAX_NAME)
MOSAIC_PHOTOS = 6  # photos of a topic's mosaic on the page
MAX_TYPICAL = 50  # the most typical photos the API gives per topic


class TopicsRequest(BaseModel):
    """A request to find topics: the label set to store them as, k (None: chosen) and the seed."""

    name: str = Field("topics", min_length=1, max_length=MAX_NAME)
    k: int | None = Field(None, ge=2, le=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)


def add_routes(app: FastAPI, ctx: WebContext) -> None:
    """Register /topics, GET /api/topics and POST /api/topics on ``app``."""
    running = threading.Lock()  # one clustering at a time: it takes seconds and every core

    def read(set_name: str, typical: int) -> dict[str, Any]:
        from clipdex.topics import stored_topics, topic_sets

        with ctx.access.locked() as idx:
            sets = topic_sets(idx)
            if set_name and set_name not in sets:
                raise HTTPException(404, f"label set {set_name!r} holds no topics on this index "
                                         f"(sets of topics: {', '.join(sets) or 'none yet'}); "
                                         "find topics with `clipdex topics` or POST /api/topics")
            chosen = set_name or (sets[-1] if sets else "")
            if not chosen:
                return {"set": "", "sets": [], "topics": [], "photos": 0, "origin": {}}
            result = idx.classification(chosen)
        origin = {k: v for k, v in (result.label_set.origin or {}).items() if k != "topics"}
        return {"set": chosen, "sets": sets, "photos": len(result.file_ids), "origin": origin,
                "topics": stored_topics(result, typical)}

    @app.get("/topics", response_class=HTMLResponse)
    async def topics_page(set: str = Query("", max_length=MAX_NAME)) -> Response:
        view = await ctx.off_loop(None, read, set, MOSAIC_PHOTOS)
        return ctx.render("topics.html", **view)

    @app.get("/api/topics")
    async def api_topics(set: str = Query("", max_length=MAX_NAME),
                         typical: int = Query(MOSAIC_PHOTOS, ge=1, le=MAX_TYPICAL)) -> dict[str, Any]:
        """The stored topics of label set ``set`` (default: the newest set of topics): each topic's
        name, size, most typical photos, candidate names and majority labels, and how they were found."""
        return await ctx.off_loop(None, read, set, typical)

    def find(request: TopicsRequest) -> dict[str, Any]:
        from clipdex.topics import find_topics

        if not running.acquire(blocking=False):
            raise HTTPException(409, "topics are being found already; wait for that run to finish")
        try:
            with ctx.access.locked() as idx:
                try:
                    _ = idx.encoder  # built once, under the lock (search threads share it)
                except ModelError:
                    pass  # find_topics says why the topics are numbered
            return find_topics(ctx.access.index, k=request.k, name=request.name, seed=request.seed).to_dict()
        finally:
            running.release()

    @app.post("/api/topics")
    async def api_find_topics(request: TopicsRequest) -> dict[str, Any]:
        """Find topics in the stored vectors and store them as label set ``name`` (JSON body: ``name``,
        ``k`` (null: chosen automatically), ``seed``); answers as ``clipdex topics --json``."""
        return await ctx.off_loop(ctx.search_threads, find, request)
