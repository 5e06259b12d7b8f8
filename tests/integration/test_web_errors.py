"""Errors: an HTML page that says what to do on every page route, one JSON shape on every /api route."""

from __future__ import annotations

import html
import re

import pytest
from fastapi.testclient import TestClient

from clipdex import Index
from clipdex.web import create_app

PAGE_CASES = [
    ("GET", "/photo/abc", 404, "'file_id'"),
    ("GET", "/photo/-1", 404, "'file_id'"),
    ("GET", "/photo/99999999999999999999999", 404, "'file_id'"),
    ("GET", "/photo/9223372036854775807", 404, "no indexed photo"),
    ("GET", "/thumb/abc", 404, "'file_id'"),
    ("GET", "/thumb/99999999999999999999", 404, "'file_id'"),
    ("GET", "/thumb/1?size=9", 400, "'size'"),
    ("GET", "/labels/taken_space?per=abc", 400, "'per'"),
    ("GET", "/labels/taken_space?sort=sideways", 400, "'sort'"),
    ("GET", "/labels/taken_space?seed=-5", 400, "'seed'"),
    ("GET", "/?page=0", 400, "'page'"),
    ("GET", "/?like=abc", 400, "'like'"),
    ("GET", "/?like=424242", 404, "no indexed photo"),
    ("GET", "/no/such/page", 404, "no page"),
    ("GET", "/static/nothing.css", 404, "no page"),
    ("POST", "/photo/1", 405, "use GET"),
    ("DELETE", "/", 405, "use GET"),
    ("POST", "/upload", 400, "'file'"),
    ("GET", "/upload", 405, "use POST"),
]
API_CASES = [
    ("GET", "/api/photos/abc", 404, "'file_id'"),
    ("GET", "/api/photos/424242", 404, "search again"),
    ("GET", "/api/similar/abc", 404, "'file_id'"),
    ("GET", "/api/similar/424242", 404, "no indexed photo"),
    ("GET", "/api/similar/99999999999999999999", 404, "'file_id'"),
    ("GET", "/api/search", 400, "'q'"),
    ("GET", "/api/search?q=dog&k=abc", 400, "'k'"),
    ("GET", "/api/search?q=%22unclosed", 400, "cannot understand query"),
    ("GET", "/api/labels/nope", 404, "clipdex classify"),
    ("GET", "/api/nothing", 404, "no page"),
    ("GET", "/api/docs", 404, "no page"),  # Swagger UI needs a CDN: not served
    ("DELETE", "/api/status", 405, "use GET"),
    ("GET", "/api/labels/taken_space/corrections", 405, "use POST"),
]


@pytest.fixture()
def client(web_index: Index) -> TestClient:
    return TestClient(create_app(web_index), base_url="http://127.0.0.1:8000", raise_server_exceptions=False)


def test_page_errors_are_readable_html(client: TestClient) -> None:
    for method, path, status, says in PAGE_CASES:
        response = client.request(method, path)
        assert response.status_code == status, path
        assert response.headers["content-type"].startswith("text/html"), path
        found = re.search(r'id="error">(.*?)</p>', response.text, re.S)
        assert found is not None, path
        message = html.unescape(found.group(1))
        assert says in message and "detail" not in message and "{" not in message, (path, message)


def test_api_errors_have_one_json_shape(client: TestClient) -> None:
    for method, path, status, says in API_CASES:
        response = client.request(method, path)
        assert response.status_code == status, path
        assert response.headers["content-type"] == "application/json", path
        body = response.json()
        assert set(body) == {"error", "status"} and body["status"] == status and says in body["error"], path


def test_bad_json_bodies_say_what_is_wrong(client: TestClient) -> None:
    url = "/api/labels/taken_space/corrections"
    broken = client.post(url, content=b"{nope", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    wrong = client.post(url, json={"file_id": "x", "label": ""}).json()
    assert wrong["status"] == 400 and "'file_id'" in wrong["error"] and "'label'" in wrong["error"]
    unknown = client.post(url, json={"file_id": 424242, "label": "indoor"})
    assert unknown.status_code == 404 and set(unknown.json()) == {"error", "status"}


def test_an_unexpected_failure_is_a_500_in_the_same_shapes(client: TestClient, web_index: Index,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    access = client.app.state.access  # type: ignore[attr-defined]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("/secret/path/inside")

    monkeypatch.setattr(access, "search", broken)
    api = client.get("/api/search", params={"q": "dog"})
    assert api.status_code == 500 and api.json()["status"] == 500 and "/secret" not in api.text
    page = client.get("/", params={"q": "dog"})
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    assert "RuntimeError" in page.text and "/secret" not in page.text


def test_search_errors_stay_on_the_search_page(client: TestClient) -> None:
    page = client.get("/", params={"q": '"unclosed'})
    assert page.status_code == 400 and 'id="q"' in page.text and "cannot understand query" in page.text
