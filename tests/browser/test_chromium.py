"""A real server on a free port, driven by headless Chromium (Debian's package)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clipdex import Index
from clipdex.web import create_app
from tests.chromium import ARTIFACTS, needs_chromium, new_page
from tests.conftest import serving
from tests.images import photo

pytestmark = needs_chromium


@pytest.fixture()
def index(web_index: Index) -> Index:
    return web_index


@pytest.fixture()
def server(index: Index) -> Iterator[str]:
    with serving(create_app(index)) as url:
        yield url


def test_end_to_end_in_chromium(server: str, index: Index, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    example = tmp_path / "example.jpg"
    photo(99).save(example, "JPEG")

    with sync_playwright() as p:
        page = new_page(p)
        page.goto(server + "/")
        page.fill("#q", "dog in the snow")
        page.press("#q", "Enter")
        page.wait_for_selector("#results .card img")
        assert "q=dog+in+the+snow" in page.url  # the URL holds the query
        assert page.locator("#results .card").count() == 13
        page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(ARTIFACTS / "search.png"), full_page=True)

        page.locator("#results .card").first.click()
        page.wait_for_selector("#photo")
        assert page.locator("#path").inner_text().endswith(".jpg")
        page.screenshot(path=str(ARTIFACTS / "photo.png"))
        page.click("#more-like-this")
        page.wait_for_selector("#results .card")
        first_score = page.locator("#results .card .score").first.inner_text()
        assert first_score == "1.000"  # the photo itself comes first

        page.goto(server + "/labels/taken_space?per=4")
        card = page.locator(".card.labelled").first
        predicted = card.locator(".meta b").inner_text()
        other = "outdoor" if predicted == "indoor" else "indoor"
        card.locator(f"button.correct[data-label='{other}']").click()
        page.wait_for_selector(".card.is-corrected")
        assert "corrected: " + other in card.inner_text()
        page.screenshot(path=str(ARTIFACTS / "labels.png"), full_page=True)

        # search by example: the page's own upload form (a same-origin POST the guard lets through)
        page.goto(server + "/")
        with page.expect_navigation():
            page.set_input_files("#file", str(example))
        page.wait_for_selector("#results .card img")
        assert "q=%40upload%3A" in page.url and page.locator("#results .card").count() == 13
        assert page.locator("#q").input_value().startswith("@upload:")
        page.screenshot(path=str(ARTIFACTS / "upload.png"), full_page=True)

        # a malformed address is a page, not raw JSON
        response = page.goto(server + "/photo/abc")
        assert response is not None and response.status == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "file_id" in page.locator("#error").inner_text() and page.title().startswith("Error 404")
        page.context.browser.close()
    result = index.classification("taken_space")
    assert other in (result.truth or [])
    assert len(list((index.path / "uploads").iterdir())) == 1


def test_folder_filter_in_chromium(index: Index, photos: Path) -> None:
    """Pick a folder in the search form: only its photos come back, and the filter stays in the
    URL, on the photo page and in "more like this"."""
    from playwright.sync_api import sync_playwright

    trip = photos / "trip"
    index.add(trip)  # a folder of its own too, so the folder menu offers it
    with serving(create_app(index)) as url, sync_playwright() as p:
        page = new_page(p)
        page.goto(url + "/?q=a+photo")
        page.wait_for_selector("#results .card")
        assert page.locator("#results .card").count() == 13
        with page.expect_navigation():
            page.select_option("#folder", str(trip))  # choosing a folder searches at once
        page.wait_for_selector("#results .card img")
        assert "folder=" in page.url and "after=" not in page.url  # empty filters stay out of the URL
        assert page.locator("#results .card").count() == 2
        assert page.locator("#folder").input_value() == str(trip)
        assert page.locator("#applied").inner_text() == f"in {trip}"
        page.screenshot(path=str(ARTIFACTS / "search-folder.png"), full_page=True)

        page.locator("#results .card").first.click()
        page.wait_for_selector("#photo")
        assert page.locator("#taken").inner_text()[:2] in ("19", "20")
        page.click("#more-like-this")
        page.wait_for_selector("#results .card")
        assert page.locator("#results .card").count() == 2 and "like=" in page.url

        page.fill("#after", "2999-01-01")  # a date input: a period with no photo in it
        with page.expect_navigation():
            page.click("#search-form button[type=submit]")
        assert "after=2999-01-01" in page.url and page.locator("#results .card").count() == 0
        page.context.browser.close()
