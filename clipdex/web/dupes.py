"""Web pages of dupes (filled in by its issue's work)."""

from __future__ import annotations

from fastapi import FastAPI

from clipdex.web.context import WebContext


def add_routes(app: FastAPI, ctx: WebContext) -> None:
    """Register this module's pages and API routes on app."""
