"""What a user hears when an ONNX export is named the wrong way, has moved, or needs what this install
lacks; a busy port; an export folder others can read."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from clipdex.errors import ModelError, ModelUnavailable
from clipdex.models import sources
from clipdex.models.registry import resolve_model
from tests.conftest import run_cli


def test_a_bare_export_folder_is_pointed_to_onnx(clipdex_export_dir: Path) -> None:
    with pytest.raises(ModelError, match=f"write --model onnx:{clipdex_export_dir}"):
        resolve_model(str(clipdex_export_dir))


def test_an_export_named_as_a_transformers_checkpoint_is_pointed_to_onnx(clipdex_export_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"is a ready ONNX export .*: use --model onnx:"):
        resolve_model(f"hf:{clipdex_export_dir}")


def test_an_embeddings_folder_is_not_called_a_damaged_model(tmp_path: Path, photos: Path,
                                                            model_args: list[str]) -> None:
    index, out = str(tmp_path / "idx"), tmp_path / "emb"
    assert run_cli("index", str(photos), "--index", index, *model_args).exit_code == 0
    exported = run_cli("export", str(out), "--index", index)
    assert exported.exit_code == 0, exported.output
    with pytest.raises(ModelError, match=f"holds embeddings written by `clipdex export`.*clipdex import {out}"):
        sources.find_export(resolve_model(f"onnx:{out}"), "fp32", None)


def test_a_checkpoint_without_torch_says_how_to_run_it(tiny_model: tuple[Path, Path]) -> None:
    config, weights = tiny_model
    spec = resolve_model(weights=str(weights), model_config=str(config))
    with pytest.raises(ModelUnavailable) as caught:
        sources.check_available(spec, None)  # as on an install without torch
    message = str(caught.value)
    assert "is a torch checkpoint, and torch is not installed" in message
    assert f"clipdex models export {spec.name} DIR --weights {weights}" in message and "--model onnx:DIR" in message


def test_status_says_when_the_export_an_index_was_built_with_is_gone(tmp_path: Path, photos: Path,
                                                                     clipdex_export_dir: Path) -> None:
    folder = tmp_path / "export"
    shutil.copytree(clipdex_export_dir, folder)
    index = str(tmp_path / "idx")
    assert run_cli("index", str(photos), "--index", index, "--model", f"onnx:{folder}").exit_code == 0
    folder.rename(tmp_path / "moved")
    status = run_cli("status", "--index", index)
    assert status.exit_code == 0, status.output
    assert f"{folder} is gone (moved or deleted)" in " ".join(status.output.split())
    assert "--model onnx:/its/new/folder" in status.output


def test_serve_on_a_busy_port_fails_before_it_claims_to_serve(tmp_path: Path, photos: Path,
                                                               model_args: list[str]) -> None:
    index = str(tmp_path / "idx")
    assert run_cli("index", str(photos), "--index", index, *model_args).exit_code == 0
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("serve", "--index", index, "--port", str(port))
    assert result.exit_code != 0
    assert f"127.0.0.1:{port} is in use" in result.output and "--port N" in result.output
    assert "serving" not in result.output


def test_models_export_writes_a_folder_others_can_read(tmp_path: Path, model_args: list[str]) -> None:
    old = os.umask(0o022)
    try:
        dest = tmp_path / "shared-export"
        result = run_cli("models", "export", "clipdex-tiny", str(dest), *model_args)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
