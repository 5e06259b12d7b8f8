"""Walk a photo folder: the image files in it, and the entries that cannot be used.

No image decoding happens here (no Pillow, no torch): this stage only looks at
names and ``stat`` results, so a walk of 100,000 files takes seconds.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass

SKIPPED_DIR_NAMES = frozenset({"@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information"})


@dataclass(frozen=True)
class FileEntry:
    """An image file found by the walk."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Problem:
    """An entry that cannot be indexed, with the reason."""

    path: str
    reason: str


@dataclass
class Walk:
    """What a walk found: image files, problems, and folders it could not read."""

    root: str
    files: list[FileEntry]
    problems: list[Problem]
    unreadable_dirs: list[str]


def display_path(path: str) -> str:
    """A path safe to store and print: undecodable bytes shown as \\xNN escapes."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def walk(root: str, extensions: Iterable[str]) -> Walk:
    """Find image files under ``root`` recursively, following symlinks safely.

    Hidden entries (``.name``) and NAS thumbnail folders are skipped. Symlinked
    folders are followed once each; loops and broken links become problems.
    """
    exts = tuple(e.lower() for e in extensions)
    root = os.path.abspath(root)
    result = Walk(root=root, files=[], problems=[], unreadable_dirs=[])
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
        except OSError as e:
            result.problems.append(Problem(display_path(folder), _stat_reason(folder, e)))
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in seen_dirs:
            continue  # a symlink back into a folder already walked
        seen_dirs.add(identity)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            result.unreadable_dirs.append(folder)
            result.problems.append(Problem(display_path(folder),
                                           f"folder cannot be read ({e.strerror or e})"))
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name in SKIPPED_DIR_NAMES:
                continue
            _visit(entry, exts, result, stack)
    result.files.sort(key=lambda f: f.path)
    return result


def _visit(entry: os.DirEntry[str], exts: tuple[str, ...], result: Walk, stack: list[str]) -> None:
    path = entry.path
    try:
        is_dir = entry.is_dir()  # follows symlinks
    except OSError as e:
        result.problems.append(Problem(display_path(path), _stat_reason(path, e)))
        return
    if is_dir:
        stack.append(path)
        return
    if not entry.name.lower().endswith(exts):
        return
    if display_path(path) != path:
        result.problems.append(Problem(display_path(path),
                                       "file name is not valid UTF-8; rename the file to index it"))
        return
    try:
        st = entry.stat()  # follows symlinks
    except OSError as e:
        result.problems.append(Problem(path, _stat_reason(path, e)))
        return
    if not entry.is_file():
        result.problems.append(Problem(path, "not a regular file"))
        return
    result.files.append(FileEntry(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns))


def _stat_reason(path: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop (the link points back to itself)"
    if error.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symlink (target {os.readlink(path)!r} does not exist)"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot be read ({error.strerror or error})"
