"""A moment found by example plays in the real browser (Debian's Chromium, H.264 in mp4) from its
second, beside a timeline of the video's other moments; a video it cannot play says so."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipdex import Index
from clipdex.indexer import IndexSettings
from clipdex.video import format_time
from clipdex.web import create_app
from tests.chromium import ARTIFACTS, needs_chromium, new_page
from tests.conftest import serving
from tests.images import write_photos
from tests.videos import slideshow_images, write_corrupt, write_video

pytestmark = needs_chromium

SECONDS_EACH = 3.0
INTERVAL = 1.0
PICTURES = 5
LOADED = "v => v.readyState >= 1"  # HAVE_METADATA: the browser read the file's header and length


@pytest.fixture()
def index(tmp_path: Path, model_kwargs: dict[str, str]) -> Iterator[Index]:
    """Photos and an H.264 slideshow of five other pictures, 3 s each."""
    folder = tmp_path / "media"
    write_photos(folder, 3, start=40)
    write_video(folder / "clips" / "party.mp4", slideshow_images(PICTURES, 192, 144), seconds_each=SECONDS_EACH)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        report = idx.add(folder, settings=IndexSettings(video_interval=INTERVAL))
        assert report.videos == 1 and not report.failed
        yield idx


@pytest.fixture()
def server(index: Index) -> Iterator[str]:
    with serving(create_app(index)) as url:
        yield url


def test_a_moment_found_by_example_plays_from_its_second(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    example = tmp_path / "example.png"
    slideshow_images(PICTURES, 192, 144)[3].save(example)  # shown from 0:00:09 to 0:00:12
    with sync_playwright() as p:
        page = new_page(p)
        page.goto(server + "/")
        with page.expect_navigation():
            page.set_input_files("#file", str(example))  # search by example: the page's upload form
        page.wait_for_selector("#results .card img")
        first = page.locator("#results .card").first
        assert "moment" in (first.get_attribute("class") or "")
        t = float(first.get_attribute("data-t") or "nan")
        assert 3 * SECONDS_EACH - INTERVAL <= t < 4 * SECONDS_EACH + INTERVAL
        assert first.locator(".name").inner_text().startswith("party.mp4 @ 0:00:")
        page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(ARTIFACTS / "video-search.png"), full_page=True)

        first.click()
        video = page.wait_for_selector("#video")
        assert video is not None
        page.wait_for_function(f"() => ({LOADED})(document.getElementById('video'))", timeout=15_000)
        page.wait_for_function("() => !document.getElementById('video').seeking")
        assert abs(page.eval_on_selector("#video", "v => v.currentTime") - t) <= INTERVAL
        assert page.eval_on_selector("#video", "v => v.error") is None
        assert page.locator("#unplayable").is_hidden() and page.locator("#still").is_hidden()
        marks = page.locator("#timeline .mark")
        assert marks.count() >= PICTURES and page.locator("#timeline .mark.current").count() == 1
        page.screenshot(path=str(ARTIFACTS / "video-moment.png"), full_page=True)

        # a click on another mark seeks there, in place (the address follows)
        other = page.locator("#timeline .mark:not(.current)").first
        other_t, other_id = float(other.get_attribute("data-t") or "nan"), other.get_attribute("data-id")
        other.click()
        page.wait_for_function(f"() => Math.abs(document.getElementById('video').currentTime - {other_t}) < 0.5")
        assert f"/photo/{other_id}?q=" in page.url
        assert page.locator("#timeline .mark.current").get_attribute("data-id") == other_id
        assert page.locator("#moment").inner_text() == f"party.mp4 @ {format_time(other_t)}"
        page.context.browser.close()


def test_a_video_changed_since_indexing_shows_its_frame_and_timeline(server: str, index: Index) -> None:
    """The file is damaged after indexing: it is not served (not the bytes that were indexed), and
    the page says so and what to do, with the frame and the timeline from the index."""
    from playwright.sync_api import sync_playwright

    video = next(r for r in index.store.files_under(index.store.roots()[0]).values() if r.path.endswith(".mp4"))
    frame = index.store.video_frames(video.id)[1]
    with urllib.request.urlopen(f"{server}/thumb/{frame.id}?size=1024") as response:  # made while readable
        assert response.status == 200
    write_corrupt(Path(video.path), size=video.size)
    with sync_playwright() as p:
        page = new_page(p)
        page.goto(f"{server}/photo/{frame.id}")
        page.wait_for_selector("#missing", state="visible", timeout=15_000)
        assert "changed since it was indexed" in page.locator("#missing").inner_text()
        assert page.locator("#video").count() == 0 and page.locator("#still").is_visible()
        assert page.locator("#timeline .mark").count() >= PICTURES
        # the frame, from the thumbnail cache (the file itself no longer decodes)
        page.wait_for_function("() => document.getElementById('still').naturalWidth === 192")  # not the placeholder
        page.screenshot(path=str(ARTIFACTS / "video-unplayable.png"), full_page=True)
        page.context.browser.close()
