"""The duplicates page in headless Chromium: first how far the background search got, then (the page
polls and reloads itself) groups side by side, keeper first; marking a copy to keep makes it the
group's keeper on the page and in the index, and the page drawn again shows the mark."""

from __future__ import annotations

import shutil
from pathlib import Path

from clipdex import Index
from clipdex.duplicates import DuplicateRule, find_duplicates
from clipdex.web import create_app
from tests.chromium import ARTIFACTS, needs_chromium, new_page
from tests.conftest import serving
from tests.images import photo, write_photos

pytestmark = needs_chromium


def test_mark_a_keeper_in_chromium(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    photos = tmp_path / "photos"
    write_photos(photos, 5)
    shutil.copy(photos / "photo-000.jpg", photos / "copy-of-0.jpg")
    photo(1).resize((320, 240)).save(photos / "small-1.png")
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        with index.lock:  # the rule the page uses (the web app never calibrates: it never encodes)
            index.store.save_duplicate_rule(index.model_record().id,
                                            DuplicateRule(0.9999, 0.9, 8, source="calibrated").to_json())
        with serving(create_app(index)) as url, sync_playwright() as p:
            page = new_page(p)
            page.goto(url + "/duplicates")
            assert page.locator("#dup-status, .dup-group").count() >= 1  # finding, or found already
            page.wait_for_selector(".dup-group")  # the page reloads itself once they are found
            assert page.locator(".dup-group").count() == 2
            page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
            small = page.locator(".card.dup", has_text="small-1.png")
            group = page.locator(".dup-group", has=small)
            assert small.locator(".role").inner_text().lower() == "extra"
            keeper = group.locator(".card.dup.is-keeper")
            assert keeper.count() == 1 and "photo-001.jpg" in keeper.inner_text()
            small.locator("button.keep").click()
            page.wait_for_selector(".card.dup.is-marked")
            assert small.locator(".role").inner_text().lower() == "keep"
            assert group.locator(".card.dup.is-keeper").count() == 1  # the suggested keeper is an extra now
            assert "extra" in group.locator(".card.dup", has_text="photo-001.jpg").inner_text().lower()
            assert small.locator("button.keep").inner_text() == "unmark"
            page.screenshot(path=str(ARTIFACTS / "duplicates.png"), full_page=True)
            page.reload()  # drawn again by the server (no new search): the mark shows
            small = page.locator(".card.dup", has_text="small-1.png")
            assert "is-keeper" in (small.get_attribute("class") or "")
            assert small.locator(".role").inner_text().lower() == "keep"
            small.locator("a").click()  # a member links to its photo page
            page.wait_for_selector("#photo")
            page.context.browser.close()
        report = find_duplicates(index)
    kept = next(g for g in report.groups if any(m.path.endswith("small-1.png") for m in g.members))
    assert kept.keeper.path.endswith("small-1.png") and kept.keeper.marked
    assert [m.path.rsplit("/", 1)[-1] for m in kept.extras] == ["photo-001.jpg"]
