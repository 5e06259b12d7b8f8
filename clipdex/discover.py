"""Walk a photo folder: the image files in it, and the entries that cannot be used.

No image decoding happens here (no Pillow, no torch): this stage only looks at
names and ``stat`` results, so a walk of 100,000 files takes seconds.

Every file has two names. ``fs_path`` is the real one, exactly as the OS gave
it (a name that is not valid UTF-8 keeps its bytes as surrogate escapes), and
is what the pipeline opens. ``path`` is its display form (:func:`display_path`):
bytes that are not UTF-8 and control characters such as a newline are written
as ``\\xNN``, so it can be stored as text, printed and compared; the index is
keyed by it.
"""

from __future__ import annotations

import errno
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

SKIPPED_DIR_NAMES = frozenset({"@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information"})
INDEX_VECTORS_DIR = "vectors"  # a folder holding CATALOG_NAME and this folder is a clipdex index
# C0 and C1 control characters: a newline or an ESC in a name must not reach a terminal as is.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class FileEntry:
    """An image file found by the walk: its display path, real path and stat."""

    path: str
    size: int
    mtime_ns: int
    fs_path: str = ""  # the path to open; "" means the same as ``path``

    def __post_init__(self) -> None:
        if not self.fs_path:
            object.__setattr__(self, "fs_path", self.path)

    @property
    def raw_path(self) -> bytes | None:
        """The exact bytes of the real path when it differs from the display path, else None."""
        return os.fsencode(self.fs_path) if self.fs_path != self.path else None


@dataclass(frozen=True)
class Problem:
    """An entry that cannot be indexed, with the reason.

    ``kind`` is how a failure is retried (see ``clipdex.store.catalog.FAILURE_KINDS``):
    'transient' for what may come right by itself (a broken link, a permission).
    """

    path: str
    reason: str
    kind: str = "permanent"
    fs_path: str = ""

    @property
    def raw_path(self) -> bytes | None:
        return os.fsencode(self.fs_path) if self.fs_path and self.fs_path != self.path else None


@dataclass
class Walk:
    """What a walk found: image files, problems, and folders it could not read.

    ``root`` is the real path walked; ``unreadable_dirs`` and ``skipped_dirs``
    (clipdex index folders, never indexed) hold display paths.
    """

    root: str
    files: list[FileEntry]
    problems: list[Problem]
    unreadable_dirs: list[str]
    skipped_dirs: list[str] = field(default_factory=list)
    skip: frozenset[tuple[int, int]] = frozenset()  # (st_dev, st_ino) of folders skipped on request

    @property
    def display_root(self) -> str:
        return display_path(self.root)


def display_path(path: str) -> str:
    """A path safe to store and print.

    Bytes that are not UTF-8 and control characters are shown as ``\\xNN``
    escapes; any other path is returned unchanged.
    """
    # The common case, first and cheaply (every imported row's path comes here): a printable
    # string holds no control character and no surrogate escape (Unicode's Cc and Cs are not
    # printable), so there is nothing to escape.
    if path.isprintable():
        return path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        path = os.fsencode(path).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", path)


def is_index_folder(names: Iterable[str], folder: str) -> bool:
    """Whether a folder listing ``names`` is a clipdex index (its catalog next to ``vectors/``)."""
    from clipdex.store.catalog import CATALOG_NAME  # here: the store imports this module

    names = set(names)
    return CATALOG_NAME in names and INDEX_VECTORS_DIR in names and os.path.isdir(
        os.path.join(folder, INDEX_VECTORS_DIR))


def folder_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a folder, or None if it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def walk(root: str, extensions: Iterable[str], *,
         skip: Iterable[str | os.PathLike[str]] = ()) -> Walk:
    """Find image files under ``root`` recursively, following symlinks safely.

    Hidden entries (``.name``), NAS thumbnail folders, clipdex index folders
    (wherever they are) and the folders in ``skip`` (however they are reached)
    are left out. Symlinked folders are followed once each; loops and broken
    links become problems. Names in any encoding are found (see the module
    docstring for their two forms).
    """
    exts = tuple(e.lower() for e in extensions)
    root = os.path.abspath(root)
    skipped = frozenset(i for i in (folder_identity(os.fspath(s)) for s in skip) if i is not None)
    result = Walk(root=root, files=[], problems=[], unreadable_dirs=[], skip=skipped)
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
        except OSError as e:
            result.problems.append(_problem(folder, _stat_reason(folder, e)))
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in seen_dirs:
            continue  # a symlink back into a folder already walked
        seen_dirs.add(identity)
        if identity in skipped:
            result.skipped_dirs.append(display_path(folder))
            continue
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            result.unreadable_dirs.append(display_path(folder))
            result.problems.append(_problem(folder, f"folder cannot be read ({e.strerror or e})"))
            continue
        if is_index_folder((e.name for e in entries), folder):
            result.skipped_dirs.append(display_path(folder))
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name in SKIPPED_DIR_NAMES:
                continue
            _visit(entry, exts, result, stack)
    _separate_lookalikes(result)
    result.files.sort(key=lambda f: f.path)
    return result


def _visit(entry: os.DirEntry[str], exts: tuple[str, ...], result: Walk, stack: list[str]) -> None:
    path = entry.path
    try:
        is_dir = entry.is_dir()  # follows symlinks
    except OSError as e:
        result.problems.append(_problem(path, _stat_reason(path, e)))
        return
    if is_dir:
        stack.append(path)
        return
    if not entry.name.lower().endswith(exts):
        return
    try:
        st = entry.stat()  # follows symlinks
    except OSError as e:
        result.problems.append(_problem(path, _stat_reason(path, e)))
        return
    if not entry.is_file():
        result.problems.append(_problem(path, "not a regular file", "permanent"))
        return
    result.files.append(FileEntry(path=display_path(path), size=st.st_size, mtime_ns=st.st_mtime_ns,
                                  fs_path=path))


def _separate_lookalikes(result: Walk) -> None:
    """Two files whose display paths are equal (``caf\\xe9.jpg`` named so, and one whose
    name holds the byte 0xE9) cannot share a row of the index: the escaped one is a problem."""
    if all(f.path == f.fs_path for f in result.files):
        return
    counts = Counter(f.path for f in result.files)
    if all(n == 1 for n in counts.values()):
        return
    kept = []
    for f in result.files:
        if counts[f.path] > 1 and f.path != f.fs_path:
            result.problems.append(Problem(
                f.path, "its name, shown with \\x escapes, is the same as another file's name; "
                "rename one of them to index both", "permanent", f.fs_path))
        else:
            kept.append(f)
    result.files[:] = kept


def _problem(path: str, reason: str, kind: str = "transient") -> Problem:
    return Problem(display_path(path), reason, kind, path)


def _stat_reason(path: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop (the link points back to itself)"
    if error.errno == errno.ENOENT and os.path.islink(path):
        target = display_path(os.readlink(path))
        return f"broken symlink (target {target!r} does not exist)"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot be read ({error.strerror or error})"
