"""The label page's learning panel: learn from corrections, the cross-validated gain, and the photos
a set is least sure of (active learning), through :mod:`clipdex.learn`.

``GET /api/labels/{name}/learning`` says what the panel shows; ``POST /api/labels/{name}/learn``
learns from the corrections of zero-shot set ``name`` (stored as ``name-learned``; ``name`` stays
zero-shot) and answers the scores and the new list of photos to correct next.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query

from clipdex.errors import LabelSetError
from clipdex.web.context import WebContext

MAX_NEXT = 60  # photos listed to correct next
DEFAULT_NEXT = 12
# = clipdex.web.app.MAX_NAME, the longest set name a route takes (not imported: app imports this module
# before it defines it; a test holds them equal)
MAX_NAME = 200
SetPath = Annotated[str, Path(max_length=MAX_NAME)]


def add_routes(app: FastAPI, ctx: WebContext) -> None:
    """Register the learning API routes (the panel itself is in label_set.html and learning.js)."""
    from clipdex.learn import learn_corrections, learning_state, read_corrections

    @app.get("/api/labels/{name}/learning")
    async def api_learning(name: SetPath, n: int = Query(DEFAULT_NEXT, alias="next", ge=1, le=MAX_NEXT)
                           ) -> dict[str, Any]:
        """What a label set can learn: its zero-shot source, corrections per label, whether it can learn
        from them (and what is missing), the last learned cross-validated scores, and the photos it is
        least sure of (corrected ones left out): the ones to correct next."""
        return await ctx.off_loop(None, state, name, n)

    def state(name: str, n: int) -> dict[str, Any]:
        with ctx.access.locked() as idx:
            return learning_state(idx, name, n)

    @app.post("/api/labels/{name}/learn")
    async def api_learn(name: SetPath, n: int = Query(DEFAULT_NEXT, alias="next", ge=1, le=MAX_NEXT)) -> dict[str, Any]:
        """Learn from the corrections of zero-shot set NAME: a probe combined with the set's prompts, its
        weight chosen by cross-validation (0 = pure zero-shot is a choice, so the selection never scores
        below zero-shot on its folds); stored as NAME-learned. Answers the scores (zero_shot; combined,
        probe and baseline nested, with 3 corrected photos a label or more; selection: the stored
        choice's score on the folds it was chosen on) and the learning state with the photos to
        correct next."""
        return await ctx.off_loop(ctx.search_threads, learn, name, n)

    def learn(name: str, n: int) -> dict[str, Any]:
        # The index's lock only to read (the corrections, the vectors, the encoder: built once, under it)
        # and to store: encoding the prompts and the cross-validation (seconds) run outside it, so
        # searches and corrections go on meanwhile.
        with ctx.access.locked() as idx:
            data = read_corrections(idx, name)
        learned = learn_corrections(data)
        assert learned.result is not None
        with ctx.access.locked() as idx:
            try:
                idx.save_classification(learned.result)
            except ValueError:  # a photo it labelled left the index meanwhile
                raise LabelSetError(f"label set {name!r}", "could not be stored: the index changed while it "
                                    "learned", "Learn again.") from None
            return {"learned": {**learned.to_dict(), "saved": True}, "state": learning_state(idx, name, n)}
