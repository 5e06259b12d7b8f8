"""The web app: JSON API and pages in-process, security cases, and a real server in Chromium."""

from __future__ import annotations

import html
import io
import os
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipdex import Index
from clipdex.web import create_app
from tests.conftest import HOSTILE_NAME, free_port


@pytest.fixture()
def index(web_index: Index) -> Index:
    return web_index


@pytest.fixture()
def client(index: Index) -> TestClient:
    return TestClient(create_app(index), base_url="http://127.0.0.1:8000")


def test_search_api_and_page(client: TestClient) -> None:
    data = client.get("/api/search", params={"q": "dog in the snow", "k": 5}).json()
    assert [r["rank"] for r in data["results"]] == [1, 2, 3, 4, 5]
    page2 = client.get("/api/search", params={"q": "dog in the snow", "k": 5, "offset": 5}).json()
    assert page2["results"][0]["rank"] == 6
    page = client.get("/", params={"q": "dog in the snow"}).text
    assert page.count('class="card"') == 13 and 'value="dog in the snow"' in page


def test_similar_photo_and_status_api(client: TestClient, index: Index) -> None:
    first = client.get("/api/search", params={"q": "beach -people", "k": 1}).json()["results"][0]
    similar = client.get(f"/api/similar/{first['id']}", params={"k": 3}).json()["results"]
    assert similar[0]["id"] == first["id"] and similar[0]["score"] == pytest.approx(1.0, abs=1e-3)
    photo = client.get(f"/api/photos/{first['id']}").json()
    assert photo["path"] == first["path"] and photo["labels"][0]["set_name"] == "taken_space"
    assert client.get("/api/status").json()["indexed"] == 13
    assert client.get("/api/openapi.json").status_code == 200


def test_label_pages_filter_and_corrections(client: TestClient, index: Index, tmp_path: Path) -> None:
    sets = client.get("/api/labels").json()["sets"]
    assert sets[0]["name"] == "taken_space" and sum(sets[0]["counts"].values()) == 13
    page = client.get("/labels/taken_space", params={"sort": "least", "per": 3}).text
    assert "least confident first" in page and page.count('class="card labelled') <= 6

    only = client.get("/api/search", params={"q": "dog", "k": 50, "set": "taken_space",
                                              "label": "indoor"}).json()["results"]
    predicted = dict(zip(index.classification("taken_space").paths, index.classification("taken_space").predicted))
    assert all(predicted[r["path"]] == "indoor" for r in only)

    target = client.get("/api/search", params={"q": "dog", "k": 1}).json()["results"][0]
    flipped = "outdoor" if predicted[target["path"]] == "indoor" else "indoor"
    saved = client.post("/api/labels/taken_space/corrections", json={"file_id": target["id"], "label": flipped})
    assert saved.status_code == 200
    result = index.classification("taken_space")
    assert result.truth[result.paths.index(target["path"])] == flipped
    evaluation, n = index.evaluate("taken_space")
    assert n == 1 and evaluation.accuracy == 0.0
    bad = client.post("/api/labels/taken_space/corrections", json={"file_id": target["id"], "label": "sky"})
    assert bad.status_code == 400 and "Pick one of" in bad.json()["error"]

    from clipdex.export import write_predictions

    write_predictions([result], tmp_path / "p.csv")
    assert "taken_space_truth" in (tmp_path / "p.csv").read_text().splitlines()[0]


def test_file_names_and_queries_are_escaped(client: TestClient) -> None:
    page = client.get("/", params={"q": "a photo", "page": 1}).text
    assert "<img src=x onerror" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page or "&#34;&gt;&lt;img" in page
    echo = client.get("/", params={"q": "<script>alert(1)</script>"}).text
    assert "<script>alert(1)</script>" not in echo and "&lt;script&gt;" in echo
    hostile = next(r for r in client.get("/api/search", params={"q": "a", "k": 13}).json()["results"]
                   if r["name"] == HOSTILE_NAME)
    page = client.get(f"/photo/{hostile['id']}").text
    assert "<img src=x onerror" not in page


def test_only_indexed_photos_are_served(client: TestClient) -> None:
    assert client.get("/thumb/abc").status_code == 404
    missing = client.get("/thumb/999999")
    assert missing.status_code == 404 and missing.headers["content-type"] == "image/svg+xml"
    for path in ("/thumb/../../etc/passwd", "/static/../../../etc/passwd", "/static/%2e%2e/app.py",
                 "/photo/..%2F..%2Fetc%2Fpasswd"):
        response = client.get(path)
        assert response.status_code == 404 and "root:" not in response.text
    outside = client.get("/", params={"q": "@/etc/passwd"}).text
    assert "is not a photo of the index" in outside
    api = client.get("/api/search", params={"q": "@/etc/hostname"})
    assert api.status_code == 400 and "not a photo of the index" in api.json()["error"]


def test_requests_are_bounded(client: TestClient) -> None:
    for path, params, name in [("/api/search", {"q": "dog", "k": 100_000}, "k"),
                               ("/api/search", {"q": "x" * 5000}, "q"),
                               ("/api/search", {"q": "dog", "offset": 10**9}, "offset"),
                               ("/labels/taken_space", {"per": 10_000}, "per"),
                               ("/", {"q": "x" * 5000}, "q"),
                               ("/thumb/1", {"size": 9999}, "size")]:
        response = client.get(path, params=params)
        assert response.status_code == 400, (path, params)
        text = html.unescape(response.text)
        assert f"parameter '{name}'" in text and "x" * 100 not in text


def test_uploads_are_checked_and_kept_in_the_index(client: TestClient, index: Index) -> None:
    text = client.post("/upload", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
    assert text.status_code == 400 and "not a readable image" in text.text
    exe = client.post("/upload", files={"file": ("x.sh", b"#!/bin/sh", "application/x-sh")})
    assert exe.status_code == 415
    big = client.post("/upload", files={"file": ("big.jpg", b"\xff" * (21 * 1024 * 1024), "image/jpeg")})
    assert big.status_code == 413
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "JPEG")
    ok = client.post("/upload", files={"file": ("../../evil.jpg", buffer.getvalue(), "image/jpeg")},
                     data={"q": "snow"}, follow_redirects=False)
    assert ok.status_code == 303
    query = parse_qs(urlparse(ok.headers["location"]).query)["q"][0]
    saved = list((index.path / "uploads").iterdir())
    assert len(saved) == 1 and saved[0].resolve().parent == (index.path / "uploads").resolve()
    assert query == f"@upload:{saved[0].name} + snow" and str(index.path) not in ok.headers["location"]
    page = client.get(ok.headers["location"]).text
    assert page.count('class="card"') == 13


def test_deleted_photo_shows_a_placeholder(client: TestClient, index: Index) -> None:
    result = client.get("/api/search", params={"q": "dog", "k": 1}).json()["results"][0]
    os.unlink(result["path"])
    thumb = client.get(f"/thumb/{result['id']}")
    assert thumb.status_code == 404 and b"photo missing" in thumb.content
    page = client.get(f"/photo/{result['id']}")
    assert page.status_code == 200 and "no longer on disk" in page.text


def test_thumbnails_of_one_photo_made_at_once_all_succeed(photos: Path, tmp_path: Path) -> None:
    """Copies of one photo share a content hash; a page asks for both at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    from clipdex.web.thumbs import ThumbnailCache

    source = next(photos.glob("*.jpg"))
    cache = ThumbnailCache(tmp_path / "thumbs")
    start = threading.Barrier(8)

    def make(_: int) -> bytes | None:
        start.wait()
        return cache.get(str(source), "ab" * 32, 256)

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(make, range(8)))
    assert all(m is not None and m == made[0] for m in made)
    assert Image.open(io.BytesIO(made[0])).size[0] == 256
    assert [p.name for p in (tmp_path / "thumbs").rglob("*") if p.is_file()] == ["ab" * 32 + ".jpg"]

    (tmp_path / "not-a-folder").write_text("")  # the cache can't be written (even by root) ...
    unwritable = ThumbnailCache(tmp_path / "not-a-folder")
    assert unwritable.get(str(source), "cd" * 32, 128) is not None  # ... the thumbnail is still served


def test_errors_are_pages_that_say_what_to_do(client: TestClient) -> None:
    page = client.get("/photo/424242")
    assert page.status_code == 404 and "no indexed photo" in page.text and "Back to search" in page.text
    api = client.get("/api/photos/424242")
    assert api.status_code == 404 and "search again" in api.json()["error"]
    unknown_set = client.get("/labels/nope")
    assert unknown_set.status_code == 404 and "clipdex classify" in unknown_set.text


def test_serve_command_prints_the_url_and_stops_on_ctrl_c(index: Index) -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clipdex", "serve", "--index", str(index.path),
                             "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        seen = ""
        while url not in seen and time.monotonic() < deadline:
            seen += proc.stderr.readline()
        assert url in seen
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "api/status") as response:
                    assert b'"indexed":13' in response.read()
                break
            except OSError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_photo_page_shows_the_users_own_metadata(index: Index, tmp_path: Path) -> None:
    from clipdex.web.app import load_metadata

    target = next(p for p in index.searchable().paths if HOSTILE_NAME not in p)
    table = tmp_path / "photos.csv"
    table.write_text(f"photo_id,caption\n{Path(target).stem},<b>a caption</b>\nnot-indexed,x\n")
    client = TestClient(create_app(index, load_metadata(index, table, "photo_id")), base_url="http://127.0.0.1")
    file_id = next(r["id"] for r in client.get("/api/search", params={"q": "a", "k": 13}).json()["results"]
                   if r["path"] == target)
    page = client.get(f"/photo/{file_id}").text
    assert "&lt;b&gt;a caption&lt;/b&gt;" in page
    assert client.get(f"/api/photos/{file_id}").json()["metadata"]["caption"] == "<b>a caption</b>"
    api_page = client.get("/api").text
    assert "/api/search" in api_page and "Photos ranked by a query" in api_page
