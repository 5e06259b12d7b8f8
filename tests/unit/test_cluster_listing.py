"""clipdex.cluster.listing: what SOURCE holds for ``clipdex index SOURCE --engine ray``.

No network: object storage is stood in for by pyarrow's LocalFileSystem through
``file://`` URIs and its in-memory ``mock://`` file system (whose paths, like a
bucket's, do not start with a slash).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest

from clipdex.cluster import listing
from clipdex.cluster.listing import is_uri, list_source, normalise_uri, open_bytes, open_stream
from clipdex.errors import ClipdexError, PhotoFolderError
from clipdex.store.catalog import CATALOG_NAME

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _make_index(folder: Path) -> None:
    """A folder that looks like a clipdex index (its catalog beside vectors/) with an image in it."""
    _write(folder / CATALOG_NAME)
    _write(folder / "vectors" / "cached.jpg")


def _uri(path: Path | str) -> str:
    return "file://" + quote(str(path), safe="/")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/ with images at two depths, a text file, a hidden file, an index inside."""
    root = tmp_path / "photos"
    _write(root / "a.jpg", b"aaa")
    _write(root / "sub" / "deeper" / "B.JPG", b"bbbb")
    _write(root / "sub" / "my photo été.png", b"ccccc")
    _write(root / "notes.txt", b"not an image")
    _write(root / ".hidden" / "h.jpg")
    _write(root / "@eaDir" / "thumb.jpg")
    _make_index(root / "index")
    return root


# -- folders ----------------------------------------------------------------------
def test_a_folder_is_walked_as_local_indexing_walks_it(photos: Path) -> None:
    found = list_source(str(photos))

    assert (found.kind, found.complete, found.source, found.root, found.roots) == (
        "folder", True, str(photos), str(photos), [str(photos)])
    assert [Path(f.path).relative_to(photos).as_posix() for f in found.files] == [
        "a.jpg", "sub/deeper/B.JPG", "sub/my photo été.png"]
    assert all(f.fs_path == f.path for f in found.files)
    for f in found.files:
        st = os.stat(f.fs_path)
        assert (f.size, f.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert found.problems == [] and found.unreadable_dirs == []


def test_a_folder_leaves_out_the_index_kept_in_it(photos: Path, tmp_path: Path) -> None:
    named = photos / "named-index"  # not recognisable as an index, but named in skip=
    _write(named / "kept.jpg")

    found = list_source(str(photos), skip=[str(named)])

    assert not any("index" in f.path for f in found.files)
    assert len(found.files) == 3


@pytest.mark.parametrize(("make", "said"), [
    (lambda p: p / "missing", "folder does not exist"),
    (lambda p: _write(p / "x.bin"), "is neither a folder nor a list of images"),
    (lambda p: _write(p / "one.jpg"), "is an image, not a folder"),
])
def test_a_source_that_is_no_folder_says_what_it_is(tmp_path: Path, make: object, said: str) -> None:
    with pytest.raises(PhotoFolderError, match=said):
        list_source(str(make(tmp_path)))  # type: ignore[operator]


def test_an_index_or_an_empty_folder_is_refused_as_local_indexing_refuses_it(tmp_path: Path) -> None:
    _make_index(tmp_path / "idx")
    with pytest.raises(PhotoFolderError, match="is a clipdex index"):
        list_source(str(tmp_path / "idx"))
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty" / "readme.md")
    with pytest.raises(PhotoFolderError, match=r"contains no images.*jpg"):
        list_source(str(tmp_path / "empty"))
    assert list_source(str(tmp_path / "empty"), allow_empty=True).files == []


# -- text lists ---------------------------------------------------------------------
def test_a_text_list_resolves_relative_paths_and_reports_what_it_cannot_use(photos: Path, tmp_path: Path) -> None:
    absolute = photos / "sub" / "deeper" / "B.JPG"
    lists = tmp_path / "lists"
    lists.mkdir()
    text = "\n".join([
        "# photos to index", "", "../photos/a.jpg", f"  {absolute}  ", "../photos/./sub/../a.jpg",
        "../photos/gone.jpg", "../photos/sub", "../photos/notes.txt", "   # indented comment",
        "../photos/sub/my photo été.png", "\r",
    ])
    (lists / "todo.txt").write_text(text, encoding="utf-8")

    found = list_source(str(lists / "todo.txt"))

    assert (found.kind, found.complete, found.source) == ("list", False, str(lists / "todo.txt"))
    assert [f.path for f in found.files] == [str(photos / "a.jpg"), str(absolute),
                                             str(photos / "sub" / "my photo été.png")]  # the duplicate once
    for f in found.files:
        st = os.stat(f.fs_path)
        assert (f.size, f.mtime_ns) == (st.st_size, st.st_mtime_ns)
    problems = {Path(p.path).name: (p.reason, p.kind) for p in found.problems}
    assert problems["gone.jpg"] == ("does not exist", "transient")
    assert problems["sub"][1] == "permanent" and "is a folder" in problems["sub"][0]
    assert problems["notes.txt"][1] == "permanent" and "not an image" in problems["notes.txt"][0]
    assert found.roots == [str(photos)] and found.root == str(photos)  # the deepest common folder


def test_a_list_stats_many_files_in_threads_and_finds_each(tmp_path: Path) -> None:
    many = [_write(tmp_path / "p" / f"{i % 7}" / f"{i:05d}.jpg") for i in range(listing.LOCAL_CHUNK * 3 + 5)]
    (tmp_path / "all.lst").write_text("\n".join(str(p) for p in reversed(many)))

    found = list_source(str(tmp_path / "all.lst"))

    assert [f.path for f in found.files] == sorted(str(p) for p in many)
    assert found.root == str(tmp_path / "p")


def test_a_name_that_is_not_utf8_in_a_list_keeps_its_bytes(tmp_path: Path) -> None:
    real = os.fsencode(str(tmp_path)) + b"/\xe9t\xe9.jpg"
    with open(real, "wb") as f:
        f.write(b"x")
    (tmp_path / "list.txt").write_bytes(real + b"\n")

    [entry] = list_source(str(tmp_path / "list.txt")).files

    assert entry.path == f"{tmp_path}/\\xe9t\\xe9.jpg"
    assert os.fsencode(entry.fs_path) == real
    assert open_bytes(entry.fs_path) == b"x"


def test_one_file_in_a_list_has_its_folder_as_root(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text(str(photos / "sub" / "deeper" / "B.JPG"))
    assert list_source(str(tmp_path / "one.txt")).roots == [str(photos / "sub" / "deeper")]


@pytest.mark.parametrize(("name", "data", "said"), [
    ("empty.txt", b"", "lists no files"),
    ("comments.txt", b"# nothing\n\n   \n", "lists no files"),
    ("binary.txt", b"\x89PNG\r\n\x1a\n\0\0\0", "is not a text file"),
    ("broken.parquet", b"PAR1 not really", "is not a Parquet file"),
    ("missing.txt", None, "list file does not exist"),
    ("list.json", b'["a.jpg"]', "neither a folder nor a list"),
])
def test_a_list_file_that_cannot_be_used_says_so(tmp_path: Path, name: str, data: bytes | None, said: str) -> None:
    if data is not None:
        (tmp_path / name).write_bytes(data)
    with pytest.raises(PhotoFolderError, match=said) as caught:
        list_source(str(tmp_path / name))
    assert str(tmp_path / name) in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_list_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "locked.txt").write_text("a.jpg")
    (tmp_path / "locked.txt").chmod(0)
    with pytest.raises(PhotoFolderError, match=r"cannot be read.*permissions"):
        list_source(str(tmp_path / "locked.txt"))


def test_a_csv_list_with_or_without_a_header(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "plain.csv").write_text(f"{photos}/a.jpg\n{photos}/sub/deeper/B.JPG\n")
    (tmp_path / "named.csv").write_text(f'caption,image_path\n"a, cat",{photos}/a.jpg\n')
    (tmp_path / "unnamed.csv").write_text(f"x,y\n1,{photos}/a.jpg\n")

    assert len(list_source(str(tmp_path / "plain.csv")).files) == 2
    assert [f.path for f in list_source(str(tmp_path / "named.csv")).files] == [str(photos / "a.jpg")]
    with pytest.raises(PhotoFolderError, match=r"none is named image_path, path, url.*x, y"):
        list_source(str(tmp_path / "unnamed.csv"))


# -- Parquet lists --------------------------------------------------------------------
@pytest.mark.parametrize(("columns", "used"), [
    ({"url": "u", "path": "p", "image_path": "i", "caption": "c"}, "i"),
    ({"url": "u", "PATH": "p", "caption": "c"}, "p"),
    ({"url": "u", "caption": "c"}, "u"),
    ({"files": "f", "n": 1}, "f"),  # the only string column
    ({"files": pa.array(["pics/c.jpg", None]).dictionary_encode(), "n": 1}, "c"),  # pandas' categorical
])
def test_a_parquet_list_takes_its_column_of_files(tmp_path: Path, columns: dict[str, object], used: str) -> None:
    for name in "ipucf":
        _write(tmp_path / "pics" / f"{name}.jpg")
    table = pa.table({name: v if isinstance(v, pa.Array) else [f"pics/{v}.jpg" if isinstance(v, str) else v, None]
                      for name, v in columns.items()})
    pq.write_table(table, tmp_path / "list.parquet")

    found = list_source(str(tmp_path / "list.parquet"))

    assert [f.path for f in found.files] == [str(tmp_path / "pics" / f"{used}.jpg")]  # nulls left out


@pytest.mark.parametrize(("table", "said"), [
    ({"caption": ["a"], "license": ["b"], "n": [1]}, r"several of its columns hold text.*caption \(string\), "
                                                     r"license \(string\), n \(int64\)"),
    ({"n": [1], "w": [2.0]}, r"none of its columns hold text.*n \(int64\), w \(double\)"),
    ({"image_path": [1]}, "column 'image_path' holds int64, not paths"),
])
def test_a_parquet_list_without_a_column_of_files_names_its_columns(tmp_path: Path, table: dict[str, list[object]],
                                                                    said: str) -> None:
    pq.write_table(pa.table(table), tmp_path / "bad.parquet")
    with pytest.raises(PhotoFolderError, match=said):
        list_source(str(tmp_path / "bad.parquet"))


# -- URIs: prefixes and lists in other file systems ----------------------------------
def test_a_file_uri_prefix_lists_images_with_their_stat(photos: Path) -> None:
    found = list_source(_uri(photos) + "/")

    assert (found.kind, found.complete) == ("prefix", True)
    assert found.source == found.root == _uri(photos) and found.roots == [found.root]
    assert [f.path for f in found.files] == [
        _uri(photos / "a.jpg"), _uri(photos / "sub/deeper/B.JPG"),
        f"{_uri(photos)}/sub/my%20photo%20%C3%A9t%C3%A9.png"]  # no .txt, hidden, NAS thumbnail or index files
    for f in found.files:
        assert f.fs_path == f.path and f.raw_path is None
        local = Path(listing.resolve(f.path)[1])
        st = os.stat(local)
        assert (f.size, f.mtime_ns) == (st.st_size, st.st_mtime_ns)
        assert open_bytes(f.fs_path) == local.read_bytes()


def test_a_prefix_leaves_out_the_folders_in_skip(photos: Path) -> None:
    found = list_source(_uri(photos), skip=[str(photos / "sub")])
    assert [f.path for f in found.files] == [_uri(photos / "a.jpg")]


def test_a_prefix_that_is_missing_empty_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(PhotoFolderError, match="does not exist"):
        list_source(_uri(tmp_path / "nowhere"))
    assert list_source(_uri(tmp_path / "nowhere"), allow_empty=True).files == []
    _write(tmp_path / "empty" / "readme.md")
    with pytest.raises(PhotoFolderError, match="contains no images"):
        list_source(_uri(tmp_path / "empty"))
    _write(tmp_path / "one.jpg")
    with pytest.raises(PhotoFolderError, match="is a file, not a folder"):
        list_source(_uri(tmp_path / "one.jpg"))


def test_a_bucket_shaped_file_system_lists_and_opens_by_uri() -> None:
    """mock:// paths have no leading slash, as s3:// and gs:// ones (``bucket/key``)."""
    fs, _ = listing.resolve("mock://bucket/x")
    for name, data in (("photos/a.jpg", b"1"), ("photos/sub/b c.PNG", b"22"), ("photos/sub/.tmp.jpg", b"3"),
                       ("photos/list.txt", b"a.jpg\nsub/b c.PNG\nmissing.jpg\nmock://bucket/photos/sub\n")):
        fs.create_dir(name.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(listing.resolve(f"mock://bucket/{name}")[1]) as out:
            out.write(data)

    prefix = list_source("mock://bucket/photos")
    assert [(f.path, f.size) for f in prefix.files] == [
        ("mock://bucket/photos/a.jpg", 1), ("mock://bucket/photos/sub/b%20c.PNG", 2)]
    assert all(f.mtime_ns > 0 for f in prefix.files)
    assert open_bytes("mock://bucket/photos/sub/b c.PNG") == b"22"

    listed = list_source("mock://bucket/photos/list.txt")  # a list in the bucket: its entries start there
    assert (listed.kind, listed.roots) == ("list", ["mock://bucket"])
    assert [f.path for f in listed.files] == [f.path for f in prefix.files]
    assert {p.path: p.kind for p in listed.problems} == {
        "mock://bucket/photos/missing.jpg": "transient", "mock://bucket/photos/sub": "permanent"}


def test_a_local_list_of_uris_and_paths_together(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "mixed.txt").write_text("\n".join([
        f"file://{photos}/sub/my photo été.png",  # as a person writes it
        f"{_uri(photos)}/sub/my%20photo%20%C3%A9t%C3%A9.png",  # as a URI must be: the same file
        f"{_uri(photos)}/gone.jpg", str(photos / "a.jpg")]))

    found = list_source(str(tmp_path / "mixed.txt"))

    assert [f.path for f in found.files] == [str(photos / "a.jpg"),
                                             f"{_uri(photos)}/sub/my%20photo%20%C3%A9t%C3%A9.png"]
    assert [(p.path, p.reason, p.kind) for p in found.problems] == [
        (f"{_uri(photos)}/gone.jpg", "does not exist", "transient")]
    assert found.roots == [str(photos), "file:///"]


@pytest.mark.parametrize("source", ["ftp://x/y", "foo://bar", "https://example.com/photos/"])
def test_a_scheme_pyarrow_cannot_open_names_those_it_can(source: str) -> None:
    with pytest.raises(PhotoFolderError, match=r"is not a file system pyarrow opens here.*file://, s3://, gs://") \
            as caught:
        list_source(source)
    assert "clipdex-probe" not in str(caught.value)
    if source.startswith("https"):
        assert "img2dataset" in str(caught.value)


def test_a_list_naming_a_scheme_pyarrow_cannot_open_is_refused(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("foo://bar/a.jpg\n")
    with pytest.raises(PhotoFolderError, match=r"list.txt \(it names foo://bar/a.jpg\).*not a file system"):
        list_source(str(tmp_path / "list.txt"))


def test_credentials_in_a_uri_are_refused_and_not_repeated() -> None:
    with pytest.raises(PhotoFolderError, match=r"credentials in the URI.*AWS_ACCESS_KEY_ID") as caught:
        list_source("s3://key:hunter2@bucket/photos/")
    assert "hunter2" not in str(caught.value)


def test_a_file_system_that_refuses_says_how_to_give_it_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.fs as pafs

    class Refusing:
        @staticmethod
        def from_uri(uri: str) -> object:
            raise OSError("AWS Error ACCESS_DENIED during HeadBucket operation: No response body.")

    monkeypatch.setattr(pafs, "FileSystem", Refusing)
    monkeypatch.setattr(listing, "_filesystems", {})
    with pytest.raises(ClipdexError, match=r"ACCESS_DENIED.*AWS_ACCESS_KEY_ID.*every node of the Ray cluster"):
        list_source("s3://private-bucket/photos/")


# -- URIs: their one form, and opening them -------------------------------------------
@pytest.mark.parametrize(("given", "normal"), [
    ("S3://bucket/a//b/./c/../d.jpg", "s3://bucket/a/b/d.jpg"),
    ("s3://bucket/my photo.jpg", "s3://bucket/my%20photo.jpg"),
    ("s3://bucket/my%20photo.jpg", "s3://bucket/my%20photo.jpg"),
    ("gs://b/été #1.jpg", "gs://b/%C3%A9t%C3%A9%20%231.jpg"),
    ("s3://b/a+b(1)~.jpg", "s3://b/a+b(1)~.jpg"),
    ("s3://b/x.jpg?region=eu-west-1", "s3://b/x.jpg?region=eu-west-1"),
    ("file:/tmp/x.jpg", "file:///tmp/x.jpg"),
    ("file://localhost/tmp/x.jpg", "file:///tmp/x.jpg"),
    ("s3://bucket/photos/", "s3://bucket/photos"),
])
def test_normalise_uri(given: str, normal: str) -> None:
    assert normalise_uri(given) == normal
    assert normalise_uri(normal) == normal


def test_is_uri() -> None:
    assert is_uri("s3://b/x") and is_uri("file:/x") and is_uri("FILE:///x")
    assert not is_uri("/x/y.jpg") and not is_uri("photos/a:b.jpg") and not is_uri("file.jpg")


def test_open_bytes_and_open_stream_on_a_path_and_a_file_uri(tmp_path: Path) -> None:
    path = _write(tmp_path / "dir with space" / "ünï.jpg", b"0123456789")
    for name in (str(path), _uri(path), normalise_uri(f"file://{path}")):
        assert open_bytes(name) == b"0123456789"
        with open_stream(name) as f:
            f.seek(4)
            assert f.read(3) == b"456"


def test_a_file_a_worker_cannot_read_is_an_os_error(tmp_path: Path) -> None:
    for name in (str(tmp_path / "gone.jpg"), _uri(tmp_path / "gone.jpg"), "foo://bar/a.jpg"):
        with pytest.raises(OSError):
            open_bytes(name)


def test_a_prefix_at_a_bucket_root_and_an_index_kept_in_the_bucket() -> None:
    fs, _ = listing.resolve("mock://root-bucket/")
    for name in ("a.jpg", "trip/b.jpg", "idx/catalog-stand-in", f"idx/{CATALOG_NAME}", "idx/vectors/v.jpg"):
        inner = listing.resolve(f"mock://root-bucket/{name}")[1]
        if "/" in inner:
            fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as out:
            out.write(b"x")

    found = list_source("mock://root-bucket/")

    assert found.root == "mock://root-bucket"
    assert [f.path for f in found.files] == ["mock://root-bucket/a.jpg", "mock://root-bucket/trip/b.jpg"]


def test_a_list_whose_file_system_refuses_every_file_is_an_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:  # stands in for a bucket that turns every request away
        def get_file_info(self, paths: object) -> list[object]:
            raise PermissionError("AWS Error ACCESS_DENIED during HeadObject operation")

    monkeypatch.setitem(listing._filesystems, ("mock", "deny", ""), (Refusing(), ""))
    (tmp_path / "list.txt").write_text("mock://deny/a.jpg\nmock://deny/b.jpg\n")
    with pytest.raises(PhotoFolderError, match=r"mock://deny/a.jpg: cannot be listed or read .*ACCESS_DENIED"):
        list_source(str(tmp_path / "list.txt"))
