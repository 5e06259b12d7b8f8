"""`clipdex index --storage fp16`: half the vector file, the same search."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def test_fp16_storage_halves_the_file_and_searches_alike(tmp_path: Path, photos: Path,
                                                         model_args: list[str]) -> None:
    sizes, found = {}, {}
    for storage in ("fp32", "fp16"):
        index = str(tmp_path / storage)
        result = run_cli("index", str(photos), "--index", index, "--storage", storage, *model_args)
        assert result.exit_code == 0, result.output
        (vectors,) = (Path(index) / "vectors").glob("model-1.*")
        sizes[storage] = vectors.stat().st_size
        out = run_cli("search", "a photo", "-n", "12", "--index", index, *model_args, "--json")
        found[storage] = [(r["path"], r["score"]) for r in json.loads(out.output)["results"]]
        again = run_cli("index", str(photos), "--index", index, *model_args)  # keeps its storage
        assert "unchanged      12" in again.output
    assert sizes["fp16"] * 2 == sizes["fp32"]
    assert {p for p, _ in found["fp16"]} == {p for p, _ in found["fp32"]}
    for (_, a), (_, b) in zip(sorted(found["fp16"]), sorted(found["fp32"])):
        assert abs(a - b) < 1e-3
