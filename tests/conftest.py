"""Shared fixtures: isolated state, a tiny real open_clip model, photos and broken files."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result

from tests.images import write_photos

if TYPE_CHECKING:
    from clipdex import Index

DATA = Path(__file__).parent / "data"
TINY_CONFIG = DATA / "clipdex-tiny.json"
HOSTILE_NAME = '"><img src=x onerror=alert(1)>.jpg'  # a file name that is also markup


@pytest.fixture(autouse=True)
def clipdex_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """All clipdex state (default index, caches) in a temp dir, never the user's."""
    home = tmp_path_factory.mktemp("clipdex-home")
    monkeypatch.setenv("CLIPDEX_HOME", str(home))
    monkeypatch.delenv("CLIPDEX_INDEX", raising=False)
    monkeypatch.delenv("CLIPDEX_DEVICE", raising=False)
    # Every test computes fp32 unless it asks otherwise: which precision --precision auto
    # takes depends on this machine (native bf16, a GPU), and a test must not.
    monkeypatch.setenv("CLIPDEX_PRECISION", "fp32")
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config JSON, weights file) of a tiny CLIP built by open_clip with random weights
    (tests/onnx_layouts.py ``make_tiny_model``)."""
    from tests.onnx_layouts import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture()
def model_args(tiny_model: tuple[Path, Path]) -> list[str]:
    """CLI options that select the tiny model."""
    config, weights = tiny_model
    return ["--model-config", str(config), "--weights", str(weights)]


@pytest.fixture()
def model_kwargs(tiny_model: tuple[Path, Path]) -> dict[str, str]:
    config, weights = tiny_model
    return {"model_config": str(config), "weights": str(weights)}


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """A folder with 12 generated photos, two of them in a subfolder."""
    folder = tmp_path / "photos"
    write_photos(folder / "trip", 2)
    write_photos(folder, 10, start=2)
    return folder


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """A real uvicorn server for ``app`` on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_cli(*args: str, catch_exceptions: bool = False) -> Result:
    """``clipdex ARGS…`` in-process (click's CliRunner); exceptions propagate unless caught."""
    from clipdex.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=catch_exceptions)


@pytest.fixture()
def cli_index(tmp_path: Path, photos: Path, model_args: list[str]) -> str:
    """An index of the ``photos`` fixture made by ``clipdex index``; its folder path."""
    index = str(tmp_path / "idx")
    result = run_cli("index", str(photos), "--index", index, *model_args)
    assert result.exit_code == 0, result.output
    return index


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def web_index(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> Iterator[Index]:
    """An index of the 12 photos plus a copy under a hostile name, with one label set run."""
    from clipdex import Index
    from clipdex.labels import make_label_set

    shutil.copy(next(photos.glob("*.jpg")), photos / HOSTILE_NAME)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        idx.add(photos)
        idx.classify([make_label_set("taken_space", ["indoor", "outdoor"], ["a photo taken {}"])])
        yield idx


# -- Transformers checkpoints (tests/hf_checkpoints.py): tiny random save_pretrained folders --

@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel saved with save_pretrained, with its processor and tokenizer."""
    from tests.hf_checkpoints import write_clip

    return write_clip(tmp_path_factory.mktemp("hf-clip"))


@pytest.fixture(scope="session")
def hf_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SiglipModel saved with save_pretrained, with its processor and tokenizer."""
    from tests.hf_checkpoints import write_siglip

    return write_siglip(tmp_path_factory.mktemp("hf-siglip"))


@pytest.fixture(scope="session")
def hf_siglip_spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SiglipModel saved as the hub's SigLIP checkpoints are: its tokenizer a
    sentencepiece spiece.model for SiglipTokenizer (input_ids only), no tokenizer.json."""
    from tests.hf_checkpoints import write_siglip_spm

    return write_siglip_spm(tmp_path_factory.mktemp("hf-siglip-spm"))


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline (fill it with tests.hf_checkpoints.cache_repo)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def sigmoid_open_clip(folder: Path, name: str, bias: float, seed: int) -> tuple[Path, Any]:
    """A tiny open_clip CLIP with SigLIP's logit_bias and random weights: its model-config file (registered
    with open_clip) and the model. ``name`` must not contain "siglip" (open_clip would then ask the hub for
    SigLIP's tokenizer)."""
    import open_clip
    import torch

    config = json.loads(TINY_CONFIG.read_text())
    config["init_logit_bias"] = bias
    config_path = folder / f"{name}.json"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None).eval()
    assert model.logit_bias is not None
    return config_path, model


# -- ONNX exports in the hub layout (tests/onnx_layouts.py): the tiny model as Immich and clipdex write it --

@pytest.fixture(scope="session")
def immich_export_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Path]) -> Path:
    """The tiny model exported as Immich's exporter writes ``immich-app/<ARCH>__<TAG>`` (batch fixed at
    1, float32 NCHW pixels, int32 texts, Transformers' CLIP tokenizer); the folder is ``ViT-T__tiny``.
    Read-only for tests: copy it to change it."""
    from tests.onnx_layouts import write_immich_export

    return write_immich_export(tiny_model, tmp_path_factory.mktemp("immich-export") / "ViT-T__tiny")


@pytest.fixture(scope="session")
def clipdex_export_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Path]) -> Path:
    """The tiny model written by clipdex's own export and ``bundle.write_export`` (the layout of
    ``clipdex models export``). Read-only for tests: copy it to change it."""
    from tests.onnx_layouts import write_clipdex_export

    return write_clipdex_export(tiny_model, tmp_path_factory.mktemp("clipdex-export") / "tiny",
                                tmp_path_factory.mktemp("clipdex-export-home"))
