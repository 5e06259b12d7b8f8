"""Files: writing one so that readers see the old bytes or the new, never a part, and
what an OS error of a file means to the person who has to fix it."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, NamedTuple


class OSProblem(NamedTuple):
    """What an OS error means: its ``kind`` (``disk-full``, ``read-only``,
    ``permission``, ``io``), the ``problem`` in words and the ``fix``."""

    kind: str
    problem: str
    fix: str


_FREE_SPACE = "Free some space (or choose another folder), then run the command again."
_PERMISSIONS = "Check the permissions of the file and its folder, or choose another path."
# The one table of OS errors that are about the disk or permissions, not a bug. The CLI
# words them for any file; the store (clipdex.store.guard) for the index's own files.
OS_PROBLEMS: dict[int, OSProblem] = {
    errno.ENOSPC: OSProblem("disk-full", "the disk is full", _FREE_SPACE),
    errno.EDQUOT: OSProblem("disk-full", "the disk quota is used up", _FREE_SPACE),
    errno.EROFS: OSProblem("read-only", "the file system is read-only",
                           "Choose a folder on a writable disk (--index, --out…)."),
    errno.EACCES: OSProblem("permission", "permission denied", _PERMISSIONS),
    errno.EPERM: OSProblem("permission", "operation not permitted", _PERMISSIONS),
    errno.EIO: OSProblem("io", "the disk reported an input/output error",
                         "Check the disk (it may be failing or disconnected), then run the command again."),
}


def describe_os_error(error: OSError) -> OSProblem | None:
    """What ``error`` means when it is about the disk or permissions (a full or
    read-only disk, a denied permission, an I/O error); None for any other error,
    which is a bug to show rather than a problem to explain."""
    return OS_PROBLEMS.get(error.errno) if error.errno is not None else None


@contextmanager
def replacing(target: str | os.PathLike[str], *, binary: bool = True,
              encoding: str | None = None) -> Iterator[IO[Any]]:
    """A file object for a temporary file beside ``target``, renamed onto it when the
    block succeeds, so readers see the old bytes or the new, never a part.

    The temporary name is unique to this call, so threads and processes that
    write the same target at once never collide; the last rename wins. The new
    file keeps the mode of the file it replaces, or gets the umask's default
    (not mkstemp's private 0600). On any error or Ctrl-C the temporary file is
    removed, ``target`` is left as it was, and the error propagates (``OSError``
    for a file that can't be written). Text mode writes ``newline=""`` (as csv wants).
    """
    path = Path(target)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        if binary:
            with os.fdopen(fd, "wb") as f:
                yield f
        else:
            with os.fdopen(fd, "w", encoding=encoding, newline="") as f:
                yield f
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through :func:`replacing`, creating its folder if needed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as f:
        f.write(data)


def _new_file_mode(path: Path) -> int:
    """The mode ``path`` keeps (if it exists) or a new file gets under the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        pass
    return 0o666 & ~_umask()


@lru_cache(maxsize=1)
def _umask() -> int:
    umask = os.umask(0o022)  # reading it means setting it: put it straight back
    os.umask(umask)
    return umask


def check_writable(path: str | os.PathLike[str], option: str) -> None:
    """Raise :class:`~clipdex.errors.OutputError` unless ``path`` can be created or
    replaced; called before long work, so a bad output path fails in a second, not
    after the work is done. Creates nothing (a probe file is made and removed)."""
    from clipdex.errors import OutputError

    target = Path(path).expanduser()
    shown = str(path)
    if target.is_dir():
        raise OutputError(shown, option, "is a folder, not a file")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(shown, option, f"folder {folder} does not exist")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError(shown, option, "the file exists and is read-only")
    try:
        fd, probe = tempfile.mkstemp(prefix=".clipdex-probe-", dir=folder)
    except OSError as e:
        raise OutputError(shown, option, f"cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
