"""Options are checked before any work: ranges, output paths; disk trouble and Ctrl-C are one line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from click.testing import Result

from clipdex import cli
from clipdex.fileio import OS_PROBLEMS, describe_os_error
from tests.conftest import run_cli


def run(*args: str) -> Result:
    return run_cli(*args, catch_exceptions=True)


def _no_traceback(result: Result) -> None:
    assert isinstance(result.exception, SystemExit) or result.exception is None, result.exception
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, option", [
    (["index", "PHOTOS", "--workers", "-1"], "--workers"),
    (["index", "PHOTOS", "--workers", "0"], "--workers"),
    (["index", "PHOTOS", "--batch-size", "0"], "--batch-size"),
    (["index", "PHOTOS", "--batch-size", "100000"], "--batch-size"),
    (["index", "PHOTOS", "--max-megapixels", "0"], "--max-megapixels"),
    (["index", "PHOTOS", "--max-megapixels", "nan"], "--max-megapixels"),
    (["index", "PHOTOS", "--max-megapixels", "inf"], "--max-megapixels"),
    (["search", "dog", "-n", "0"], "-n"),
    (["search", "dog", "--offset", "-1"], "--offset"),
    (["classify", "--name", "t", "--labels", "a,b", "--per-label", "-1"], "--per-label"),
    (["classify", "--name", "t", "--labels", "a,b", "--per-label", "100000"], "--per-label"),
    (["classify", "--name", "t", "--labels", "a,b", "--seed", "-5"], "--seed"),
    (["classify", "--name", "t", "--labels", "a,b", "--top-k", "0"], "--top-k"),
    (["classify", "--name", "t", "--labels", "a,b", "--threshold", "7"], "--threshold"),
    (["classify", "--name", "t", "--labels", "a,b", "--threshold", "nan"], "--threshold"),
    (["classify", "--name", "t", "--labels", "a,b", "--min-prob", "7"], "--min-prob"),
    (["classify", "--name", "t", "--labels", "a,b", "--min-prob", "-0.1"], "--min-prob"),
    (["review", "t", "--grid", "g.jpg", "--per-label", "100000"], "--per-label"),
    (["review", "t", "--grid", "g.jpg", "--per-label", "0"], "--per-label"),
    (["review", "t", "--grid", "g.jpg", "--seed", "-5"], "--seed"),
    (["bench", "--batch-sizes", "8,x"], "--batch-sizes"),
    (["bench", "--batch-sizes", "0"], "--batch-sizes"),
    (["bench", "--precisions", "fp64"], "--precisions"),
    (["bench", "--photos", "0"], "--photos"),
    (["serve", "--port", "0"], "--port"),
    (["serve", "--port", "70000"], "--port"),
])
def test_out_of_range_options_are_usage_errors(tmp_path: Path, args: list[str], option: str) -> None:
    args = [str(tmp_path) if a == "PHOTOS" else a for a in args]
    result = run(*args, "--index", str(tmp_path / "idx")) if args[0] != "bench" else run(*args)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Error: Invalid value" in result.output
    _no_traceback(result)
    assert not (tmp_path / "idx").exists()


def test_the_limits_match_the_library() -> None:
    from clipdex import review
    from clipdex.index import MAX_K

    assert cli.MAX_RESULTS == MAX_K
    assert getattr(review, "MAX_PER_LABEL", cli.MAX_PER_LABEL) == cli.MAX_PER_LABEL


@pytest.fixture()
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any library work fails the test: the output check must come first."""
    from clipdex.index import Index

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work started before the output was checked")

    for name in ("open", "search", "classify", "classification", "evaluate"):
        monkeypatch.setattr(Index, name, refuse)


@pytest.mark.parametrize("target, code, problem", [
    ("missing-folder/out.{ext}", 1, "does not exist. Choose a path in a folder you can write to"),
    ("a-folder", 2, "is a directory"),  # click's own check, also before the work
])
@pytest.mark.parametrize("command", [
    ["search", "dog", "--grid", "{target}"],
    ["classify", "--name", "t", "--labels", "a,b", "--out", "{target}"],
    ["classify", "--name", "t", "--labels", "a,b", "--grid", "{target}"],
    ["classify", "--name", "t", "--labels", "a,b", "--metadata", "{table}", "--key", "path",
     "--metadata-out", "{target}"],
    ["review", "t", "--grid", "{target}"],
    ["evaluate", "t", "--heatmap", "{target}"],
])
def test_unwritable_outputs_fail_before_the_work(tmp_path: Path, no_work: None, command: list[str],
                                                 target: str, code: int, problem: str) -> None:
    (tmp_path / "a-folder").mkdir()
    table = tmp_path / "photos.csv"
    table.write_text("path,t\nx.jpg,a\n")
    ext = "csv" if "--out" in command or "--metadata-out" in command else "jpg"
    path = str(tmp_path / target.format(ext=ext))
    args = [a.format(target=path, table=table) for a in command]
    result = run(*args, "--index", str(tmp_path / "idx"))
    assert result.exit_code == code, result.output
    option = next(a for a in args if a in ("--grid", "--out", "--metadata-out", "--heatmap"))
    assert option in result.output and problem in result.output
    if code == 1:
        assert result.output.startswith(f"error: {option} {path}: ")
    _no_traceback(result)


def test_the_default_joined_table_is_checked_too(tmp_path: Path, no_work: None) -> None:
    folder = tmp_path / "tables"
    folder.mkdir()
    table = folder / "photos.csv"
    table.write_text("path,t\nx.jpg,a\n")
    (folder / "photos-pred.csv").mkdir()  # where the joined table would go
    result = run("classify", "--name", "t", "--labels", "a,b", "--metadata", str(table), "--key", "path",
                 "--index", str(tmp_path / "idx"))
    assert result.exit_code == 1 and "--metadata-out" in result.output and "is a folder" in result.output


@pytest.mark.parametrize("name", ["grid.txt", "grid", "grid.csv"])
def test_image_outputs_need_an_image_extension(tmp_path: Path, no_work: None, name: str) -> None:
    result = run("search", "dog", "--grid", str(tmp_path / name), "--index", str(tmp_path / "idx"))
    assert result.exit_code == 1 and "End the name in .jpg, .png or .webp." in result.output
    assert "is not an image type clipdex can write" in result.output
    assert "folder you can write to" not in result.output  # the type is wrong, not the folder
    _no_traceback(result)
    heatmap = run("evaluate", "t", "--heatmap", str(tmp_path / name), "--index", str(tmp_path / "idx"))
    assert heatmap.exit_code == 1 and f"--heatmap {tmp_path / name}: " in heatmap.output
    _no_traceback(heatmap)


def test_the_cli_checks_image_outputs_with_the_grid_check(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path, no_work: None) -> None:
    import clipdex.grid
    from clipdex.errors import GridError

    seen: list[tuple[str, str]] = []

    def check(path: str, option: str = "--grid") -> str:
        seen.append((path, option))
        raise GridError(path, "refused by the grid's own check", "Fix.")

    monkeypatch.setattr(clipdex.grid, "check_grid_path", check)
    result = run("review", "t", "--grid", str(tmp_path / "g.png"), "--index", str(tmp_path / "idx"))
    assert result.exit_code == 1 and "refused by the grid's own check" in result.output
    assert seen == [(str(tmp_path / "g.png"), "--grid")]


def test_a_table_without_the_key_column_fails_before_the_work(tmp_path: Path, no_work: None) -> None:
    table = tmp_path / "photos.csv"
    table.write_text("name,t\nx.jpg,a\n")
    result = run("classify", "--name", "t", "--labels", "a,b", "--metadata", str(table), "--key", "path",
                 "--index", str(tmp_path / "idx"))
    assert result.exit_code == 1 and "error:" in result.output and "'path'" in result.output


def _raise_in_search(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    from clipdex.index import Index

    def opened(*args: object, **kwargs: object) -> Index:
        return object.__new__(Index)

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(Index, "open", opened)
    monkeypatch.setattr(Index, "__exit__", lambda *args: None)
    monkeypatch.setattr(Index, "search", fail)
    monkeypatch.setattr(Index, "add", fail)


@pytest.mark.parametrize("code, said", [
    (errno.ENOSPC, "the disk is full"),
    (errno.EROFS, "the file system is read-only"),
    (errno.EACCES, "permission denied"),
    (errno.EIO, "the disk reported an input/output error"),
    (errno.EDQUOT, "the disk quota is used up"),
    (errno.EPERM, "operation not permitted"),
])
def test_disk_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, code: int, said: str) -> None:
    _raise_in_search(monkeypatch, OSError(code, "os message", "/data/idx/vectors.f32"))
    result = run("search", "dog")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot use /data/idx/vectors.f32: " + said)
    _no_traceback(result)


@pytest.mark.parametrize("code", sorted(OS_PROBLEMS))
def test_the_cli_and_the_store_read_one_errno_table(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    from clipdex.errors import IndexStorageError
    from clipdex.store import guard

    described = describe_os_error(OSError(code, "os message"))
    assert described is not None and described == OS_PROBLEMS[code]
    _raise_in_search(monkeypatch, OSError(code, "os message", "/data/out.csv"))
    result = run("search", "dog")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: cannot use /data/out.csv: {described.problem}. {described.fix}"
    # The store words the same errors for the index's own files (by the table's kinds).
    translated = guard.translate_os_error(Path("/idx"), OSError(code, "os message"), "writing x")
    assert isinstance(translated, IndexStorageError) and "Check the index folder" not in str(translated)
    assert not hasattr(cli, "DISK_PROBLEMS")  # no second table


def test_other_os_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    _raise_in_search(monkeypatch, OSError(errno.ENOTCONN, "not connected"))
    result = run("search", "dog")
    assert isinstance(result.exception, OSError)  # a bug to see, not a disk problem to explain


def test_ctrl_c_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _raise_in_search(monkeypatch, KeyboardInterrupt())
    result = run("search", "dog")
    assert result.exit_code == 130 and result.output.startswith("error: interrupted")
    _no_traceback(result)

    monkeypatch.setattr(cli, "_check_before_creating", lambda *args: None)
    result = run("index", str(tmp_path), "--index", str(tmp_path / "idx"))
    assert result.exit_code == 130 and "run the same command again to resume" in result.output
    _no_traceback(result)
