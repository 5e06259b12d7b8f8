"""An index whose model weights are not on this machine (an import, weights moved): the web app
still searches by indexed photos; text queries are a clear 503, answered at once every time."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from fastapi.testclient import TestClient

from clipdex import Index
from clipdex.web import create_app


def test_photo_searches_work_and_text_queries_say_why_not(tmp_path: Path, photos: Path,
                                                          tiny_model: tuple[Path, Path]) -> None:
    config, weights = tiny_model
    moved = tmp_path / "weights.pt"
    shutil.copy(weights, moved)
    with Index.open(tmp_path / "idx", create=True, model_config=str(config), weights=str(moved)) as index:
        index.add(photos)
    moved.unlink()  # the weights are gone; the vectors stay
    with Index.open(tmp_path / "idx") as index:
        client = TestClient(create_app(index, None), base_url="http://127.0.0.1:8000")
        by_photo = client.get("/api/search", params={"q": "@photo-003", "k": 3})
        assert by_photo.status_code == 200 and by_photo.json()["results"][0]["name"] == "photo-003.jpg"
        assert client.get("/api/similar/1", params={"k": 2}).status_code == 200
        for attempt in range(2):
            started = time.perf_counter()
            text = client.get("/api/search", params={"q": "a dog"})
            assert text.status_code == 503 and "--weights" in text.json()["error"], text.text
            assert attempt == 0 or time.perf_counter() - started < 1  # not tried again
        page = client.get("/", params={"q": "a dog"})
        assert page.status_code == 503 and "no longer exist" in page.text
