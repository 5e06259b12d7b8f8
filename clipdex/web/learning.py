"""The label page's learning panel: learn from corrections, the cross-validated gain, and the photos
a set is least sure of (active learning), through :mod:`clipdex.learn`.

``GET /api/labels/{name}/learning`` says what the panel shows; ``POST /api/labels/{name}/learn``
learns from the corrections of zero-shot set ``name`` (stored as ``name-learned``; ``name`` stays
zero-shot) and answers the scores and the new list of photos to correct next.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query

from clipdex.web.context import WebContext

MAX_NEXT = 60  # photos listed to correct next
DEFAULT_NEXT = 12


def add_routes(app: FastAPI, ctx: WebContext) -> None:
    """Register the learning API routes (the panel itself is in label_set.html and learning.js)."""
    from clipdex.learn import learn_from_corrections, learning_state

    @app.get("/api/labels/{name}/learning")
    async def api_learning(name: str, n: int = Query(DEFAULT_NEXT, alias="next", ge=1, le=MAX_NEXT)
                           ) -> dict[str, Any]:
        """What a label set can learn: its zero-shot source, corrections per label, whether it can learn
        from them (and what is missing), the last learned cross-validated scores, and the photos it is
        least sure of (corrected ones left out): the ones to correct next."""
        return await ctx.off_loop(None, state, name, n)

    def state(name: str, n: int) -> dict[str, Any]:
        with ctx.access.locked() as idx:
            return learning_state(idx, name, n)

    @app.post("/api/labels/{name}/learn")
    async def api_learn(name: str, n: int = Query(DEFAULT_NEXT, alias="next", ge=1, le=MAX_NEXT)) -> dict[str, Any]:
        """Learn from the corrections of zero-shot set NAME: a probe combined with the set's prompts, its
        weight chosen by cross-validation (0 = pure zero-shot is a choice, so it never scores below
        zero-shot there); stored as NAME-learned. Answers the scores (zero_shot, probe, combined,
        baseline) and the learning state with the photos to correct next."""
        return await ctx.off_loop(ctx.search_threads, learn, name, n)

    def learn(name: str, n: int) -> dict[str, Any]:
        with ctx.access.locked() as idx:  # it encodes the prompts (the model) and writes the index
            learned = learn_from_corrections(idx, name)
            return {"learned": learned.to_dict(), "state": learning_state(idx, name, n)}
