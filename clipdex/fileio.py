"""Writing a file so that readers see the old bytes or the new, never a part."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a temporary file in the same folder.

    The temporary name is unique to this call, so threads and processes that
    write the same target at once never collide; the last rename wins. The
    folder is created if needed. Raises ``OSError`` if the file can't be
    written, leaving no temporary file behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
