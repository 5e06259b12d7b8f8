"""Search filters as the web gets them: URL parameters in, a checked :class:`SearchFilter` out.

Every filter lives in the URL (``folder``, repeatable; ``after``; ``before``;
``set`` with ``label``; ``only``: photos or videos), so a filtered search is a link, and the pages' own
links (next page, "more like this", infinite scroll) carry the same
parameters on. A folder must be a folder of the index or one inside it; a
date is one of :data:`~clipdex.search.filters.DATE_FORMS`. Anything else is a
:class:`FilterError` whose message names the parameter, shown as a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clipdex.errors import FilterError
from clipdex.search.filters import MEDIA, SearchFilter, check_folder, parse_date

MAX_FOLDERS = 20  # folders one search may name (each is one SQL condition)
MIDNIGHT = "T00:00:00"


@dataclass(frozen=True)
class FilterForm:
    """The filter parameters of one request, as given (empty strings: not set)."""

    folders: tuple[str, ...] = ()
    after: str = ""
    before: str = ""
    set: str = ""
    label: str = ""
    only: str = ""  # "photos", "videos" (their moments), or "" for both

    @classmethod
    def of(cls, folders: Sequence[str] = (), after: str = "", before: str = "", set: str = "",
           label: str = "", only: str | None = "") -> "FilterForm":
        """The form with blank fields dropped (an HTML form sends every field, empty or not)."""
        kept = tuple(dict.fromkeys(f.strip() for f in folders if f.strip()))
        return cls(folders=kept, after=after.strip(), before=before.strip(), set=set.strip(),
                   label=label.strip(), only=(only or "").strip())

    @property
    def narrows(self) -> bool:
        """Whether a folder, date or kind is asked for (these need a query; a label alone can be browsed)."""
        return bool(self.folders or self.after or self.before or self.only)

    @property
    def any(self) -> bool:
        return self.narrows or bool(self.set and self.label)

    def params(self, *, for_api: bool = False) -> list[tuple[str, str]]:
        """The non-empty parameters, in URL order, for links that keep the filters.

        A set without a label is kept on pages (its label menu stays open) but
        left out for the API, which wants both or neither.
        """
        out = [("folder", f) for f in self.folders]
        out += [(name, value) for name, value in (("after", self.after), ("before", self.before)) if value]
        if self.set and (self.label or not for_api):
            out.append(("set", self.set))
        if self.label and (self.set or not for_api):
            out.append(("label", self.label))
        if self.only:
            out.append(("only", self.only))
        return out

    def check(self, roots: Sequence[str], *, where: str = "") -> SearchFilter | None:
        """The :class:`SearchFilter` these parameters ask for (None: no filter).

        ``roots`` are the index's folders; a folder must be one of them or lie
        inside one. ``where`` says where the folders are listed, for messages.
        Raises :class:`FilterError` naming the parameter at fault.
        """
        if len(self.folders) > MAX_FOLDERS:
            raise FilterError("folder", f"{len(self.folders)} folders were given, at most {MAX_FOLDERS} "
                              "are allowed", "Pick fewer folders, or a folder that holds them.")
        folders = tuple(check_folder(f, roots, where) for f in self.folders)
        label = (self.set, self.label) if self.set and self.label else None
        if self.only and self.only not in MEDIA:
            raise FilterError(f"only {self.only!r}", "is not a kind of result", f"Use one of {', '.join(MEDIA)}.")
        made = SearchFilter.make(label=label, folders=folders, after=self.after or None,
                                 before=self.before or None, names=("after", "before"), media=self.only or None)
        return made if made else None


def date_field(text: str) -> tuple[str, str]:
    """(input type, value) that shows the date ``text`` in a form and sends it back unchanged in
    meaning: a day as a date input; a time as a datetime-local input; unreadable text as text."""
    if not text:
        return "date", ""
    try:
        start = parse_date(text, "date")
    except FilterError:
        return "text", text
    if start.endswith(MIDNIGHT):  # a year or a month means its first day: the same filter
        return "date", start[:10]
    return "datetime-local", start


def describe(found: SearchFilter) -> list[str]:
    """The filter in a few words per part, for the page ("in /photos/trip", "taken from 2021-06-01")."""
    parts = [f"in {' or '.join(found.folders)}"] if found.folders else []
    if found.after:
        parts.append("taken from " + _shown_date(found.after))
    if found.before:
        parts.append("taken before " + _shown_date(found.before))
    if found.label:
        parts.append(f"{found.label[0]} = {found.label[1]}")
    if found.media:
        parts.append("photos only" if found.media == "photos" else "moments of videos only")
    return parts


def _shown_date(value: str) -> str:
    return value[:10] if value.endswith(MIDNIGHT) else value.replace("T", " ")
