"""clipdex.duplicates without an index: the rule, pHash distances, candidates from a vector index's
batch neighbours (never an N x N product), components split into cliques (no chaining), the keeper
rule, and calibration's choice of rule on measured copies and look-alikes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from clipdex import duplicates as dup
from clipdex.duplicates import CalibrationData, DuplicateRule
from clipdex.search.exact import ExactIndex
from clipdex.store.catalog import FileRecord
from tests.images import photo


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_the_rule_accepts_by_cosine_or_by_a_confirmed_band() -> None:
    rule = DuplicateRule(copy_cosine=0.98, band_cosine=0.9, max_phash=8, burst_seconds=2.0)
    assert rule.accepts(0.99, None, None)
    assert rule.accepts(0.95, 8, None) and not rule.accepts(0.95, 9, None)
    assert rule.accepts(0.95, None, 1.0) and not rule.accepts(0.95, None, 3.0)
    assert not rule.accepts(0.89, 0, 0.0)  # below the band nothing confirms
    assert rule.lowest_cosine == 0.9
    cosine_only = DuplicateRule(0.98, 0.9, None, burst_seconds=None)
    assert cosine_only.lowest_cosine == 0.98 and not cosine_only.uses_phash
    assert DuplicateRule.from_json(rule.to_json()) == rule
    assert "cosine >= 0.9800, or cosine >= 0.9000 and (pHash distance <= 8" in rule.describe()


def test_phash_distance_counts_differing_bits() -> None:
    assert dup.phash_distance("ffffffffffffffff", "fffffffffffffff0") == 4
    assert dup.phash_distance(None, "00") is None
    original = photo(3)
    smaller = original.resize((320, 240))
    other = photo(4)
    same = dup.phash_distance(dup.phash_of_image(original), dup.phash_of_image(smaller))
    different = dup.phash_distance(dup.phash_of_image(original), dup.phash_of_image(other))
    assert same is not None and different is not None and same <= 4 < 16 <= different


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def test_the_signature_survives_bars_a_mirror_and_a_caption_but_not_another_photo() -> None:
    original = photo(5)
    w, h = original.size
    letterbox = ImageOps.pad(original, (w, int(h * 1.25)), color=(0, 0, 0))
    pillarbox = ImageOps.pad(original, (int(w * 1.3), h), color=(255, 255, 255))
    captioned = original.copy()
    draw = ImageDraw.Draw(captioned)
    draw.rectangle((0, int(h * 0.85), w, h), fill=(0, 0, 0))
    draw.text((int(w * 0.05), int(h * 0.88)), "copy for grandma", fill=(255, 255, 255))
    base = dup.phash_of_image(_jpeg(original))
    assert len(base) == dup.SIGNATURE_DIGITS
    for copy in (letterbox, pillarbox, ImageOps.mirror(original), captioned, ImageOps.grayscale(original)):
        distance = dup.phash_distance(base, dup.phash_of_image(_jpeg(copy)))
        assert distance is not None and distance <= 4, copy.size
    for seed in (6, 7, 8):
        other = dup.phash_distance(base, dup.phash_of_image(_jpeg(photo(seed))))
        assert other is not None and other >= 16
    # bars are trimmed to the photo; a photo without bars is hashed whole
    trimmed = dup.trim_borders(_jpeg(letterbox))
    assert abs(trimmed.height - h) <= 2 and trimmed.width == w
    assert dup.trim_borders(original).size == original.size
    # the matrix form agrees with the pairwise one
    sigs = [base, dup.phash_of_image(ImageOps.mirror(original)), dup.phash_of_image(photo(6)), None]
    bits, known = dup.signature_bits(sigs)
    matrix = dup.signature_distances(bits)
    assert known.tolist() == [True, True, True, False]
    assert all(matrix[i, j] == dup.phash_distance(sigs[i], sigs[j]) for i in range(3) for j in range(3))


def _planted(n: int, groups: int, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """``n`` random unit vectors, the first ``groups`` of which have two near copies each appended."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.normal(size=(n, dim)))
    copies, planted = [], []
    for g in range(groups):
        for _ in range(2):
            copies.append(_unit(base[g] + 0.02 * rng.normal(size=dim)))
        planted.append([g, n + 2 * g, n + 2 * g + 1])
    return np.vstack([base, np.array(copies)]), planted


def test_candidates_come_from_batches_of_neighbours() -> None:
    vectors, planted = _planted(500, 20)
    index = ExactIndex(vectors, vectors.shape[1])
    batches: list[int] = []

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        batches.append(len(queries))
        return index.neighbours(queries, k)

    rows = np.arange(len(vectors), dtype=np.int64)
    found = dup.candidate_pairs(search, lambda r: vectors[r], rows, k=5, floor=0.95)
    assert max(batches) <= dup.QUERY_CHUNK and sum(batches) == len(vectors)  # every photo asked once, in batches
    pairs = {tuple(p) for p in found.pairs.tolist()}
    expected = {(a, b) for g in planted for a in g for b in g if a < b}
    assert pairs == expected  # random vectors in 32-d never reach 0.95
    assert np.all(found.cosines >= 0.95)
    assert np.allclose(found.cosines, [vectors[a] @ vectors[b] for a, b in found.pairs.tolist()], atol=1e-5)


def test_components_and_cliques_never_chain() -> None:
    parts = dup.components(7, np.array([[0, 1], [1, 2], [2, 3], [5, 6]]))
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [5, 6]]
    # a chain A~B~C~D (each next to the next, A far from D): never one group
    accepted = np.eye(4, dtype=bool)
    for a, b in ((0, 1), (1, 2), (2, 3)):
        accepted[a, b] = accepted[b, a] = True
    strength = np.where(accepted, 0.97, 0.5)
    groups = dup.split_cliques(accepted, strength)
    assert all(len(g) <= 2 for g in groups) and sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    # a true group (all pairs) stays whole
    assert dup.split_cliques(np.ones((3, 3), dtype=bool), np.ones((3, 3))) == [[0, 1, 2]]


def test_groups_around_a_keeper_take_copies_of_the_keeper_only() -> None:
    # 0 is the original; 1 (mirror) and 2 (letterbox) are copies of it, not of each other by the rule;
    # 3 is a copy of 2 only (a chain): it must not join a group kept as 0
    accepted = np.eye(4, dtype=bool)
    for a, b in ((0, 1), (0, 2), (2, 3)):
        accepted[a, b] = accepted[b, a] = True
    rank = np.array([0, 1, 2, 3])
    assert dup.split_stars(accepted, rank) == [[0, 1, 2], [3]]
    assert all(len(g) <= 2 for g in dup.split_cliques(accepted, np.where(accepted, 0.99, 0.5)))
    # the keeper outranks its members: a better-ranked copy of the seed's keeper takes over
    accepted = np.eye(5, dtype=bool)
    for a, b in ((0, 1), (0, 3), (0, 4), (1, 2)):
        accepted[a, b] = accepted[b, a] = True
    rank = np.array([3, 1, 0, 4, 5])
    groups = dup.split_stars(accepted, rank)
    assert groups == [[1, 2], [0, 3, 4]]
    for g in groups:
        keeper = min(g, key=lambda i: rank[i])
        assert all(accepted[keeper, i] for i in g)


def _file(i: int, path: str, w: int, h: int, size: int, taken: str | None, mtime_ns: int = 0,
          source: str = "exif") -> FileRecord:
    return FileRecord(id=i, path=path, size=size, mtime_ns=mtime_ns, content_hash=f"h{i}", width=w, height=h,
                      status="ok", reason=None, taken_at=taken, taken_source=source if taken else None)


def test_the_keeper_rule_keeps_the_original_over_an_edited_or_resaved_copy() -> None:
    files = [_file(1, "/p/small-old.jpg", 320, 240, 900_000, "2019-01-01T00:00:00", 10),
             _file(2, "/p/resaved.png", 640, 480, 730_000, None, 30),  # a PNG re-save: no EXIF, the largest file
             _file(3, "/p/brightened.jpg", 640, 480, 300_000, "2020-01-01T00:00:00", 40),  # EXIF kept, newer file
             _file(4, "/p/original.jpg", 640, 480, 200_000, "2020-01-01T00:00:00", 20),
             _file(5, "/p/a/original.jpg", 640, 480, 200_000, "2020-01-01T00:00:00", 20)]
    order = sorted(files, key=lambda f: dup._keeper_key(f, set()))
    # pixels, then EXIF time (a photo with one first), then the file's time, then size, then the shorter path
    assert [f.id for f in order] == [4, 5, 3, 2, 1]
    assert "oldest" in dup.KEEPER_RULE and dup.KEEPER_RULE.index("oldest") < dup.KEEPER_RULE.index("largest")
    marked = sorted(files, key=lambda f: dup._keeper_key(f, {"/p/small-old.jpg"}))
    assert marked[0].id == 1  # a photo marked to keep comes first


def test_the_matrix_rule_agrees_with_accepts_on_a_grid() -> None:
    """_accepted (matrices, what find_duplicates runs) and DuplicateRule.accepts (one pair) are one rule."""
    rng = np.random.default_rng(3)
    m = 40
    base = _unit(rng.normal(size=(1, 16)))
    vectors = _unit(base + rng.normal(size=(m, 16)) * rng.uniform(0.05, 1.2, size=(m, 1)))
    sigs = [f"{int(x):016x}" * len(dup.HASH_KINDS) for x in rng.integers(0, 1 << 62, m)]
    sigs = [s if i % 3 else sigs[0][:-2] + f"{i:02x}" for i, s in enumerate(sigs)]  # a third near the first
    sigs[5] = None  # type: ignore[call-overload]
    times = [f"2024-05-01T10:00:{i % 7:02d}" if i % 4 else None for i in range(m)]
    files = {i: _file(i, f"/p/{i}.jpg", 10, 10, 1, times[i]) for i in range(m)}
    photos = dup._Photos(rows=np.arange(m), by_row={i: [i] for i in range(m)}, files=files)
    phashes: dict[str, str | None] = {f"h{i}": sigs[i] for i in range(m)}
    rules = [DuplicateRule(0.95, 0.6, 6), DuplicateRule(0.9, 0.5, None, burst_seconds=2.0),
             DuplicateRule(0.97, 0.55, 6, steps=((0.55, 2), (0.7, 6)), burst_seconds=None),
             DuplicateRule(0.8, 0.8, 3)]
    for rule in rules:
        accepted, cos = dup._accepted(list(range(m)), lambda r: vectors[r], photos, phashes, rule)
        for i in range(m):
            for j in range(m):
                if i == j:
                    continue
                a, b = files[i], files[j]
                t1, t2 = dup._exif_seconds(a), dup._exif_seconds(b)
                apart = None if np.isnan(t1) or np.isnan(t2) else abs(t1 - t2)
                one = rule.accepts(float(cos[i, j]), dup.phash_distance(sigs[i], sigs[j]), apart)
                assert bool(accepted[i, j]) == one, (rule, i, j)
        assert accepted.any() and not accepted.all()


def test_two_phash_steps_few_bits_low_more_bits_higher() -> None:
    """A look-alike 5 bits away at cosine 0.75 stops a one-step rule at 2 bits (or a band above 0.75);
    two steps take both the low copies with few bits and the higher ones with more."""
    copies = [(0.72, 1)] * 40 + [(0.85, 6)] * 40 + [(0.995, 0)] * 20
    looks = [(0.75, 5)] + [(0.6, 30)] * 200 + [(0.7, 28)] * 100 + [(0.95, 30)] * 5
    rule = dup.choose_rule(_data(copies, looks))
    assert len(rule.phash_steps) == 2, rule
    (b1, h1), (b2, h2) = rule.phash_steps
    assert b1 <= 0.72 and h1 >= 1 and 0.75 < b2 <= 0.85 and h2 >= 6
    assert all(rule.accepts(c, p, None) for c, p in copies)
    assert not any(rule.accepts(c, p, None) for c, p in looks)
    text = rule.describe()
    assert f"pHash distance <= {h1} from cosine {b1:.4f}" in text and f"<= {h2} from cosine {b2:.4f}" in text
    assert DuplicateRule.from_json(rule.to_json()) == rule
    # --max-phash overrides every step's bits (one step from the lowest band); the estimates no longer hold
    over = rule.overridden(max_phash=3)
    assert over.phash_steps == ((rule.band_cosine, 3),) and over.source == "--max-phash" and over.precision is None


def test_a_larger_collection_never_gets_a_lower_copy_cosine() -> None:
    """The look-alikes' cosine tail is scaled to the pairs a search of the whole collection tests: the
    closest of 3,000 sampled pairs is not the closest of a million photos' pairs."""
    rng = np.random.default_rng(2)
    looks = [(float(c), 30) for c in np.clip(rng.normal(0.86, 0.01, 3000), 0, 0.999)]
    copies = [(0.99, 0)] * 50
    seen = max(c for c, _ in looks)
    cosines = []
    for total in (300, 10_000, 1_000_000):
        rule = dup.choose_rule(_data(copies, looks, photos_total=total))
        cosines.append(rule.copy_cosine)
        assert rule.copy_cosine >= seen + dup.COSINE_MARGIN - 1e-4
        assert rule.expected_false_cosine is not None
        assert rule.expected_false_cosine <= dup.MAX_EXPECTED_FALSE + 1e-3 or rule.copy_cosine == 0.9999  # said
    assert cosines[0] <= cosines[1] < cosines[2]
    copy, expected = dup.cosine_tail(np.array([c for c, _ in looks]), 1_000_000 * dup.DEFAULT_K)
    assert copy > seen and expected == pytest.approx(dup.MAX_EXPECTED_FALSE, rel=0.05)


def test_overrides_clear_what_calibration_measured_and_refuse_a_silly_threshold() -> None:
    rule = DuplicateRule(0.96, 0.8, 6, source="calibrated", precision=1.0, recall=0.9, expected_false=0.05,
                         by_alteration={"crop": 0.8}, photos_total=500)
    for over in (rule.overridden(no_phash=True), rule.overridden(max_phash=4), rule.overridden(threshold=0.97)):
        assert over.precision is None and over.recall is None and over.expected_false is None
        assert not over.by_alteration and over.source != "calibrated" and over.estimates() == ""
    assert rule.overridden(no_phash=True).source == "--no-phash" and not rule.overridden(no_phash=True).uses_phash
    assert rule.overridden() is rule
    with pytest.raises(dup.DuplicatesError, match="--threshold 0"):
        rule.overridden(threshold=0.0)
    with pytest.raises(dup.DuplicatesError):
        rule.overridden(threshold=dup.MIN_BAND_COSINE - 0.01)
    assert rule.overridden(threshold=dup.MIN_BAND_COSINE).copy_cosine == dup.MIN_BAND_COSINE


def test_why_a_pair_is_a_copy() -> None:
    rule = DuplicateRule(0.98, 0.9, 6, burst_seconds=2.0)
    assert rule.why(0.99, 3, 1.0) == ("cosine", "phash", "time")
    assert rule.why(0.95, 9, 1.0) == ("time",)
    assert rule.why(0.95, 4, None) == ("phash",)
    assert rule.why(0.85, 0, 0.0) == ()
    assert not DuplicateRule(0.98, 0.98, 6).uses_phash and DuplicateRule(0.98, 0.9, 6).uses_phash


def _data(copies: list[tuple[float, int]], looks: list[tuple[float, int]], photos_total: int = 100) -> CalibrationData:
    return CalibrationData(
        copy_cosine=np.array([c for c, _ in copies], np.float32), copy_phash=np.array([p for _, p in copies]),
        copy_kind=["resize"] * len(copies), copy_photo=np.arange(len(copies)),
        near_cosine=np.array([c for c, _ in looks], np.float32), near_phash=np.array([p for _, p in looks]),
        near_photo=np.arange(len(looks)), already_copies=0, photos_total=photos_total)


def test_calibration_separates_copies_from_look_alikes() -> None:
    rng = np.random.default_rng(0)
    copies = [(float(c), int(p)) for c, p in zip(rng.uniform(0.93, 0.999, 200), rng.integers(0, 6, 200))]
    # look-alikes' pHash distances as measured (~32 of 64 bits, a few bits of spread)
    looks = [(float(c), int(p)) for c, p in zip(rng.uniform(0.80, 0.97, 400), rng.normal(32, 4, 400).round())]
    data = _data(copies, looks)
    rule = dup.choose_rule(data)
    assert rule.copy_cosine > 0.97  # above every look-alike
    assert rule.band_cosine <= 0.94 and rule.max_phash is not None and rule.max_phash >= 5
    assert not any(rule.accepts(c, p, None) for c, p in looks)
    precision, recall, per_kind = dup.evaluate_rule(data)
    assert precision == 1.0 and recall >= 0.95 and set(per_kind) == {"resize"}


def test_calibration_keeps_phash_tight_when_look_alikes_come_close() -> None:
    copies = [(0.95, 6)] * 50 + [(0.99, 0)] * 50
    looks = [(0.96, 8)] + [(0.9, 30)] * 300  # one look-alike 8 bits away, inside the band
    rule = dup.choose_rule(_data(copies, looks))
    assert not rule.accepts(0.96, 8, None)
    assert rule.copy_cosine > 0.96


def test_the_phash_tail_extrapolates_below_what_was_seen() -> None:
    rng = np.random.default_rng(1)
    distances = np.clip(rng.normal(30, 5, 3000).round(), 0, 64).astype(np.int64)
    tail = dup.phash_tail(distances)
    shares = [tail(h) for h in range(0, 30, 2)]
    assert all(a <= b for a, b in zip(shares, shares[1:]))  # more bits allowed, more pass
    assert 0 < tail(int(distances.min()) - 4) < 1 / 3000  # unseen, but not taken as impossible
    assert dup.phash_tail(np.zeros(0, np.int64))(10) == 0.0


def test_phash_file_answers_none_for_a_file_gone_or_damaged(tmp_path: Path) -> None:
    """open_image_file turns an OSError (gone, unreadable) into ImageDecodeError, which phash_file answers
    with None: the pair is judged without a signature, the run goes on."""
    folder = tmp_path
    (folder / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert dup.phash_file(str(folder / "gone.jpg")) is None
    assert dup.phash_file(str(folder / "damaged.jpg")) is None
    photo(3).save(folder / "fine.jpg")
    fine = dup.phash_file(str(folder / "fine.jpg"))
    assert fine is not None and len(fine) == dup.SIGNATURE_DIGITS
