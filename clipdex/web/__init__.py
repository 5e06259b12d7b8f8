"""The local web app (``clipdex serve``): search and classification review in a browser."""

from clipdex.web.app import create_app

__all__ = ["create_app"]
