"""Shared fixtures: isolated state, a tiny real open_clip model, photos and broken files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
TINY_CONFIG = DATA / "clipdex-tiny.json"
UNSPLASH = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "unsplash-1k"
UNSPLASH_IMAGES = UNSPLASH / "images"


@pytest.fixture(autouse=True)
def clipdex_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """All clipdex state (default index, caches) in a temp dir, never the user's."""
    home = tmp_path_factory.mktemp("clipdex-home")
    monkeypatch.setenv("CLIPDEX_HOME", str(home))
    monkeypatch.delenv("CLIPDEX_INDEX", raising=False)
    monkeypatch.delenv("CLIPDEX_DEVICE", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config JSON, weights file) of a tiny CLIP built by open_clip with random weights."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny-model")
    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model("clipdex-tiny", pretrained=None)
    weights = folder / "clipdex-tiny.pt"
    torch.save(model.state_dict(), weights)
    return TINY_CONFIG, weights


@pytest.fixture()
def model_args(tiny_model: tuple[Path, Path]) -> list[str]:
    """CLI options that select the tiny model."""
    config, weights = tiny_model
    return ["--model-config", str(config), "--weights", str(weights)]


@pytest.fixture()
def model_kwargs(tiny_model: tuple[Path, Path]) -> dict[str, str]:
    config, weights = tiny_model
    return {"model_config": str(config), "weights": str(weights)}


def unsplash_paths(count: int) -> list[Path]:
    if not UNSPLASH_IMAGES.is_dir():
        pytest.skip(f"the shared photos are not here ({UNSPLASH_IMAGES}); they exist on "
                    "developer machines and in CI")
    return sorted(UNSPLASH_IMAGES.glob("*.jpg"))[:count]


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """A folder with 12 real Unsplash photos (copied: tests change it), two in a subfolder."""
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    for i, src in enumerate(unsplash_paths(12)):
        shutil.copy(src, folder / ("trip" if i < 2 else ".") / src.name)
    return folder
