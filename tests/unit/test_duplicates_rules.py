"""clipdex.duplicates without an index: the rule, pHash distances, candidates from a vector index's
batch neighbours (never an N x N product), components split into cliques (no chaining), the keeper
rule, and calibration's choice of rule on measured copies and look-alikes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from clipdex import duplicate_moves as moves
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


def _file(i: int, path: str, w: int, h: int, size: int, taken: str | None) -> FileRecord:
    return FileRecord(id=i, path=path, size=size, mtime_ns=0, content_hash=f"h{i}", width=w, height=h,
                      status="ok", reason=None, taken_at=taken)


def test_the_keeper_rule() -> None:
    files = [_file(1, "/p/small.jpg", 320, 240, 900_000, "2020-01-01T00:00:00"),
             _file(2, "/p/big-light.jpg", 640, 480, 100_000, "2021-01-01T00:00:00"),
             _file(3, "/p/big-heavy.jpg", 640, 480, 200_000, "2022-01-01T00:00:00"),
             _file(4, "/p/big-heavy-old.jpg", 640, 480, 200_000, "2019-01-01T00:00:00")]
    order = sorted(files, key=lambda f: dup._keeper_key(f, set()))
    assert [f.id for f in order] == [4, 3, 2, 1]  # pixels, then file size, then the oldest
    marked = sorted(files, key=lambda f: dup._keeper_key(f, {"/p/small.jpg"}))
    assert marked[0].id == 1  # a photo marked to keep comes first


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


def test_move_targets_keep_the_layout_and_never_overwrite(tmp_path: pytest.TempPathFactory) -> None:
    dest = str(tmp_path)
    target = moves._target(dest, "/photos/2021/trip/a.jpg", ["/photos"])
    assert target == f"{dest}/photos/2021/trip/a.jpg"
    (tmp_path / "photos" / "2021" / "trip").mkdir(parents=True)
    (tmp_path / "photos" / "2021" / "trip" / "a.jpg").write_bytes(b"x")
    assert moves._target(dest, "/photos/2021/trip/a.jpg", ["/photos"]) == f"{dest}/photos/2021/trip/a.dup1.jpg"
