"""The label page's learning panel in headless Chromium: correct a photo the set is least sure of,
learn from the corrections, see the cross-validated gain."""

from __future__ import annotations

from pathlib import Path

from clipdex import Index
from clipdex.labels import make_label_set
from clipdex.learn import least_sure
from clipdex.web import create_app
from tests.chromium import ARTIFACTS, needs_chromium, new_page
from tests.conftest import serving
from tests.integration.test_learn import GROUPS, write_groups

pytestmark = needs_chromium


def test_learn_from_corrections_in_chromium(tmp_path: Path, model_kwargs: dict[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    write_groups(tmp_path / "groups")
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(tmp_path / "groups")
        index.classify([make_label_set("scene", list(GROUPS), ["a photo of a {}"])])
        result = index.classification("scene")
        group_of = {fid: Path(p).name.split("-")[0] for fid, p in zip(result.file_ids, result.paths)}
        # the group one correction short: one that has a photo in the least-sure list
        unsure = least_sure(index, "scene", 12)
        short = group_of[unsure[0].file_id]
        for group in GROUPS:
            mine = [f for f, g in group_of.items() if g == group and f not in {u.file_id for u in unsure[:1]}]
            for fid in mine[:1 if group == short else 2]:
                index.correct("scene", fid, group)
        with serving(create_app(index)) as url, sync_playwright() as p:
            page = new_page(p)
            page.goto(url + "/labels/scene?per=2")
            page.wait_for_selector("#learning:not([hidden]) #learn-next .card img")
            button = page.locator("#learn-button")
            assert button.is_disabled() and button.inner_text() == "Learn from 5 corrections"
            assert f"{short} (1)" in page.locator("#learn-status").inner_text()
            assert page.locator("#learn-next .card").count() == 12
            first = page.locator(f"#learn-next .card[data-id='{unsure[0].file_id}']")
            first.locator(f"button.correct[data-label='{short}']").click()  # corrected in place (app.js)
            page.wait_for_selector("#learn-button:not([disabled])")
            assert button.inner_text() == "Learn from 6 corrections"
            assert "corrected: " + short in first.inner_text()
            button.click()
            # 2 corrections a label: no nested estimate, so the score shown is said to be the selection's
            page.wait_for_selector("#learn-scores:not([hidden]) tr[data-row='selection']")
            assert page.locator("#learn-scores tr[data-row='combined']").count() == 0
            summary = page.locator("#learn-summary").inner_text()
            assert "Selection score on 6 corrected photos" in summary and "not an estimate" in summary
            assert "(zero-shot) →" in summary
            assert page.locator("#learned-link").inner_text() == "see scene-learned"
            assert page.locator("#learn-next .card").count() == 12
            page.screenshot(path=str(ARTIFACTS / "learning.png"), full_page=True)
            page.goto(url + "/labels/scene-learned?per=2")
            page.wait_for_selector("#learn-scores:not([hidden]) tr[data-row='zero_shot']")
            assert page.locator("#learned-link").inner_text() == "back to zero-shot scene"
            page.context.browser.close()
        stored = index.classification("scene-learned").label_set.origin
        assert stored is not None and stored["counts"][short] == 2
