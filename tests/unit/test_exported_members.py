"""The public surface: a sorted ``__all__`` that resolves, and an error tree that is drawn whole."""

from __future__ import annotations

import inspect

import clipdex
from clipdex import errors


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert clipdex.__all__ == sorted(clipdex.__all__)
    for name in clipdex.__all__:
        assert getattr(clipdex, name) is not None


def test_every_error_class_is_in_the_drawn_tree() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.ClipdexError) and c.__module__ == errors.__name__]
    doc = errors.__doc__ or ""
    missing = [c.__name__ for c in classes if c.__name__ not in doc]
    assert not missing, f"add these to the tree in clipdex/errors.py's docstring: {missing}"
