"""Search filters: by stored label, by folder, by date taken; combinable with any query.

Dates are local wall-clock times, as cameras write them (EXIF DateTimeOriginal
has no time zone): ``files.taken_at`` holds ``YYYY-MM-DDTHH:MM:SS``, from EXIF
where the photo has it and from the file's modification time where it has not.
``after`` is inclusive and ``before`` exclusive, each given as a year
(``2021``), a month (``2021-06``), a day (``2021-06-01``) or a time
(``2021-06-01T18:30``, ``2021-06-01 18:30:15``)::

    --after 2021-06 --before 2021-07     every photo taken in June 2021
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from clipdex.errors import FilterError, shorten

DATE = re.compile(r"^(?P<y>\d{4})(?:-(?P<m>\d{1,2})(?:-(?P<d>\d{1,2})"
                  r"(?:[T ](?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2}))?)?)?)?$")
DATE_FORMS = "2021, 2021-06, 2021-06-01 or 2021-06-01T18:30"
MAX_SHOWN_FOLDERS = 8  # folders listed in an "unknown folder" message


def parse_date(text: str, option: str) -> str:
    """``text`` as the start of the period it names, ``YYYY-MM-DDTHH:MM:SS``.

    Raises :class:`FilterError` naming ``option`` for anything else.
    """
    found = DATE.match(text.strip())
    if not found:
        raise FilterError(f"{option} {text!r}", "is not a date", f"Write it as {DATE_FORMS}.")
    parts = [int(found[g]) if found[g] else default
             for g, default in (("y", 0), ("m", 1), ("d", 1), ("H", 0), ("M", 0), ("S", 0))]
    y, m, d, hh, mm, ss = parts
    limits = [(m, 1, 12, "month"), (hh, 0, 23, "hour"), (mm, 0, 59, "minute"), (ss, 0, 59, "second")]
    for value, low, high, name in limits:
        if not low <= value <= high:
            raise FilterError(f"{option} {text!r}", f"{name} {value} is out of range",
                              f"Write it as {DATE_FORMS}.")
    if not 1 <= d <= _days_in(y, m):
        raise FilterError(f"{option} {text!r}", f"day {d} is not in that month", f"Write it as {DATE_FORMS}.")
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}"


def _days_in(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


MEDIA = ("photos", "videos")  # what SearchFilter.media keeps


@dataclass(frozen=True)
class SearchFilter:
    """Which photos a search may return; every part that is set must hold.

    ``label`` is (label set, label) of a stored classification (a person's
    correction wins over the prediction); ``folders`` are folders (a photo under
    any of them passes); ``after``/``before`` bound the date taken, normalised
    by :func:`parse_date`; ``media`` "photos" keeps photos only, "videos" moments of
    videos only.
    """

    label: tuple[str, str] | None = None
    folders: tuple[str, ...] = ()
    after: str | None = None
    before: str | None = None
    media: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.folders, str) or not all(isinstance(f, str) and f for f in self.folders):
            raise TypeError("folders must be a tuple of folder paths, e.g. folders=('/photos/2021',)")
        for value, option in ((self.after, "after"), (self.before, "before")):
            if value is not None and parse_date(value, option) != value:
                raise FilterError(f"{option} {value!r}", "is not a normalised date",
                                  "Make filters with SearchFilter.make(after=..., before=...).")
        if self.label is not None and (len(self.label) != 2 or not all(self.label)):
            raise TypeError("label must be (label set, label), e.g. label=('taken_time', 'night')")
        if self.media not in (None, *MEDIA):
            raise TypeError(f"media must be one of {', '.join(MEDIA)} or None, not {self.media!r}")

    def __bool__(self) -> bool:
        return bool(self.label or self.folders or self.after or self.before or self.media)

    @classmethod
    def make(cls, *, label: tuple[str, str] | None = None, folders: tuple[str, ...] | list[str] = (),
             after: str | None = None, before: str | None = None,
             names: tuple[str, str] = ("--after", "--before"), media: str | None = None) -> "SearchFilter":
        """A filter from what a person typed: dates parsed, an empty period refused. ``names``
        are what the dates are called where they were typed, for messages (options, URL
        parameters)."""
        first, last = names
        start = parse_date(after, first) if after else None
        end = parse_date(before, last) if before else None
        if start and end and start >= end:
            raise FilterError(f"{first} {after!r}, {last} {before!r}", "no date is in that period",
                              f"{first} is the first moment kept, {last} the first one left out: "
                              f"{last} must be later.")
        return cls(label=label, folders=tuple(folders), after=start, before=end, media=media)

    def describe(self) -> str:
        """The filter in words, for messages ("in /photos/trip, taken from 2021-06-01")."""
        parts = []
        if self.label:
            parts.append(f"labelled {self.label[1]!r} in {self.label[0]!r}")
        if self.folders:
            parts.append("in " + " or ".join(self.folders))
        if self.media:
            parts.append("photos only" if self.media == "photos" else "moments of videos only")
        if self.after:
            parts.append(f"taken from {self.after}")
        if self.before:
            parts.append(f"taken before {self.before}")
        return ", ".join(parts)


def check_folder(folder: str, roots: Sequence[str], where: str = "") -> str:
    """``folder`` in the index's own form (no trailing slash, no ``..``) if it can hold photos of
    the index: one of its folders (an import's ``https://host`` too), a folder inside one, or a
    folder around some; else :class:`FilterError` listing the index's folders. ``where`` says
    where they are listed, for the message."""
    if folder in roots:
        return folder
    shown = shorten(repr(folder), 120)
    hint = f" ({where})" if where else ""
    if not os.path.isabs(folder):
        raise FilterError(f"folder {shown}", "is not a full path (it must start with /)",
                          f"Pick one of the index's folders{hint}.")
    path = os.path.normpath(folder)
    inside = path.rstrip(os.sep) + os.sep
    if any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) or r.startswith(inside) for r in roots):
        return path
    listed = ", ".join(roots[:MAX_SHOWN_FOLDERS]) + (", …" if len(roots) > MAX_SHOWN_FOLDERS else "")
    raise FilterError(f"folder {shown}", "is not a folder of this index",
                      f"Its folders are: {listed or 'none yet'}. Pick one of them, or a folder inside "
                      f"or around one{hint}.")
