"""Search filters on the web: folder, date taken and label, on the page and the JSON API.

The ``web_index`` photos live in two folders (``photos/`` and ``photos/trip/``).
Dates are set straight in the catalog (one writer, as the indexer would), so a
test says exactly which photos a period holds.
"""

from __future__ import annotations

import html
import re
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

from clipdex import Index
from clipdex.store.catalog import CATALOG_NAME
from clipdex.web import create_app

LOCAL = "http://127.0.0.1:8000"
QUERY = "a photo"


@pytest.fixture()
def client(web_index: Index) -> TestClient:
    return TestClient(create_app(web_index), base_url=LOCAL)


@pytest.fixture()
def folders(web_index: Index) -> tuple[str, str]:
    """(the index's folder, the trip folder inside it)."""
    (root,) = web_index.counts().roots
    return root, str(Path(root) / "trip")


def set_dates(index: Index, dates: dict[str, str]) -> None:
    """``taken_at`` of the photos named (file name -> 'YYYY-MM-DDTHH:MM:SS'); the rest 2010."""
    with sqlite3.connect(index.path / CATALOG_NAME) as db:
        db.execute("UPDATE files SET taken_at = '2010-01-01T12:00:00'")
        for name, taken in dates.items():
            db.execute("UPDATE files SET taken_at = ? WHERE path LIKE ?", (taken, "%/" + name))
    db.close()


def api(client: TestClient, path: str = "/api/search", **params: object) -> dict:
    response = client.get(path, params={"q": QUERY, "k": 50, **params} if path == "/api/search" else params)
    assert response.status_code == 200, response.text
    return response.json()


def names(found: dict) -> set[str]:
    return {r["name"] for r in found["results"]}


def cards(page: str) -> list[str]:
    return re.findall(r'<a class="card" href="/photo/(\d+)', page)


def test_folder_filter_keeps_only_that_folders_photos(client: TestClient, folders: tuple[str, str]) -> None:
    root, trip = folders
    found = api(client, folder=trip)
    assert found["count"] == 2 and all(r["path"].startswith(trip + "/") for r in found["results"])
    assert found["filters"] == {"folders": [trip], "after": None, "before": None, "label": None, "only": None}
    assert api(client, folder=trip + "/")["count"] == 2  # a trailing slash names the same folder
    assert api(client, folder=root)["count"] == 13
    both = client.get("/api/search", params=[("q", QUERY), ("k", 50), ("folder", trip), ("folder", root)])
    assert both.json()["count"] == 13 and both.json()["filters"]["folders"] == [trip, root]
    assert api(client)["filters"] == {"folders": [], "after": None, "before": None, "label": None, "only": None}

    page = client.get("/", params={"q": QUERY, "folder": trip})
    assert page.status_code == 200 and len(cards(page.text)) == 2
    assert f'<option value="{trip}" title="{trip}" selected>' in page.text  # the chosen folder stays chosen
    assert f'<option value="{root}" title="{root}" >' in page.text and "all folders" in page.text


def test_date_filters(client: TestClient, web_index: Index) -> None:
    set_dates(web_index, {"photo-002.jpg": "2021-06-01T00:00:00", "photo-003.jpg": "2021-06-30T23:59:59",
                          "photo-004.jpg": "2021-07-01T00:00:00"})
    june = api(client, after="2021-06", before="2021-07")
    assert names(june) == {"photo-002.jpg", "photo-003.jpg"}  # after inclusive, before exclusive
    assert june["filters"]["after"] == "2021-06-01T00:00:00" and june["filters"]["before"] == "2021-07-01T00:00:00"
    assert names(api(client, after="2021-06-15")) == {"photo-003.jpg", "photo-004.jpg"}
    assert len(names(api(client, before="2021"))) == 13 - 3

    page = client.get("/", params={"q": QUERY, "after": "2021-06-01", "before": "2021-07-01"})
    assert page.status_code == 200 and len(cards(page.text)) == 2
    assert 'type="date" name="after" id="after" value="2021-06-01"' in page.text
    assert "taken from 2021-06-01" in html.unescape(page.text)
    month = client.get("/", params={"q": QUERY, "after": "2021-06"}).text  # a month is its first day
    assert 'name="after" id="after" value="2021-06-01"' in month
    timed = client.get("/", params={"q": QUERY, "after": "2021-06-30T12:00"}).text
    assert 'type="datetime-local" name="after" id="after" value="2021-06-30T12:00:00"' in timed
    assert len(cards(timed)) == 2


def test_label_folder_and_date_together(client: TestClient, web_index: Index, folders: tuple[str, str]) -> None:
    _root, trip = folders
    result = web_index.classification("taken_space")
    label_of = dict(zip(result.paths, result.predicted))
    trip_photos = sorted(p for p in result.paths if p.startswith(trip + "/"))
    set_dates(web_index, {Path(trip_photos[0]).name: "2022-03-03T10:00:00"})
    label = label_of[trip_photos[0]]
    found = api(client, folder=trip, after="2022", set="taken_space", label=label)
    assert [r["path"] for r in found["results"]] == [trip_photos[0]]
    assert found["filters"] == {"folders": [trip], "after": "2022-01-01T00:00:00", "before": None,
                                "label": {"set": "taken_space", "label": label}, "only": None}
    other = "outdoor" if label == "indoor" else "indoor"
    assert api(client, folder=trip, after="2022", set="taken_space", label=other)["count"] == 0
    page = client.get("/", params={"q": QUERY, "folder": trip, "after": "2022", "set": "taken_space",
                                   "label": label})
    assert page.status_code == 200 and len(cards(page.text)) == 1
    assert f'<option value="{label}" selected>' in page.text


def test_bad_filters_are_400_with_a_message(client: TestClient, folders: tuple[str, str]) -> None:
    _root, trip = folders
    cases = [({"after": "yesterday"}, "after 'yesterday': is not a date"),
             ({"before": "2021-13"}, "month 13 is out of range"),
             ({"after": "2021-02-30"}, "day 30 is not in that month"),
             ({"after": "2021-07", "before": "2021-06"}, "no date is in that period"),
             ({"folder": "/nowhere/at/all"}, "is not a folder of this index"),
             ({"folder": "photos/trip"}, "is not a full path"),
             ({"folder": trip + "/../../../elsewhere"}, "is not a folder of this index"),
             ({"set": "taken_space"}, "set=NAME&label=LABEL")]
    for params, message in cases:
        response = client.get("/api/search", params={"q": QUERY, **params})
        assert response.status_code == 400, (params, response.text)
        body = response.json()
        assert body["status"] == 400 and message in body["error"], (params, body)
        similar = client.get("/api/similar/1", params=params)
        assert similar.status_code == 400 and message in similar.json()["error"]
    unknown = client.get("/api/search", params={"q": QUERY, "folder": "/nowhere"}).json()["error"]
    assert trip.rsplit("/", 1)[0] in unknown and "/api/status" in unknown  # where the folders are

    for params, message in cases[:-1]:  # a set alone is a half-made choice on the page, not an error
        page = client.get("/", params={"q": QUERY, **params})
        assert page.status_code == 400, params
        assert 'id="search-form"' in page.text and message in html.unescape(page.text)
        assert 'class="card"' not in page.text
    kept = client.get("/", params={"q": QUERY, "after": "yesterday"}).text
    assert 'type="text" name="after" id="after" value="yesterday"' in kept  # shown as typed, to fix


def test_filters_without_a_query_ask_for_one(client: TestClient, folders: tuple[str, str]) -> None:
    _root, trip = folders
    page = client.get("/", params={"folder": trip, "after": "2020"})
    assert page.status_code == 200 and 'id="hint"' in page.text and "type a query" in page.text.lower()
    assert 'class="card"' not in page.text and 'class="error"' not in page.text
    empty = client.get("/?q=&folder=&after=&before=&set=")  # an HTML form sends every field
    assert empty.status_code == 200 and 'id="hint"' not in empty.text and "Type what you are" in empty.text
    label_only = client.get("/", params={"set": "taken_space", "label": "indoor"})
    assert label_only.status_code == 200 and "photos labelled" in label_only.text  # browsing stays


def test_filters_survive_paging(client: TestClient, folders: tuple[str, str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import clipdex.web.app as app_module

    _root, trip = folders
    monkeypatch.setattr(app_module, "PAGE_SIZE", 1)
    seen = []
    url = "/?" + "&".join(f"{k}={v}" for k, v in {"q": "a+photo", "folder": trip, "before": "2100"}.items())
    while url:
        page = client.get(url).text
        seen += cards(page)
        more = re.search(r'<a id="more" href="([^"]+)"', page)
        url = html.unescape(more.group(1)) if more else ""
        if url:
            params = parse_qs(urlparse(url).query)
            assert params["folder"] == [trip] and params["before"] == ["2100"] and params["q"] == ["a photo"]
        grid = re.search(r'data-filters="([^"]*)"', page)
        assert grid and parse_qs(html.unescape(grid.group(1)))["folder"] == [trip]  # infinite scroll's
    assert len(seen) == 2 and len(set(seen)) == 2  # the trip's two photos, each once

    first = api(client, folder=trip, k=1)
    second = api(client, folder=trip, k=1, offset=1)
    assert {first["results"][0]["id"], second["results"][0]["id"]} == {int(i) for i in seen}


def test_more_like_this_keeps_the_filters(client: TestClient, folders: tuple[str, str]) -> None:
    _root, trip = folders
    outside = next(r for r in api(client)["results"] if not r["path"].startswith(trip + "/"))
    similar = api(client, f"/api/similar/{outside['id']}", folder=trip, k=10)
    assert similar["count"] == 2 and all(r["path"].startswith(trip + "/") for r in similar["results"])
    assert similar["filters"]["folders"] == [trip]
    assert api(client, f"/api/similar/{outside['id']}", k=20)["count"] == 13

    page = client.get("/", params={"q": QUERY, "folder": trip}).text
    card = re.search(r'<a class="card" href="(/photo/\d+\?[^"]+)"', page)
    assert card and parse_qs(urlparse(html.unescape(card.group(1))).query)["folder"] == [trip]
    photo = client.get(html.unescape(card.group(1))).text
    link = html.unescape(re.search(r'id="more-like-this" href="([^"]+)"', photo).group(1))
    assert parse_qs(urlparse(link).query)["folder"] == [trip] and "like=" in link
    like = client.get(link)
    assert like.status_code == 200 and len(cards(like.text)) == 2 and "likeness to" in like.text
    assert f'<option value="{trip}" title="{trip}" selected>' in like.text and 'name="like"' in like.text
    plain = client.get(f"/photo/{outside['id']}").text
    assert f'id="more-like-this" href="/?like={outside["id"]}"' in plain


def test_photo_page_shows_when_it_was_taken(client: TestClient, web_index: Index) -> None:
    set_dates(web_index, {"photo-005.jpg": "2019-07-14T18:30:05"})
    target = next(r for r in api(client)["results"] if r["name"] == "photo-005.jpg")
    assert client.get(f"/api/photos/{target['id']}").json()["taken_at"] == "2019-07-14T18:30:05"
    page = client.get(f"/photo/{target['id']}").text
    assert '<dd id="taken">2019-07-14 18:30:05</dd>' in page


def test_api_page_documents_the_filters(client: TestClient) -> None:
    page = html.unescape(client.get("/api").text)
    assert "folder" in page and "after" in page and '"filters"' in page


def test_the_pages_counts_follow_the_index(client: TestClient, web_index: Index, photos: Path) -> None:
    """The photo count is kept between requests (a full count is slow at a million photos), and
    read again once the index changes."""
    from tests.images import write_photos

    assert "13 photos in 1 folder(s)" in client.get("/").text
    write_photos(photos / "new", 2, start=40)
    web_index.add(photos)
    assert "15 photos in 1 folder(s)" in client.get("/").text
    assert "15 photos searched" in client.get("/", params={"q": QUERY}).text
