"""Photos whose names are not valid UTF-8: opened by their exact bytes, shown escaped, addressed by id."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipdex import Index
from clipdex.web import create_app
from tests.images import write_photos

RAW_NAME = b"caf\xe9 <b onclick=x>.jpg"  # Latin-1 bytes, and markup


@pytest.fixture()
def index(tmp_path: Path, model_kwargs: dict[str, str]) -> Iterator[Index]:
    folder = tmp_path / "photos"
    write_photos(folder, 4)
    os.rename(os.fsencode(folder / "photo-000.jpg"), os.fsencode(folder) + b"/" + RAW_NAME)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        idx.add(folder)
        yield idx


@pytest.fixture()
def client(index: Index) -> TestClient:
    return TestClient(create_app(index), base_url="http://127.0.0.1:8000")


def odd_photo(client: TestClient) -> dict[str, object]:
    results = client.get("/api/search", params={"q": "a photo", "k": 10}).json()["results"]
    return next(r for r in results if "caf" in r["name"])


def no_raw_bytes(content: bytes) -> bool:
    return b"caf\xe9" not in content and b"\\udce9" not in content and b"\xed\xb3\xa9" not in content


def test_an_odd_name_is_served_from_its_exact_bytes_and_shown_escaped(client: TestClient) -> None:
    photo = odd_photo(client)
    assert photo["name"] == "caf\\xe9 <b onclick=x>.jpg"
    thumb = client.get(f"/thumb/{photo['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    facts = client.get(f"/api/photos/{photo['id']}")
    assert facts.json()["exists"] is True and facts.json()["path"] == photo["path"]
    assert no_raw_bytes(facts.content)
    json.loads(facts.content.decode("utf-8"))  # strictly valid UTF-8 JSON
    page = client.get(f"/photo/{photo['id']}")
    assert page.status_code == 200 and "no longer on disk" not in page.text
    assert "caf\\xe9 &lt;b onclick=x&gt;.jpg" in page.text and no_raw_bytes(page.content)
    results = client.get("/", params={"q": "a photo"})
    assert results.status_code == 200 and no_raw_bytes(results.content) and "<b onclick" not in results.text


def test_more_like_an_odd_name_uses_its_stored_vector(client: TestClient) -> None:
    photo = odd_photo(client)
    similar = client.get(f"/api/similar/{photo['id']}", params={"k": 2}).json()
    assert similar["results"][0]["id"] == photo["id"] and similar["results"][0]["score"] == pytest.approx(1.0)
    assert similar["count"] == 2 and no_raw_bytes(json.dumps(similar).encode())
    page = client.get("/", params={"like": photo["id"]})
    assert page.status_code == 200 and page.text.count('class="card"') == 4 and 'data-like="' in page.text
    assert "ranked by likeness to" in page.text and "1.000" in page.text


def test_more_like_this_needs_no_file_on_disk(client: TestClient, index: Index) -> None:
    photo = odd_photo(client)
    os.unlink(index.photo(int(photo["id"])).fs_path)  # type: ignore[call-overload]
    similar = client.get(f"/api/similar/{photo['id']}", params={"k": 1}).json()["results"]
    assert similar[0]["id"] == photo["id"]
    assert client.get(f"/api/photos/{photo['id']}").json()["exists"] is False
    assert client.get(f"/thumb/{photo['id']}").status_code == 404
    assert "no longer on disk" in client.get(f"/photo/{photo['id']}").text


def test_an_odd_name_in_the_index_folder_path_still_uploads(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    folder = tmp_path / "photos"
    write_photos(folder, 2)
    odd_index = os.fsdecode(os.fsencode(tmp_path) + b"/idx-\xff")
    with Index.open(odd_index, create=True, **model_kwargs) as idx:
        idx.add(folder)
        client = TestClient(create_app(idx), base_url="http://127.0.0.1:8000")
        image = tmp_path / "q.png"
        Image.new("RGB", (40, 30), (1, 2, 3)).save(image)
        done = client.post("/upload", files={"file": ("q.png", image.read_bytes(), "image/png")},
                           follow_redirects=False)
        assert done.status_code == 303 and "idx-" not in done.headers["location"]
        page = client.get(done.headers["location"])
        assert page.status_code == 200 and page.text.count('class="card"') == 2
