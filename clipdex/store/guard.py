"""The store's error boundary: every SQLite or OS error becomes a :class:`ClipdexError`.

A full disk, a read-only mount, an I/O error or a damaged catalog must reach
the user as a sentence that says what happened and what to do, never as a
``sqlite3.OperationalError`` traceback. :func:`storage_errors` translates at
the boundary; :func:`guarded` applies it to every public method of a class.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from clipdex.errors import ClipdexError, IndexDamaged, IndexStorageError
from clipdex.fileio import OS_PROBLEMS, describe_os_error

T = TypeVar("T")

# Kinds of clipdex.fileio.OS_PROBLEMS (the one errno table), worded here for the index's files.
DISK_FULL_ERRNOS = frozenset(code for code, p in OS_PROBLEMS.items() if p.kind == "disk-full")
READ_ONLY_ERRNOS = frozenset(code for code, p in OS_PROBLEMS.items() if p.kind in ("read-only", "permission"))


def catalog_damaged_fix(index: Path) -> str:
    return (f"Restore {index} from a backup, or move it aside (mv {index} {index}.damaged) and "
            f"run `clipdex index PHOTO_DIR --index {index}` for each photo folder to rebuild it "
            "(every photo is encoded again).")


def read_only_problem(index: Path, detail: str) -> IndexStorageError:
    return IndexStorageError(
        index, f"the index is read-only ({detail})",
        "Searching, browsing and `clipdex status` work on a read-only index; to change it, "
        "make the folder writable (or copy it somewhere writable and pass --index COPY).")


def translate_os_error(index: Path, error: OSError, doing: str) -> IndexStorageError:
    """An OS error of the index's own files as a typed error (``doing``: 'writing vectors/…')."""
    reason = error.strerror or str(error)
    described = describe_os_error(error)
    kind = described.kind if described else None
    if kind == "disk-full":
        return IndexStorageError(index, f"disk full while {doing} ({reason})",
                                 "Free space and run again: finished batches are kept.")
    if kind in ("read-only", "permission"):
        return read_only_problem(index, f"{reason} while {doing}")
    if kind == "io":
        return IndexStorageError(index, f"I/O error while {doing}",
                                 "The disk may be failing: check it (dmesg, fsck), then run again.")
    return IndexStorageError(index, f"{reason} while {doing}", "Check the index folder and run again.")


def translate_sqlite_error(index: Path, error: sqlite3.Error,
                           conn: sqlite3.Connection | None = None) -> ClipdexError:
    """A SQLite error of the catalog as :class:`IndexDamaged` or :class:`IndexStorageError`."""
    name = getattr(error, "sqlite_errorname", "") or ""
    text = str(error)
    lowered = text.lower()
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in lowered \
            or "not a database" in lowered:
        detail = _quick_check(conn)
        return IndexDamaged(index, f"its catalog catalog.sqlite cannot be read ({text}"
                            + (f"; integrity check: {detail}" if detail else "") + ")",
                            catalog_damaged_fix(index))
    if name == "SQLITE_FULL" or "disk is full" in lowered:
        return IndexStorageError(index, "disk full while writing the catalog",
                                 "Free space and run again: finished batches are kept.")
    if name.startswith("SQLITE_READONLY") or "readonly" in lowered or "read-only" in lowered:
        return read_only_problem(index, text)
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in lowered:
        return IndexStorageError(index, f"I/O error reading or writing the catalog ({text})",
                                 "The disk may be full or failing: check free space and the disk "
                                 "(dmesg), then run again.")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in lowered:
        return IndexStorageError(index, f"the catalog cannot be opened ({text})",
                                 "Check that the index folder and catalog.sqlite exist and can be "
                                 "read (and written, to change the index).")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in lowered:
        return IndexStorageError(index, f"the catalog stayed locked by another process ({text})",
                                 "Wait for the other clipdex process to finish and run again.")
    return IndexStorageError(index, f"the catalog failed ({text})",
                             "Run the command again; if it keeps failing, restore the index from "
                             "a backup or rebuild it.")


def _quick_check(conn: sqlite3.Connection | None) -> str:
    """The first problems ``PRAGMA quick_check`` finds (only asked when an error suggests damage)."""
    if conn is None:
        return ""
    try:
        rows = conn.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.Error as e:
        return str(e)
    lines = [line.strip() for r in rows if r[0] != "ok" for line in str(r[0]).splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith("***"))


@contextlib.contextmanager
def storage_errors(index: Path, conn: sqlite3.Connection | None = None,
                   doing: str = "using the index") -> Iterator[None]:
    """Translate SQLite and OS errors raised inside the block (ClipdexErrors pass through)."""
    try:
        yield
    except ClipdexError:
        raise
    except sqlite3.Error as e:
        raise translate_sqlite_error(index, e, conn) from e
    except OSError as e:
        raise translate_os_error(index, e, doing) from e


def guarded(cls: type[T]) -> type[T]:
    """Wrap every public method of ``cls`` in :func:`storage_errors` (the instance has
    ``path`` and ``conn``). Methods listed in ``cls._unguarded`` are left alone."""
    skip = set(getattr(cls, "_unguarded", ()))
    for name, attr in list(vars(cls).items()):
        if name.startswith("_") or name in skip or not callable(attr) or isinstance(
                attr, (classmethod, staticmethod)):
            continue
        setattr(cls, name, _guard(attr))
    return cls


def _guard(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with storage_errors(self.path, getattr(self, "conn", None), f"{method.__name__.replace('_', ' ')}"):
            return method(self, *args, **kwargs)
    return wrapper


BUSY_RETRY_S = 30.0  # as long as the connections' own busy timeout


def retry_busy(step: Callable[[], T], timeout_s: float = BUSY_RETRY_S) -> T:
    """Run ``step`` again while SQLite answers "database is locked" without waiting.

    The busy timeout covers ordinary lock waits, but SQLite returns SQLITE_BUSY at
    once where waiting could deadlock (a read snapshot another process has written
    past, switching a new catalog to WAL while another process creates it). Two
    first runs racing hit these; the step starts nothing, so it can simply be retried.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            return step()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
