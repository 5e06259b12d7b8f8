"""clipdex.duplicates' rule on a real index (the tiny model): no calibration on too few photos, a rule
calibrated on a collection since grown twice over not used, a cosine-only rule decoding no image, the
``exact`` flag for byte-identical members only, ``why`` each member is there, and group numbers that a
keeper mark does not change."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipdex import Index
from clipdex import duplicates as dup
from clipdex.duplicate_moves import mark_keeper
from clipdex.duplicates import DuplicateRule, find_duplicates, member_json, rule_for, stored_rule
from tests.conftest import run_cli
from tests.images import write_photos_with_copies

RULE = DuplicateRule(0.9999, 0.9, 8, source="test")  # the tiny model: altered copies > 0.9999, photos <= 0.998


@pytest.fixture()
def index_dir(tmp_path: Path, model_args: list[str]) -> str:
    """Six generated photos; an exact copy of photo 0, a half-size PNG of photo 1 and a recompressed JPEG
    of photo 2."""
    photos = write_photos_with_copies(tmp_path / "photos", 6)
    index = str(tmp_path / "idx")
    result = run_cli("index", str(photos), "--index", index, *model_args)
    assert result.exit_code == 0, result.output
    return index


def test_too_few_photos_are_not_calibrated_and_nothing_is_stored(index_dir: str) -> None:
    with Index.open(index_dir) as index:
        rule = dup.calibrate(index)
        assert rule.source == "default" and rule.precision is None
        assert f"at least {dup.MIN_CALIBRATION_PHOTOS}" in rule.note and "9 photos to sample" in rule.note
        assert stored_rule(index) is None
        assert index._encoder is None  # refused before the model was loaded


def test_a_rule_calibrated_on_a_much_smaller_collection_is_not_used(index_dir: str) -> None:
    with Index.open(index_dir) as index:
        record = index.model_record()
        for size, used in ((4, False), (5, True), (0, True)):  # 9 photos now: 4 x 2 < 9 <= 5 x 2; 0: unknown
            calibrated = DuplicateRule(0.97, 0.8, 6, source="calibrated", precision=1.0, recall=0.9, photos_total=size,
                                       calibrated_at=1.7e9)
            with index.lock:
                index.store.save_duplicate_rule(record.id, calibrated.to_json())
            rule, note = rule_for(index)
            if used:
                assert rule == calibrated and "calibrated on your photos" in note
            else:
                assert rule == dup.DEFAULT_RULE and "NOT USING" in note and "grown to 9" in note
                assert "--calibrate" in note
        over, note = rule_for(index, threshold=0.99)
        assert over.source == "--threshold" and over.precision is None and "calibrated" in note
        with pytest.raises(dup.DuplicatesError, match="--threshold"):
            rule_for(index, threshold=0.1)


def test_members_say_why_exact_is_byte_identical_only_and_a_cosine_rule_decodes_nothing(index_dir: str) -> None:
    with Index.open(index_dir) as index:
        cosine_only = find_duplicates(index, DuplicateRule(0.9999, 0.9999, None, burst_seconds=None))
        assert cosine_only.phashes_computed == 0 and not cosine_only.rule.uses_phash
        report = find_duplicates(index, RULE)
    groups = {g.keeper.path.rsplit("/", 1)[-1]: g for g in report.groups}
    assert set(groups) == {"photo-000.jpg", "photo-001.jpg", "photo-002.jpg"}
    same = groups["photo-000.jpg"]
    assert [m.exact for m in same.members] == [True, True] and same.members[1].why == ("exact",)
    for name in ("photo-001.jpg", "photo-002.jpg"):  # altered copies: no member is byte-identical
        g = groups[name]
        assert not any(m.exact for m in g.members)
        assert g.keeper.why == () and g.members[1].why and set(g.members[1].why) <= {"cosine", "phash", "time"}
    assert member_json(same.members[1])["why"] == ["exact"]


def test_group_numbers_stay_when_a_keeper_is_marked(index_dir: str) -> None:
    with Index.open(index_dir) as index:
        before = {g.id: sorted(m.path for m in g.members) for g in find_duplicates(index, RULE).groups}
        group = next(g for g in find_duplicates(index, RULE).groups if g.keeper.path.endswith("photo-001.jpg"))
        mark_keeper(index, group.members[1].file_id)
        after_report = find_duplicates(index, RULE)
    after = {g.id: sorted(m.path for m in g.members) for g in after_report.groups}
    assert after == before
    marked = next(g for g in after_report.groups if g.id == group.id)
    assert marked.keeper.path.endswith("small-1.png") and marked.keeper.marked
    assert marked.members[1].why  # still says why the original is a copy (of the rule's own keeper)
