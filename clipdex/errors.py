"""Every error clipdex raises on purpose.

    ClipdexError                  base: what went wrong, where, and what to do
    ├── ModelError
    │   ├── UnknownModel          a name that is neither in the registry nor open_clip's
    │   ├── ModelUnavailable      weights or export missing, not downloadable
    │   ├── ModelMismatch         index holds vectors of another model
    │   └── DimensionMismatch     imported vectors of another dimension than the model's
    ├── IndexError_
    │   ├── IndexNotFound         no index where one was expected
    │   ├── IndexVersionError     index written by a newer clipdex
    │   ├── IndexLocked           another process is writing the index
    │   ├── EmptyIndex            nothing indexed for the model yet
    │   ├── IndexDamaged          catalog or vector files damaged, truncated or missing
    │   └── IndexStorageError     the disk refused: full, read-only, I/O error
    ├── PhotoFolderError          missing, empty or unreadable folder to index
    ├── PhotoNotFound             no indexed photo with that id
    ├── ImageDecodeError          one image that cannot be used (recorded, not fatal)
    │   ├── ImageTooLarge         over --max-megapixels (retried once the limit is raised)
    │   ├── ImageUnreadable       the OS could not read it (retried on the next run)
    │   └── VideoError            a video that cannot be sampled (not a video, no picture, damaged)
    ├── QueryError                a search query that cannot be understood
    ├── FilterError               a search filter (folder, date, label) that cannot be used
    ├── LabelSetError             a label set or label file that cannot be used
    │   └── LabelSetNotRun        a set never run on the index
    ├── TableError                a metadata table that cannot be read or joined
    ├── InterchangeError          an export folder it cannot write, or embeddings it cannot import
    ├── DuplicatesError           duplicates that cannot be calibrated, moved or moved back
    ├── OutputError               an output file (grid, CSV, heatmap…) that cannot be written
    │   └── GridError             a contact sheet too large to draw
    │       └── ImageTypeError    an image output named with a type clipdex cannot write
    └── ReviewOptionError         review options (photos per label, seed, mode) out of range

Messages end in what to do. The CLI and the web app turn these into exit codes
and pages; nothing below them prints.
"""

from __future__ import annotations

import math
from pathlib import Path


def shorten(text: str, most: int) -> str:
    """``text`` cut to ``most`` characters (an ellipsis marks the cut), for quoting in a message."""
    return text if len(text) <= most else text[:most] + "…"


def first_line(error: BaseException) -> str:
    """'RuntimeError: the first line of its message', for quoting a library's exception in
    one of clipdex's own (libraries such as OpenVINO raise pages of detail)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class ClipdexError(Exception):
    """Base of every error clipdex raises on purpose."""


class ModelError(ClipdexError):
    """Something is wrong with the model that was asked for."""


class UnknownModel(ModelError):
    """The model name is not in the registry and is not an open_clip architecture."""

    def __init__(self, name: str, known: list[str], *, maybe_hf: bool = False) -> None:
        """``maybe_hf``: the name could be a Transformers checkpoint given without its ``hf:``."""
        self.model = name
        shown = ", ".join(known[:12]) + (", …" if len(known) > 12 else "")
        hint = (f" If {name} is a Transformers checkpoint (a hub repository or a save_pretrained folder), "
                f"say so: --model hf:{name}." if maybe_hf else "")
        super().__init__(
            f"unknown model {name!r}.{hint} Known names: {shown}. "
            "Run `clipdex models list` for the registry, use ARCH/PRETRAINED for any "
            "open_clip model (e.g. ViT-B-16/laion2b_s34b_b88k), hf:OWNER/NAME or hf:/path/to/folder "
            "for a Transformers CLIP or SigLIP checkpoint, or give a custom open_clip "
            "architecture with --model-config FILE.json --weights FILE."
        )


class ModelUnavailable(ModelError):
    """Neither the weights nor a ready export of a model are on disk, and they cannot be downloaded."""

    def __init__(self, model: str, looked: str, reason: str, fix: str) -> None:
        self.model = model
        self.looked = looked
        super().__init__(
            f"model {model!r} is not on this machine (its weights or a ready ONNX export): {reason}. "
            f"Looked in: {looked}. {fix}"
        )


class ModelMismatch(ModelError):
    """The index holds vectors of another model than the one asked for."""

    def __init__(self, asked: str, present: list[str], index: Path, hint: str) -> None:
        self.model = asked
        self.present = present
        self.index = index
        super().__init__(
            f"index {index} holds vectors of {', '.join(present) or 'no model'}, "
            f"not of {asked!r}. {hint}"
        )


class DimensionMismatch(ModelError):
    """Imported vectors whose dimension is not the model's."""

    def __init__(self, where: str, found: int, model: str, key: str, expected: int) -> None:
        self.found = found
        self.expected = expected
        self.model = model
        super().__init__(
            f"{where} holds {found}-dimensional vectors, but model {model} ({key}) makes "
            f"{expected}-dimensional ones. Import them with the model that made them "
            "(--model NAME, or --weights FILE [--model-config FILE.json]).")


class IndexError_(ClipdexError):
    """Something is wrong with an on-disk index."""


class IndexNotFound(IndexError_):
    def __init__(self, index: Path) -> None:
        self.index = index
        super().__init__(
            f"no clipdex index at {index}. Create one with `clipdex index PHOTO_DIR"
            f" --index {index}`, or point --index (or CLIPDEX_INDEX) at an existing one."
        )


class IndexVersionError(IndexError_):
    def __init__(self, index: Path, found: int, supported: int) -> None:
        self.index = index
        super().__init__(
            f"index {index} has schema version {found}, but this clipdex reads up to "
            f"version {supported}. Upgrade clipdex (pip install -U clipdex) to open it."
        )


class IndexLocked(IndexError_):
    def __init__(self, index: Path, holder: str) -> None:
        self.index = index
        super().__init__(
            f"index {index} is being written by another clipdex process ({holder}). "
            "Wait for it to finish, or pass --wait to queue behind it."
        )


class EmptyIndex(IndexError_):
    """Nothing to search: no photo encoded yet, or every folder gone (``missing_roots``)."""

    def __init__(self, index: Path, model: str, missing_roots: list[str] | None = None) -> None:
        self.index = index
        self.model = model
        self.missing_roots = missing_roots or []
        if self.missing_roots:
            shown = ", ".join(self.missing_roots[:3]) + (" …" if len(self.missing_roots) > 3 else "")
            message = (f"index {index} has nothing to search: the folders it indexed no longer exist "
                       f"({shown}). If they moved, run `clipdex index NEW_PLACE --index {index}` "
                       "(their vectors are reused, nothing is encoded again); if they are on a disk "
                       "that is not mounted, mount it; `clipdex remove --missing` forgets them.")
        else:
            message = (f"index {index} has no photos encoded with {model!r} yet (or its folders hold "
                       f"none now). Run `clipdex index PHOTO_DIR --index {index}` first.")
        super().__init__(message)


class IndexDamaged(IndexError_):
    """Part of an index is damaged or missing; never silently taken for empty or zero."""

    def __init__(self, index: Path, problem: str, fix: str) -> None:
        self.index = index
        self.problem = problem
        super().__init__(f"index {index} is damaged: {problem}. {fix}")


class IndexStorageError(IndexError_):
    """The disk refused a read or write of the index (full, read-only, I/O error)."""

    def __init__(self, index: Path, problem: str, fix: str) -> None:
        self.index = index
        self.problem = problem
        super().__init__(f"index {index}: {problem}. {fix}")


class PhotoFolderError(ClipdexError):
    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}. {fix}")


class ImageDecodeError(ClipdexError):
    """One image cannot be used; the indexer records it and moves on."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ImageTooLarge(ImageDecodeError):
    """An image above the megapixel limit (``--max-megapixels``).

    ``needed`` is the smallest whole-megapixel limit that admits it.
    """

    def __init__(self, path: str, pixels: int, limit_megapixels: float,
                 size: tuple[int, int] | None = None) -> None:
        self.pixels = pixels
        self.limit = limit_megapixels
        self.needed = max(1, math.ceil(pixels / 1_000_000))
        shown = f"{size[0]}x{size[1]} ({pixels / 1e6:,.1f} megapixels)" if size else \
            f"{pixels / 1e6:,.1f} megapixels"
        super().__init__(path, f"image is {shown}, above the {limit_megapixels:g}-megapixel limit "
                               "that guards against decompression bombs; if it is a genuine photo, "
                               f"index it with --max-megapixels {self.needed}")


class ImageUnreadable(ImageDecodeError):
    """The operating system could not read the file (gone, permissions, an I/O error).

    Unlike a bad image this may come right by itself; the indexer tries again on its next run.
    """

    def __init__(self, path: str, error: OSError) -> None:
        self.error = error
        super().__init__(path, f"cannot be read ({error.strerror or error})")


class VideoError(ImageDecodeError):
    """A video that cannot be sampled: not a video, no picture in it, a codec FFmpeg cannot
    decode here, cut short or damaged. Recorded as the video's failure reason and not retried
    until the file changes (an ``OSError`` reading it is raised as it is and retried)."""


class QueryError(ClipdexError):
    def __init__(self, query: str, problem: str) -> None:
        self.query = query
        self.problem = problem
        super().__init__(
            f"cannot understand query {query!r}: {problem}. "
            "See `clipdex search --help` for the query syntax."
        )


class FilterError(ClipdexError):
    """A search filter (folder, date, label) that cannot be used."""

    def __init__(self, what: str, problem: str, fix: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"{what}: {problem}. {fix}")


class LabelSetError(ClipdexError):
    """A label set (or a file of them) that cannot be used."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where = where
        super().__init__(f"{where}: {problem}. {fix}")


class LabelSetNotRun(LabelSetError):
    """A label set that was never run on the index (nothing stored under that name)."""


class TableError(ClipdexError):
    """A metadata table (CSV) that cannot be read, joined or evaluated against."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}. {fix}")


class InterchangeError(ClipdexError):
    """An export folder that cannot be written, or a folder of embeddings that cannot be imported."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}. {fix}")


class PhotoNotFound(ClipdexError):
    def __init__(self, photo: str) -> None:
        self.photo = photo
        super().__init__(f"no indexed photo {photo}. It may have been removed from the index; "
                         "search again to find it.")


class OutputError(ClipdexError):
    """An output file that cannot be written (checked before the work starts)."""

    def __init__(self, path: str, option: str, problem: str) -> None:
        self.path = path
        self.option = option
        super().__init__(f"{option} {path}: {problem}. Choose a path in a folder you can write to.")


class GridError(OutputError):
    """A contact sheet that cannot be drawn: too large, or an unknown image type."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        ClipdexError.__init__(self, f"grid {path}: {problem}. {fix}")
        self.path = path
        self.option = "--grid"


class ImageTypeError(GridError):
    """An image output (``--grid``, ``--heatmap``…) named with a type clipdex cannot write."""

    def __init__(self, path: str, option: str, problem: str, fix: str) -> None:
        ClipdexError.__init__(self, f"{option} {path}: {problem}. {fix}")
        self.path = path
        self.option = option


class ReviewOptionError(ClipdexError, ValueError):
    """A review option (photos per label, seed, mode) that cannot be used; the label set is fine."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where = where
        super().__init__(f"{where}: {problem}. {fix}")


class DuplicatesError(ClipdexError):
    """A duplicates operation that cannot be done: moving extras, undoing a move, calibrating.
    The message says what, where, and what to do."""

    def __init__(self, where: str, problem: str, fix: str, *, no_weights: bool = False) -> None:
        self.where = where
        self.problem = problem
        self.no_weights = no_weights  # calibration needs the model's weights, which are not at hand
        super().__init__(f"{where}: {problem}. {fix}")
