"""What SOURCE holds: the files ``clipdex index SOURCE --engine ray`` considers.

SOURCE is one of

- a local folder, walked as local indexing walks it (:func:`clipdex.discover.walk`);
- a list of files: a text file (``.txt``, ``.lst``; ``.csv``), one path or URI a line,
  or a Parquet file with them in a column (``image_path``, else ``path``, else ``url``,
  else its only string column); relative paths start from the list's folder;
- a folder of another file system, as a URI pyarrow opens (``s3://bucket/photos/``,
  ``gs://…``, ``hdfs://…``, ``abfs://…``, ``file:///abs/dir``), listed recursively.

A listing only looks at names and ``stat`` results (nothing is read), and gives
each file the two names of :class:`clipdex.discover.FileEntry`: ``path``, the
catalog's (a local file's display path, or the file's URI in its one normal
form, :func:`normalise_uri`), and ``fs_path``, what a worker opens with
:func:`open_bytes` or :func:`open_stream`.

A folder or prefix is *complete*: a file of the index under it that the listing
no longer shows is gone. A list names only some files, so nothing is removed
because a list leaves it out.

pyarrow (``pip install 'clipdex[ray]'``) is imported only for URIs and Parquet lists.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import posixpath
import re
import stat as stat_mode
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import quote, unquote, urlsplit

from clipdex import discover
from clipdex.decode import supported_extensions
from clipdex.errors import ClipdexError, PhotoFolderError, first_line, shorten

if TYPE_CHECKING:
    import pyarrow.fs as pafs

KINDS = ("folder", "list", "prefix")
TEXT_LIST_EXTENSIONS = (".txt", ".lst", ".csv")
LIST_EXTENSIONS = (*TEXT_LIST_EXTENSIONS, ".parquet")
LIST_COLUMNS = ("image_path", "path", "url")  # a list's column of files, best first (clip-retrieval's first)
STAT_THREADS = 32  # a list's files are stat'ed this many at a time: a 1M-line list on NFS in minutes, not hours
LOCAL_CHUNK = 512  # local paths stat'ed per task
REMOTE_CHUNK = 1000  # URIs per get_file_info call (pyarrow batches them per file system)
BINARY_SNIFF = 8192  # bytes of a text list looked at for a NUL (a binary file named .txt)
RAY_INSTALL = "pip install 'clipdex[ray]'"

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Characters left as they are in a URI's path (RFC 3986 pchar); the rest, space and
# non-ASCII included, are %-escaped, as pyarrow's URI parser requires.
_URI_SAFE = "/!$&'()*+,;=:@~"
GCS_RETRY_S = 15  # seconds Google Cloud Storage retries a request (its default is 15 minutes)
_PROBE = "clipdex-probe"  # a file name that tells where a URI's path starts in its file system's paths
# pyarrow's file systems, by the module that holds each, and the URI schemes each opens.
_PYARROW_SCHEMES = (("pyarrow._s3fs", ("s3",)), ("pyarrow._gcsfs", ("gs", "gcs")),
                    ("pyarrow._hdfs", ("hdfs", "viewfs")), ("pyarrow._azurefs", ("abfs", "abfss")))
_CREDENTIALS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, ~/.aws/credentials, an instance "
          "role) and AWS_REGION; for MinIO or another S3-compatible store also AWS_ENDPOINT_URL",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service account's key file, or run "
          "`gcloud auth application-default login`",
    "hdfs": "HDFS needs Java and libhdfs: set JAVA_HOME, HADOOP_HOME and CLASSPATH (`hadoop classpath --glob`)",
    "abfs": "sign in to Azure (`az login`, or AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET)",
}
_CREDENTIALS.update(gcs=_CREDENTIALS["gs"], viewfs=_CREDENTIALS["hdfs"], abfss=_CREDENTIALS["abfs"])
_REACH = ("check that the bucket or folder exists and this machine can reach it; with --address, every node "
          "of the Ray cluster must be able to read it too")


@dataclass(frozen=True)
class Listing:
    """The files of SOURCE, the entries that cannot be indexed, and where they live.

    ``root`` is what the index records as the source's root: a folder's display
    path, a prefix's URI (no trailing slash), or for a list the deepest folder
    holding all its local files, or ``scheme://bucket`` of its URIs; a list may
    span several (``roots``, sorted; ``root`` is the first). ``complete``: the
    listing shows everything under its roots (a folder or prefix), so an indexed
    file it does not show is gone, unless it is under one of ``unreadable_dirs``.
    """

    source: str
    kind: str
    root: str
    roots: list[str]
    files: list[discover.FileEntry]
    problems: list[discover.Problem]
    complete: bool
    unreadable_dirs: list[str]


def list_source(source: str, *, skip: Sequence[str] = (), allow_empty: bool = False) -> Listing:
    """List SOURCE: a folder, a list file, or a URI of a folder in another file system.

    ``skip``: folders never listed (the index's own, so an index kept inside the
    photo folder is not indexed). ``allow_empty``: a folder or prefix with no
    images is valid (one the index holds, emptied since: its photos are then
    removed); otherwise it is a :class:`PhotoFolderError`, as with local indexing.
    Raises :class:`ClipdexError` (what, where, what to do) for a SOURCE that
    cannot be listed; a listed file that cannot be used is a problem, not an error.
    """
    if is_uri(source):
        return _list_uri(source, skip, allow_empty)
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        return _list_folder(path, skip, allow_empty)
    if path.lower().endswith(LIST_EXTENSIONS):
        return _list_file(path, skip)
    if not os.path.exists(path):
        from clipdex.indexer import check_folder

        check_folder(path)  # raises: the folder's own message
    shown = discover.display_path(path)
    extension = os.path.splitext(path)[1].lower()
    if extension in supported_extensions():
        raise PhotoFolderError(shown, "is an image, not a folder or a list of images",
                               "Pass the folder that holds it, or list it in a .txt file (one path a line).")
    raise PhotoFolderError(shown, "is neither a folder nor a list of images",
                           f"Pass a folder, a list ({', '.join(LIST_EXTENSIONS)}: one path or URI a line, or a "
                           "Parquet column image_path, path or url), or a URI such as s3://bucket/photos/.")


def is_uri(text: str) -> bool:
    """Whether ``text`` names a file by URI (``scheme://…``, or ``file:/abs``) rather than a local path."""
    return bool(_URI.match(text)) or text[:6].lower() == "file:/"


def normalise_uri(uri: str) -> str:
    """A URI's one form, the catalog's: scheme in lower case; the path without ``.``, ``..``
    and doubled slashes, %-escaped where a URI needs it (a space, ``%``, ``#``, ``?``,
    non-ASCII: ``s3://b/my photo.jpg`` and ``s3://b/my%20photo.jpg`` are the same file);
    options (``?region=…``) kept. ``file://localhost/x`` and ``file:/x`` are ``file:///x``."""
    parts = urlsplit(uri, allow_fragments=False)
    scheme = parts.scheme.lower()
    netloc = "" if scheme == "file" and parts.netloc.lower() == "localhost" else parts.netloc
    path = _clean_path(unquote(parts.path, errors="surrogateescape"))
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{_quote(path)}{query}"


def open_bytes(fs_path: str) -> bytes:
    """All the bytes of one listed file: a local path, or a URI (through pyarrow).

    Raises :class:`OSError` as :func:`open` does (a file that is gone, a permission,
    a file system this worker cannot reach), so that the file is a failed row
    with that reason (:func:`clipdex.indexer.failure_of`), never a failed job.
    """
    if not is_uri(fs_path):
        with open(fs_path, "rb") as f:
            return f.read()
    fs, path = _resolve_for_worker(fs_path)
    with fs.open_input_stream(path) as stream:
        return cast(bytes, stream.read())


@contextlib.contextmanager
def open_stream(fs_path: str) -> Iterator[BinaryIO]:
    """One listed file opened for reading, seekable (Pillow seeks): a local file, or
    pyarrow's random-access file for a URI. For large files, read as they are needed;
    raises :class:`OSError` as :func:`open_bytes` does."""
    if not is_uri(fs_path):
        with open(fs_path, "rb") as f:
            yield f
        return
    fs, path = _resolve_for_worker(fs_path)
    with fs.open_input_file(path) as f:
        yield cast(BinaryIO, f)


def resolve(uri: str) -> tuple["pafs.FileSystem", str]:
    """(file system, path in it) of a URI. One file system per scheme, bucket (or host)
    and options in a process, made once: ``FileSystem.from_uri`` of an ``s3://`` URI asks
    the bucket's region over the network every time. Raises :class:`ClipdexError` for a
    scheme pyarrow cannot open here, or a file system it cannot reach."""
    parts = urlsplit(uri, allow_fragments=False)
    fs, prefix = _filesystem(parts.scheme.lower(), parts.netloc, parts.query, uri)
    return fs, _inner_path(prefix, _clean_path(unquote(parts.path, errors="surrogateescape")))


# -- folders ---------------------------------------------------------------------
def _list_folder(path: str, skip: Sequence[str], allow_empty: bool) -> Listing:
    """A local folder, walked and checked as :meth:`clipdex.indexer.Indexer.scan` does (the
    same messages: an index, no images)."""
    from clipdex.indexer import Indexer

    walk = Indexer.scan(path, allow_empty=allow_empty, skip=tuple(skip), videos=False)  # photos only
    root = walk.display_root
    return Listing(source=root, kind="folder", root=root, roots=[root], files=walk.files, problems=walk.problems,
                   complete=True, unreadable_dirs=walk.unreadable_dirs)


# -- lists -----------------------------------------------------------------------
def _list_file(path: str, skip: Sequence[str]) -> Listing:
    """A local list file: its entries, resolved against its folder, stat'ed in parallel."""
    shown = discover.display_path(path)
    if not os.path.exists(path):
        raise PhotoFolderError(shown, "list file does not exist", "Check the path and try again.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PhotoFolderError(shown, f"list file cannot be read ({e.strerror or e})",
                               "Check its permissions, or pass another list.") from e
    entries = _entries(data, shown, path.lower().endswith(".parquet"), path.lower().endswith(".csv"))
    folder = os.path.dirname(path)
    return _list_entries(shown, [_resolve_entry(e, folder) for e in entries], skip)


def _list_remote_file(uri: str, fs: "pafs.FileSystem", inner: str, skip: Sequence[str]) -> Listing:
    """A list file in another file system; its relative entries start from its folder there."""
    try:
        with fs.open_input_stream(inner) as stream:
            data = stream.read()
    except OSError as e:
        raise _access_error(uri, e) from e
    base = uri.split("?", 1)[0]
    entries = _entries(data, base, base.lower().endswith(".parquet"), base.lower().endswith(".csv"))
    parts = urlsplit(uri, allow_fragments=False)
    folder = posixpath.dirname(_clean_path(unquote(parts.path, errors="surrogateescape")))
    query = f"?{parts.query}" if parts.query else ""
    resolved = []
    for entry in entries:  # a relative (or absolute) path is a raw name in the list's own file system
        if is_uri(entry):
            resolved.append(normalise_uri(entry))
        else:
            path = _clean_path(entry if entry.startswith("/") else f"{folder}/{entry}")
            resolved.append(f"{parts.scheme}://{parts.netloc}{_quote(path)}{query}")
    return _list_entries(base, resolved, skip)


def _entries(data: bytes, where: str, parquet: bool, comma_separated: bool) -> list[str]:
    """The paths or URIs a list file's bytes name, in order (blank lines and ``#`` comments
    left out); a list that names nothing is an error."""
    if parquet:
        entries = _parquet_entries(data, where)
    else:
        if b"\0" in data[:BINARY_SNIFF]:
            raise PhotoFolderError(where, "is not a text file (it holds NUL bytes)",
                                   "A list is text, one path or URI a line (or a Parquet file named .parquet).")
        text = data.decode("utf-8-sig", errors="surrogateescape")  # a name that is not UTF-8 keeps its bytes
        # lines end at "\n" only (splitlines would also cut at U+2028 and the like, which a name may hold)
        entries = _csv_entries(text, where) if comma_separated else _text_entries(text.split("\n"))
    if not entries:
        raise PhotoFolderError(where, "lists no files", "Write one path or URI a line (lines starting with # "
                                                        "are comments), or pass the folder itself.")
    return entries


def _text_entries(lines: Iterable[str]) -> list[str]:
    found = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            found.append(entry)
    return found


def _csv_entries(text: str, where: str) -> list[str]:
    """A CSV list: one path a row, or a header naming the column (:data:`LIST_COLUMNS`)."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row and not row[0].lstrip().startswith("#")]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    named = next((name for name in LIST_COLUMNS if name in header), None)
    if named is not None:
        column = header.index(named)
        return _text_entries(row[column] for row in rows[1:] if len(row) > column)
    if all(len(row) == 1 for row in rows):
        return _text_entries(row[0] for row in rows)
    raise PhotoFolderError(where, f"has {len(rows[0])} columns and none is named {', '.join(LIST_COLUMNS)} "
                                  f"(its first row: {shorten(', '.join(rows[0]), 120)})",
                           "Name the column of files image_path in a header row, or list one path a line.")


def _parquet_entries(data: bytes, where: str) -> list[str]:
    """A Parquet list's column of files: image_path, else path, else url, else its only string column."""
    pa, pq = _pyarrow_parquet(where)
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise PhotoFolderError(where, f"is not a Parquet file pyarrow can read ({first_line(e)})",
                               "Pass a Parquet file, or a text list (.txt: one path or URI a line).") from e
    names = {name.lower(): name for name in schema.names}
    column = next((names[c] for c in LIST_COLUMNS if c in names), None)
    if column is None:
        strings = [f.name for f in schema if _is_text(pa, f.type)]
        if len(strings) != 1:
            shown = ", ".join(f"{f.name} ({f.type})" for f in schema) or "none"
            raise PhotoFolderError(where, f"has no column of files: none is named {', '.join(LIST_COLUMNS)}, and "
                                          f"{'several' if strings else 'none'} of its columns hold text "
                                          f"(its columns: {shorten(shown, 300)})",
                                   "Name the column of paths or URIs image_path.")
        column = strings[0]
    field = schema.field(column)
    if not _is_text(pa, field.type):
        raise PhotoFolderError(where, f"column {column!r} holds {field.type}, not paths or URIs",
                               "Store the paths or URIs as text (strings).")
    try:
        values = parquet.read(columns=[column]).column(column).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise PhotoFolderError(where, f"column {column!r} cannot be read ({first_line(e)})",
                               "Write the list again, or pass a text list (.txt: one path or URI a line).") from e
    return _text_entries(v for v in values if v)


def _is_text(pa: Any, kind: Any) -> bool:
    """Whether a Parquet column holds text (pandas' categorical strings too)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _resolve_entry(entry: str, folder: str) -> str:
    """A local list's entry as a URI's one form, or an absolute, normal local path."""
    if is_uri(entry):
        return normalise_uri(entry)
    return os.path.normpath(os.path.join(folder, os.path.expanduser(entry)))


def _list_entries(source: str, entries: list[str], skip: Sequence[str]) -> Listing:
    """A list's entries (absolute local paths and normal URIs) as files and problems: once
    each, sorted, images only, local ones stat'ed in threads, URIs by their file systems."""
    extensions = tuple(e.lower() for e in supported_extensions())
    local_skip, uri_skip = _skip_prefixes(skip)
    files: list[discover.FileEntry] = []
    problems: list[discover.Problem] = []
    local: list[str] = []
    remote: list[str] = []
    for entry in sorted(set(entries)):
        uri = is_uri(entry)
        if not _skipped(_bare(entry) if uri else entry, uri_skip if uri else local_skip):
            (remote if uri else local).append(entry)
    with ThreadPoolExecutor(max_workers=STAT_THREADS, thread_name_prefix="clipdex-stat") as pool:
        for found, failed in pool.map(_stat_local, _chunks(local, LOCAL_CHUNK)):
            files.extend(found)
            problems.extend(failed)
        if remote:
            found, failed = _stat_remote(source, remote, pool)
            files.extend(found)
            problems.extend(failed)
    # Told apart after the stat: a folder named in a list is a folder, not a file of another type.
    images = [_bare(f.path).lower().endswith(extensions) for f in files]
    if not all(images):
        shown = ", ".join(e.lstrip(".") for e in extensions)
        problems.extend(discover.Problem(f.path, f"not an image file clipdex indexes ({shown})", "permanent",
                                         f.fs_path) for f, image in zip(files, images) if not image)
        files = [f for f, image in zip(files, images) if image]
    files.sort(key=lambda f: f.path)
    _separate_lookalikes(files, problems)
    problems.sort(key=lambda p: p.path)
    roots = _list_roots(files) or _list_roots(problems)
    if not roots:
        raise PhotoFolderError(source, "lists no files clipdex can index", "List image files, one a line.")
    return Listing(source=source, kind="list", root=roots[0], roots=roots, files=files, problems=problems,
                   complete=False, unreadable_dirs=[])


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _stat_local(paths: list[str]) -> tuple[list[discover.FileEntry], list[discover.Problem]]:
    """Stat local files (in a worker thread): entries for regular files, problems for the rest."""
    files, problems = [], []
    for path in paths:
        shown = discover.display_path(path)
        try:
            st = os.stat(path)  # follows symlinks, as the walk does
        except FileNotFoundError as e:
            reason = "does not exist" if not os.path.islink(path) else discover._stat_reason(path, e)
            problems.append(discover.Problem(shown, reason, "transient", path))
            continue
        except OSError as e:
            problems.append(discover.Problem(shown, discover._stat_reason(path, e), "transient", path))
            continue
        except ValueError:  # a NUL in the name
            problems.append(discover.Problem(shown, "not a valid path (it holds a NUL character)", "permanent", path))
            continue
        if stat_mode.S_ISDIR(st.st_mode):
            problems.append(discover.Problem(shown, "is a folder, not a file: pass the folder itself as SOURCE, "
                                                    "or list its files", "permanent", path))
        elif not stat_mode.S_ISREG(st.st_mode):
            problems.append(discover.Problem(shown, "not a regular file", "permanent", path))
        else:
            files.append(discover.FileEntry(path=shown, size=st.st_size, mtime_ns=st.st_mtime_ns, fs_path=path))
    return files, problems


def _stat_remote(source: str, uris: list[str], pool: ThreadPoolExecutor,
                 ) -> tuple[list[discover.FileEntry], list[discover.Problem]]:
    """Stat URIs: per file system, get_file_info on chunks of them, the chunks in parallel.
    When no URI could be stat'ed at all, the file system's error is the listing's."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for uri in uris:
        parts = urlsplit(uri, allow_fragments=False)
        groups.setdefault((parts.scheme, parts.netloc, parts.query), []).append(uri)
    jobs = []
    for (scheme, netloc, query), members in groups.items():
        fs, prefix = _filesystem(scheme, netloc, query, f"{source} (it names {members[0]})")
        for chunk in _chunks(members, REMOTE_CHUNK):
            jobs.append(pool.submit(_stat_uris, fs, prefix, chunk))
    files: list[discover.FileEntry] = []
    problems: list[discover.Problem] = []
    errors: list[tuple[str, OSError]] = []
    for job in jobs:
        found, failed, refused = job.result()
        files.extend(found)
        problems.extend(failed)
        errors.extend(refused)
    if errors and len(errors) == len(uris):  # not one file: the file system refuses, not the files
        raise _access_error(*errors[0])
    return files, problems


def _stat_uris(fs: "pafs.FileSystem", prefix: str, uris: list[str],
               ) -> tuple[list[discover.FileEntry], list[discover.Problem], list[tuple[str, OSError]]]:
    """Stat URIs of one file system (in a worker thread); a chunk the file system refuses is
    tried a file at a time, and a file it refuses is a transient problem."""
    inner = [_inner_path(prefix, unquote(urlsplit(u, allow_fragments=False).path, errors="surrogateescape"))
             for u in uris]
    errors: list[tuple[str, OSError]] = []
    infos: list[Any]
    try:
        infos = fs.get_file_info(inner)
    except OSError:
        infos = []
        for uri, path in zip(uris, inner):
            try:
                infos.append(fs.get_file_info(path))
            except OSError as e:
                errors.append((uri, e))
                infos.append(e)
    files, problems = [], []
    for uri, info in zip(uris, infos):
        if isinstance(info, OSError):
            problems.append(discover.Problem(uri, f"cannot be read ({first_line(info)})", "transient"))
        else:
            entry, problem = _remote_entry(uri, info)
            if entry is not None:
                files.append(entry)
            if problem is not None:
                problems.append(problem)
    return files, problems, errors


def _remote_entry(uri: str, info: "pafs.FileInfo") -> tuple[discover.FileEntry | None, discover.Problem | None]:
    import pyarrow.fs as pafs

    if info.type == pafs.FileType.File:
        return discover.FileEntry(path=uri, size=info.size or 0, mtime_ns=info.mtime_ns or 0), None
    if info.type == pafs.FileType.NotFound:
        return None, discover.Problem(uri, "does not exist", "transient")
    if info.type == pafs.FileType.Directory:
        return None, discover.Problem(uri, "is a folder, not a file: pass the folder itself as SOURCE, or list "
                                           "its files", "permanent")
    return None, discover.Problem(uri, "not a regular file", "permanent")


def _separate_lookalikes(files: list[discover.FileEntry], problems: list[discover.Problem]) -> None:
    """Two listed files whose display paths are equal cannot share a row of the index (as
    :func:`clipdex.discover.walk` decides: the one shown with ``\\x`` escapes is a problem)."""
    if all(f.path == f.fs_path for f in files):
        return
    counts = Counter(f.path for f in files)
    if all(n == 1 for n in counts.values()):
        return
    kept = []
    for f in files:
        if counts[f.path] > 1 and f.path != f.fs_path:
            problems.append(discover.Problem(f.path, "its name, shown with \\x escapes, is the same as another "
                                                     "file's name; rename one of them to index both",
                                             "permanent", f.fs_path))
        else:
            kept.append(f)
    files[:] = kept


def _list_roots(entries: Sequence[discover.FileEntry | discover.Problem]) -> list[str]:
    """The deepest folder holding every local entry, and ``scheme://bucket`` of each URI's."""
    roots: set[str] = set()
    low: str | None = None
    high: str | None = None
    for entry in entries:
        if is_uri(entry.path):
            parts = urlsplit(entry.path, allow_fragments=False)
            roots.add(f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:///")
            continue
        low = entry.path if low is None or entry.path < low else low
        high = entry.path if high is None or entry.path > high else high
    if low is not None and high is not None:
        common = os.path.commonpath([low, high])  # the folder of every path sorted between them too
        roots.add(os.path.dirname(common) if common in (low, high) else common)
    return sorted(roots)


# -- URIs: a folder (prefix) or a list in another file system ---------------------
def _list_uri(source: str, skip: Sequence[str], allow_empty: bool) -> Listing:
    """A URI SOURCE: a list file there, or a folder (prefix) listed recursively."""
    import pyarrow.fs as pafs

    uri = normalise_uri(source)
    parts = urlsplit(uri, allow_fragments=False)
    fs, inner = resolve(uri)
    base = uri.split("?", 1)[0]
    try:
        info = fs.get_file_info(inner)
    except OSError as e:
        raise _access_error(base, e) from e
    if info.type == pafs.FileType.File:
        if base.lower().endswith(LIST_EXTENSIONS):
            return _list_remote_file(uri, fs, inner, skip)
        raise PhotoFolderError(base, "is a file, not a folder or a list of images",
                               f"Pass the folder (prefix) that holds the photos, or a list "
                               f"({', '.join(LIST_EXTENSIONS)}).")
    root = base.rstrip("/") if parts.netloc or parts.path.strip("/") else base
    if info.type == pafs.FileType.NotFound:
        if allow_empty:
            return Listing(source=base, kind="prefix", root=root, roots=[root], files=[], problems=[],
                           complete=True, unreadable_dirs=[])
        raise PhotoFolderError(base, "does not exist (no folder, and no object under this prefix)",
                               f"Check the URI; {_REACH}.")
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    except OSError as e:
        raise _access_error(base, e) from e
    files = _prefix_files(uri, inner, infos, skip)
    if not files and not allow_empty:
        raise PhotoFolderError(base, "contains no images",
                               f"clipdex indexes {', '.join(e.lstrip('.') for e in supported_extensions())} "
                               "files under the prefix (in every folder below it).")
    return Listing(source=base, kind="prefix", root=root, roots=[root], files=files, problems=[], complete=True,
                   unreadable_dirs=[])


def _prefix_files(uri: str, inner: str, infos: Sequence["pafs.FileInfo"], skip: Sequence[str],
                  ) -> list[discover.FileEntry]:
    """The images of a recursive listing under ``inner`` (``uri``'s path in its file system),
    chosen as local walks choose them: by extension (any case), leaving out hidden names,
    NAS thumbnail folders, clipdex index folders and the folders in ``skip``; sorted."""
    import pyarrow.fs as pafs

    from clipdex.store.catalog import CATALOG_NAME

    extensions = tuple(e.lower() for e in supported_extensions())
    parts = urlsplit(uri, allow_fragments=False)
    query = f"?{parts.query}" if parts.query else ""
    folder = _clean_path(unquote(parts.path, errors="surrogateescape")).rstrip("/")  # the prefix's URI path
    local_skip, uri_skip = _skip_prefixes(skip)
    candidates: list[tuple[str, Any]] = []
    catalogs: list[str] = []  # folders (relative) holding a clipdex catalog ...
    vectors: set[str] = set()  # ... and those holding a vectors/ folder: together, an index
    for info in infos:
        relative = info.path[len(inner):].lstrip("/")  # the selector lists only paths below ``inner``
        names = relative.split("/")
        if any(n.startswith(".") or n in discover.SKIPPED_DIR_NAMES for n in names):
            continue
        if len(names) > 1 and names[-2] == discover.INDEX_VECTORS_DIR:
            vectors.add("/".join(names[:-2]))  # object stores list no folders, only the files in them
        if info.type == pafs.FileType.Directory:
            if names[-1] == discover.INDEX_VECTORS_DIR:
                vectors.add("/".join(names[:-1]))
        elif info.type == pafs.FileType.File:
            if names[-1] == CATALOG_NAME:
                catalogs.append("/".join(names[:-1]))
            if names[-1].lower().endswith(extensions):
                candidates.append((relative, info))
    indexes = tuple(f"{d}/" if d else "" for d in catalogs if d in vectors)
    files = []
    for relative, info in candidates:
        if indexes and relative.startswith(indexes):
            continue
        if parts.scheme == "file" and _skipped(f"{inner.rstrip('/')}/{relative}", local_skip):
            continue
        path = f"{parts.scheme}://{parts.netloc}{_quote(f'{folder}/{relative}')}"
        if _skipped(path, uri_skip):
            continue
        files.append(discover.FileEntry(path=path + query, size=info.size or 0, mtime_ns=info.mtime_ns or 0))
    files.sort(key=lambda f: f.path)
    return files


# -- file systems ------------------------------------------------------------------
_filesystems: dict[tuple[str, str, str], tuple["pafs.FileSystem", str]] = {}
_filesystems_lock = threading.Lock()


def _filesystem(scheme: str, netloc: str, query: str, where: str) -> tuple["pafs.FileSystem", str]:
    """(file system, path prefix) for a scheme, bucket or host, and options: made once a
    process. The prefix is what the file system's paths start with before a URI's path
    (``bucket/`` for s3 and gs, ``/`` for local files and HDFS)."""
    key = (scheme.lower(), netloc, query)
    if "@" in netloc:  # user:secret@bucket: kept in every path of the index, and shown in every message
        raise PhotoFolderError(f"{key[0]}://…@{netloc.rsplit('@', 1)[1]}", "holds credentials in the URI, which "
                               "the index would keep beside every path",
                               f"Give them to the file system instead: {_credentials(key[0])}.")
    with _filesystems_lock:
        known = _filesystems.get(key)
    if known is not None:
        return known
    pafs = _pyarrow_fs(where)
    import pyarrow as pa

    options = query
    if key[0] in ("gs", "gcs") and "retry_limit_seconds" not in query:  # offline, GCS retries for ever
        options = "&".join(filter(None, (query, f"retry_limit_seconds={GCS_RETRY_S}")))
    probe = f"{key[0]}://{netloc}/{_PROBE}" + (f"?{options}" if options else "")
    try:
        fs, inner = pafs.FileSystem.from_uri(probe)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise _scheme_error(where, key[0], first_line(e).replace(probe, f"{key[0]}://{netloc}/…")) from e
    except OSError as e:
        raise _access_error(where, e, key[0]) from e
    if not inner.endswith(_PROBE):
        raise ClipdexError(f"{where}: pyarrow maps {probe} to {inner!r}, not to a path ending in {_PROBE}; "
                           "clipdex cannot tell where its files are. Mount the file system and pass a local path.")
    made = (fs, inner[:-len(_PROBE)])
    with _filesystems_lock:
        return _filesystems.setdefault(key, made)


def _resolve_for_worker(uri: str) -> tuple["pafs.FileSystem", str]:
    """:func:`resolve` for reading a file: a file system this worker cannot open is an
    :class:`OSError` (the file's failed row says why), not an error that ends the job."""
    try:
        return resolve(uri)
    except ClipdexError as e:
        raise OSError(str(e)) from e


def _inner_path(prefix: str, path: str) -> str:
    """The file system's path of a URI's (clean, unescaped) path."""
    relative = path.lstrip("/")
    if relative:
        return prefix + relative
    return prefix.rstrip("/") or prefix


def _clean_path(path: str) -> str:
    """A URI's path without ``.``, ``..``, doubled or trailing slashes ("" stays "")."""
    if not path:
        return ""
    cleaned = re.sub(r"^/+", "/", posixpath.normpath(path))
    return "" if cleaned == "." else cleaned


def _quote(path: str) -> str:
    return quote(path, safe=_URI_SAFE, errors="surrogateescape")


def _bare(uri_or_path: str) -> str:
    """A URI without its options (``?…``); a local path as it is."""
    return uri_or_path.split("?", 1)[0] if is_uri(uri_or_path) else uri_or_path


def _skip_prefixes(skip: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(local folders, URI folders) to leave out, each ending in a slash; a local folder
    both as given and resolved (an index reached through a symlink)."""
    local: set[str] = set()
    uris: set[str] = set()
    for folder in skip:
        if is_uri(folder):
            uris.add(_bare(normalise_uri(folder)).rstrip("/") + "/")
        else:
            path = os.path.abspath(os.path.expanduser(folder))
            local |= {path.rstrip(os.sep) + os.sep, os.path.realpath(path).rstrip(os.sep) + os.sep}
            uris.add(f"file://{_quote(path)}".rstrip("/") + "/")
    return tuple(local), tuple(uris)


def _skipped(path: str, prefixes: tuple[str, ...]) -> bool:
    return bool(prefixes) and path.startswith(prefixes)


def _supported_schemes() -> list[str]:
    import importlib

    schemes = ["file"]
    for module, names in _PYARROW_SCHEMES:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        schemes.extend(names)
    return schemes


def _credentials(scheme: str) -> str:
    return _CREDENTIALS.get(scheme.lower(), "give the file system its credentials as pyarrow reads them")


def _scheme_error(where: str, scheme: str, said: str) -> ClipdexError:
    """A URI pyarrow cannot open here: which schemes it can, and what to do."""
    supported = ", ".join(f"{s}://" for s in _supported_schemes())
    if scheme in ("http", "https"):
        fix = ("Web URLs are not read directly: download the images first (img2dataset writes shards clipdex "
               "imports), or name them by their bucket's s3:// or gs:// URI.")
    elif any(scheme in names for _, names in _PYARROW_SCHEMES):
        fix = f"This pyarrow was built without {scheme}:// support: install pyarrow's wheel (`pip install -U " \
              f"pyarrow`, or `{RAY_INSTALL}`)."
    else:
        fix = f"Mount the file system and pass a local path, or copy the photos to one of those ({RAY_INSTALL})."
    return PhotoFolderError(where, f"{scheme}:// is not a file system pyarrow opens here ({said}); "
                                   f"it opens {supported}", fix)


def _access_error(where: str, error: OSError, scheme: str | None = None) -> ClipdexError:
    """The file system refused (credentials, a missing bucket, no route): its own words and the fix."""
    scheme = scheme or urlsplit(where).scheme
    return PhotoFolderError(where, f"cannot be listed or read ({shorten(first_line(error), 400)})",
                            f"Check the credentials: {_credentials(scheme)}; {_REACH}.")


def _pyarrow_fs(where: str) -> Any:
    try:
        import pyarrow.fs as pafs
    except ImportError as e:
        raise ClipdexError(f"{where}: reading URIs needs pyarrow, which is not installed. "
                           f"Install it with `{RAY_INSTALL}`, or mount the file system and pass a local path.") from e
    return pafs


def _pyarrow_parquet(where: str) -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ClipdexError(f"{where}: a Parquet list needs pyarrow, which is not installed. Install it with "
                           f"`{RAY_INSTALL}`, or list the files in a .txt file (one a line).") from e
    return pa, pq


__all__ = ["KINDS", "LIST_COLUMNS", "LIST_EXTENSIONS", "Listing", "is_uri", "list_source", "normalise_uri",
           "open_bytes", "open_stream", "resolve"]
