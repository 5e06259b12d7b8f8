"""Exact and near-duplicate photos: found, grouped, a keeper suggested, and the extras moved aside.

    >>> from clipdex import Index
    >>> from clipdex.duplicates import find_duplicates
    >>> with Index.open("~/.clipdex-photos") as index:
    ...     report = find_duplicates(index)
    ...     for group in report.groups:
    ...         print([m.path for m in group.members])

How two photos are judged copies (:class:`DuplicateRule`): CLIP cosine alone cannot tell a copy
from a look-alike (different Unsplash photos reach 0.970 on ViT-B/32; a cropped copy can fall
below that), so a pair is a copy when its cosine reaches ``copy_cosine``, or when it lies in the
band from ``band_cosine`` up and a second signal confirms it: their perceptual signatures differ
in at most ``max_phash`` bits, or both were taken (EXIF) within ``burst_seconds`` of each other.
A signature (:func:`phash_of_image`, computed only for candidate pairs and cached by content hash)
is four 64-bit pHashes: of the photo with uniform borders trimmed (letterbox, padding), of its
mirror image, and of the frame's centre and its mirror (a caption bar at an edge); the distance is
the least over them, so a mirrored, letterboxed or captioned copy stays within a few bits.

The rule is calibrated on the user's own photos and model (:func:`calibrate`): altered copies of a
sample of indexed photos (resized, JPEG re-compressed, cropped, rotated, brightened, resaved as PNG
and WebP) are encoded with the index's model and set against each sampled photo's nearest
*different* photos (copies already in the collection left out); the rule that accepts the most
copies and no look-alike (the copy cosine from the look-alikes' tail scaled to the whole collection;
up to two pHash steps: few bits from a low band, more from a higher one) is stored per model with the
collection's size and its precision and recall measured on held-out halves. Without the model's
weights (imported embeddings), on fewer than :data:`MIN_CALIBRATION_PHOTOS` photos, or once the
collection has grown :data:`RECALIBRATE_GROWTH` times over, :data:`DEFAULT_RULE` is used, and says so.

Candidates come from every photo's ``k`` nearest neighbours through the vector-index interface
(:meth:`clipdex.search.base.VectorIndex.neighbours`: the approximate index where the index has one,
exact search otherwise), never from an N x N product. Accepted pairs are joined into connected
components, and a component is split greedily into groups around a keeper (:func:`split_stars`):
every member is a copy of its group's keeper by the rule (two copies of one original, a mirror
image and a letterboxed one, need not be copies of each other), so a chain of slightly different
burst shots never swallows a day. ``linkage="complete"`` asks every two members to be copies.

clipdex never deletes a photo: moving the extras aside (and back) and the keepers people mark are
:mod:`clipdex.duplicate_moves`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.errors import DuplicatesError, ImageDecodeError, ModelError, shorten

if TYPE_CHECKING:
    from PIL import Image

    from clipdex.index import Index
    from clipdex.store.catalog import FileRecord, ModelRecord
    from clipdex.store.rows import RowPhoto

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total), drawn as a bar by the CLI

# -- tunables -------------------------------------------------------------------------------
DEFAULT_K = 10  # neighbours asked for each photo: a group larger than this is still joined through its members
QUERY_CHUNK = 4_096  # photos whose neighbours are asked for in one call
# The share of an approximate index's lists a near-duplicate search probes (image searches probe 1/64):
# copies (cosine >= 0.9) share their original's list or the next; measured in bench/duplicates_scale.py.
DUPLICATE_PROBE_SHARE = 1 / 512
DUPLICATE_MIN_NPROBE = 4

PHASH_DRAFT = 256  # JPEGs decoded at 1/2..1/8 scale for pHash (it looks at 32 x 32 pixels)
PHASH_BITS = 64
HASH_DIGITS = PHASH_BITS // 4
# The signature's pHashes, in order: the content (borders trimmed) and its mirror; the frame's centre and its
# mirror; the content's centre and its mirror (the same as the frame's for a photo without bars).
HASH_KINDS = ("content", "content-mirror", "frame-centre", "frame-centre-mirror", "content-centre",
              "content-centre-mirror")
# Kinds compared: content with content (or its mirror); either centre with either centre (or its mirror).
_MATCHED_KINDS = ((0, 0), (0, 1)) + tuple((i, j + m) for i in (2, 4) for j in (2, 4) for m in (0, 1))
SIGNATURE_DIGITS = HASH_DIGITS * len(HASH_KINDS)
CENTRE_SHARE = 0.6  # the centre hashed: this share of each side (a caption bar over the bottom 15% stays out)
# Border trimming: a line is flat below this brightness deviation (0-255; JPEG noise on a black bar
# is ~1, a line through a photo's content tens); trimming stops where less than this share would remain.
FLAT_LINE_STD = 2.5
BAR_TONE = 3.0  # a bar's lines keep its first line's brightness within this (0-255)
MIN_BAR_SHARE = 0.01  # narrower flat edges are left alone
MIN_KEPT_SHARE = 0.5
TRIM_ROUNDS = 4  # bars on two axes, and what lies flat inside them
# How a component is split: around a keeper (every member a copy of it) or into cliques (every two
# members copies); bench/duplicates_quality.py measures both.
LINKAGES = ("keeper", "complete")
MAX_COMPONENT = 4_000  # members of one component judged pairwise (a larger one around each photo's neighbours)
# The rule without calibration (imported embeddings, no weights to encode altered copies): measured
# on the real ViT-B/32 features of the shared Unsplash photos (README): different photos reach
# 0.970, so a cosine alone decides only from 0.985; from 0.90 a pHash within 10 bits confirms.
DEFAULT_COPY_COSINE = 0.985
DEFAULT_BAND_COSINE = 0.90
DEFAULT_MAX_PHASH = 10
BURST_SECONDS = 2.0  # EXIF capture times this close: the same moment (a burst, or two cameras)
# Calibration
CALIBRATION_PHOTOS = 80  # photos altered (x len(ALTERATIONS) copies encoded)
CALIBRATION_NEIGHBOURS = 300  # photos whose DEFAULT_K nearest different photos are look-alike negatives
COSINE_MARGIN = 0.003  # copy_cosine sits this far above the closest look-alike seen
MIN_BAND_COSINE = 0.5  # the pHash band never reaches below this cosine
# nor above this pHash distance: unrelated photos differ in ~32 of 64 bits, and neighbours of similar
# structure reach into the teens (random ViT-B/32 weights, 1,000 Unsplash photos: 79 false groups at 16).
# The signature's look-alike tail is thinner than 3,000 sampled pairs can show: on the quality bench a
# calibrated step of <= 8 bits (from cosine 0.9938) put two different photos into a group of copies, and
# a fixed <= 8 grouped 19 different-photo pairs against 1 at <= 6; every alteration's copies stay within 6.
MAX_CALIBRATED_PHASH = 6
PHASH_MARGIN = 2  # no look-alike within this many bits above the chosen distance (the full run tests more pairs)
# The look-alike pairs a calibrated rule may be expected to accept across the whole collection
# (extrapolated from the sampled pairs' pHash distances, see phash_tail), and that tail's shape:
# cumulative counts of look-alikes fall ~3x per 2 bits on random ViT-B/32 weights (Unsplash 1k);
# a fit is trusted from TAIL_MIN_COUNT pairs on, and never flatter than TAIL_MIN_SLOPE.
MAX_EXPECTED_FALSE = 0.1
TAIL_MIN_COUNT = 3
TAIL_SLOPE = 0.55
TAIL_MIN_SLOPE = 0.2
ALREADY_COPY_PHASH = 4  # a "nearest different photo" this close in pHash is a copy already in the photos
# The look-alikes' cosine tail, extrapolated to the whole collection's pairs (a sample of 3,000 pairs
# sees none of the one-in-100,000 look-alikes a full search of 10,000 photos tests): the closest
# COSINE_TAIL_SHARE of the sampled pairs (at least COSINE_TAIL_MIN) fitted as a power of 1 - cosine;
# copy_cosine sits where it expects MAX_EXPECTED_FALSE look-alike pairs across the collection.
COSINE_TAIL_SHARE = 0.05
COSINE_TAIL_MIN = 20
MAX_PHASH_STEPS = 2  # a calibrated rule confirms by pHash in at most this many (band, bits) steps
# Calibration on too few photos measures nothing: below this many photos sampled the default rule is
# used (a 4-photo calibration once grouped 22 unrelated landscapes of a collection grown to 103).
MIN_CALIBRATION_PHOTOS = 20
RECALIBRATE_GROWTH = 2.0  # a collection this many times the size it was calibrated on gets the default rule
ENCODE_BATCH = 32
# The original over an edited or re-saved copy: an edit rarely adds pixels, and a re-save (PNG, a
# brightened JPEG) is newer and often larger, so the file size comes only after the age.
KEEPER_RULE = ("marked in the web app, else the most pixels, then the oldest (EXIF capture time, a photo "
               "with one first; then the file's modification time), then the largest file, then the shortest path")


def duplicate_nprobe(nlist: int) -> int:
    """Lists a near-duplicate search probes in an IVF index of ``nlist`` lists."""
    return min(nlist, max(DUPLICATE_MIN_NPROBE, round(nlist * DUPLICATE_PROBE_SHARE)))


# -- the rule ----------------------------------------------------------------------------------
Step = tuple[float, int]  # (band cosine, pHash bits): from this cosine up, a pHash within these bits confirms


@dataclass(frozen=True)
class DuplicateRule:
    """When two photos are copies: cosine >= ``copy_cosine``; or cosine >= ``band_cosine`` and
    (pHash distance <= ``max_phash`` or both EXIF-dated within ``burst_seconds``).

    A calibrated rule may have pHash ``steps`` instead of the one ``max_phash``: (band cosine, bits)
    pairs, e.g. within 2 bits from cosine 0.70, within 6 bits from 0.80 (a look-alike that close in
    pHash is rarer the more alike its cosine has to be too); ``band_cosine`` is then the lowest step's
    band and ``max_phash`` the widest step's bits. ``source`` says where the rule came from
    ("calibrated", "default", "--threshold", "--max-phash", "--no-phash"); a calibrated rule carries
    what calibration measured (held-out ``precision`` and ``recall``, how many ``copies`` and
    ``lookalikes`` it was measured on, the ``photos_total`` of the collection it was calibrated on:
    a collection grown :data:`RECALIBRATE_GROWTH` times over gets the default rule until calibrated
    again) and ``note`` says anything worth knowing."""

    copy_cosine: float
    band_cosine: float
    max_phash: int | None  # None: pHash not used
    burst_seconds: float | None = BURST_SECONDS
    source: str = "default"
    precision: float | None = None
    recall: float | None = None
    copies: int = 0
    lookalikes: int = 0
    calibrated_at: float | None = None
    expected_false: float | None = None  # look-alike pairs it is expected to accept in the whole collection
    note: str = ""
    by_alteration: dict[str, float] = field(default_factory=dict)  # recall per alteration
    steps: tuple[Step, ...] = ()  # pHash steps, lowest band first (empty: the one step band_cosine/max_phash)
    photos_total: int = 0  # photos of the collection when calibrated (0: unknown)
    expected_false_cosine: float | None = None  # of expected_false, the pairs accepted by cosine alone

    def __post_init__(self) -> None:
        # JSON gives lists; a rule is compared and hashed as tuples
        object.__setattr__(self, "steps", tuple((float(b), int(h)) for b, h in self.steps))

    @property
    def phash_steps(self) -> tuple[Step, ...]:
        """The pHash confirmations, lowest band first (none when pHash is not used)."""
        if self.max_phash is None:
            return ()
        return self.steps or ((self.band_cosine, self.max_phash),)

    @property
    def uses_phash(self) -> bool:
        """Whether any pair can be confirmed by pHash: a run decodes images for their signature only then."""
        return any(band < self.copy_cosine for band, _ in self.phash_steps)

    @property
    def lowest_cosine(self) -> float:
        """Below this cosine no pair is a copy: the candidates' floor."""
        second = self.max_phash is not None or self.burst_seconds is not None
        return min(self.copy_cosine, self.band_cosine) if second else self.copy_cosine

    def accepts(self, cosine: float, phash_distance: int | None, seconds_apart: float | None) -> bool:
        """Whether a pair with this cosine, pHash distance (None: unknown) and capture times this far
        apart (None: either has no EXIF time) is a copy. :func:`_accepted` is the same rule on matrices
        (a test holds them equal)."""
        return bool(self.why(cosine, phash_distance, seconds_apart))

    def why(self, cosine: float, phash_distance: int | None, seconds_apart: float | None) -> tuple[str, ...]:
        """Every reason the rule accepts a pair (of "cosine", "phash", "time"); empty: not a copy."""
        reasons: list[str] = []
        if cosine >= self.copy_cosine:
            reasons.append("cosine")
        if cosine >= self.band_cosine:
            if phash_distance is not None and any(cosine >= band and phash_distance <= bits
                                                  for band, bits in self.phash_steps):
                reasons.append("phash")
            if (self.burst_seconds is not None and seconds_apart is not None
                    and seconds_apart <= self.burst_seconds):
                reasons.append("time")
        return tuple(reasons)

    def describe(self) -> str:
        """The rule in words, as the CLI prints it."""
        text = f"cosine >= {self.copy_cosine:.4f}"
        steps = [(band, bits) for band, bits in self.phash_steps if band < self.copy_cosine]
        seconds = []
        if len(steps) == 1 and steps[0][0] == self.band_cosine:
            seconds.append(f"pHash distance <= {steps[0][1]}")
        elif steps:
            seconds.append(" or ".join(f"pHash distance <= {bits} from cosine {band:.4f}" for band, bits in steps))
        if self.burst_seconds is not None:
            seconds.append(f"taken within {self.burst_seconds:g} s (EXIF)")
        if seconds and self.band_cosine < self.copy_cosine:
            text += f", or cosine >= {self.band_cosine:.4f} and ({' or '.join(seconds)})"
        return f"{text} [{self.source}]"

    def estimates(self) -> str:
        """What calibration measured, in words ('' for an uncalibrated rule)."""
        if self.precision is None or self.recall is None:
            return ""
        expected = ""
        if self.expected_false is not None:
            split = (f", {self.expected_false_cosine:g} of them by cosine alone"
                     if self.expected_false_cosine is not None else "")
            expected = (f"; about {self.expected_false:g} look-alike pairs expected to pass in the whole "
                        f"collection{split}")
        size = f", a collection of {self.photos_total} photos" if self.photos_total else ""
        return (f"estimated precision {self.precision:.3f}, recall {self.recall:.3f} (held-out halves of "
                f"{self.copies} altered copies and {self.lookalikes} pairs of nearest different photos{size}"
                f"{expected})")

    def overridden(self, *, threshold: float | None = None, max_phash: int | None = None,
                   no_phash: bool = False) -> "DuplicateRule":
        """This rule with the CLI's overrides: ``threshold`` replaces the copy cosine (the band reaching
        no higher), ``max_phash`` every pHash step's bits (one step from the lowest band), ``no_phash``
        drops pHash. What calibration measured no longer applies to the result: it is cleared, and the
        source says the override. Raises :class:`DuplicatesError` for a threshold below
        :data:`MIN_BAND_COSINE` (every photo would be a copy of its neighbours)."""
        rule = self
        if threshold is not None:
            if not MIN_BAND_COSINE <= threshold <= 1.0:
                raise DuplicatesError(f"--threshold {threshold:g}",
                                      f"a copy cosine must lie between {MIN_BAND_COSINE:g} and 1 (different photos "
                                      "reach 0.9 and more)",
                                      f"Pass --threshold {DEFAULT_COPY_COSINE:g} or higher, or leave it out.")
            steps = tuple((min(b, threshold), h) for b, h in rule.steps)
            rule = replace(rule, copy_cosine=threshold, band_cosine=min(rule.band_cosine, threshold), steps=steps,
                           source="--threshold")
        if max_phash is not None:
            if not 0 <= max_phash <= PHASH_BITS:
                raise DuplicatesError(f"--max-phash {max_phash}", f"a pHash distance lies between 0 and {PHASH_BITS}",
                                      f"Pass --max-phash {DEFAULT_MAX_PHASH} or lower, or leave it out.")
            rule = replace(rule, max_phash=max_phash, steps=(), source="--max-phash" if threshold is None
                           else "--threshold, --max-phash")
        if no_phash:
            rule = replace(rule, max_phash=None, steps=(), source="--no-phash" if rule.source in
                           ("calibrated", "default") else f"{rule.source}, --no-phash")
        if rule is self:
            return rule
        return replace(rule, precision=None, recall=None, expected_false=None, expected_false_cosine=None,
                       by_alteration={}, copies=0, lookalikes=0)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DuplicateRule":
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


DEFAULT_RULE = DuplicateRule(DEFAULT_COPY_COSINE, DEFAULT_BAND_COSINE, DEFAULT_MAX_PHASH, source="default")
WHY_REASONS = ("exact", "cosine", "phash", "time")


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DuplicateMember:
    """One photo of a group, with how close it is to the group's keeper."""

    file_id: int
    path: str
    fs_path: str
    content_hash: str
    size: int
    width: int | None
    height: int | None
    taken_at: str | None
    keeper: bool
    marked: bool  # a person marked it to keep
    cosine: float  # to the keeper (1.0 for the keeper and its exact copies)
    phash_distance: int | None  # to the keeper (None: no pHash, e.g. an image that cannot be decoded)
    exact: bool  # byte-identical to the keeper (the keeper: to a member)
    # why it is in the group, of WHY_REASONS: "exact" (the keeper's bytes), else what the rule accepted it
    # on against the keeper ("cosine", "phash", "time"); () for the keeper
    why: tuple[str, ...] = ()

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)


@dataclass(frozen=True)
class DuplicateGroup:
    """Photos that are copies of the keeper (each by the rule; of each other too with complete linkage),
    keeper first."""

    id: int
    members: list[DuplicateMember]

    @property
    def keeper(self) -> DuplicateMember:
        return self.members[0]

    @property
    def extras(self) -> list[DuplicateMember]:
        """The members not kept: what ``--move-extras`` moves."""
        return [m for m in self.members if not m.keeper and not m.marked]

    @property
    def exact_only(self) -> bool:
        return all(m.exact for m in self.members)


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`find_duplicates` found, and how."""

    groups: list[DuplicateGroup]
    rule: DuplicateRule
    photos: int  # photos looked at
    candidates: int  # neighbour pairs above the rule's lowest cosine
    phashes_computed: int  # images decoded for pHash this run (the rest came from the cache)
    search: str  # how neighbours were found (exact or approximate)
    seconds: float
    keeper_rule: str = KEEPER_RULE

    @property
    def extras(self) -> int:
        return sum(len(g.extras) for g in self.groups)


def member_json(m: DuplicateMember) -> dict[str, Any]:
    """One group member as the CLI's --json and the web API give it."""
    return {"id": m.file_id, "path": m.path, "keeper": m.keeper, "marked": m.marked, "exact": m.exact,
            "cosine": round(m.cosine, 6), "phash_distance": m.phash_distance, "size": m.size, "width": m.width,
            "height": m.height, "pixels": m.pixels, "taken_at": m.taken_at, "why": list(m.why)}


def report_json(report: DuplicateReport, note: str, groups: Sequence[DuplicateGroup] | None = None) -> dict[str, Any]:
    """A report as JSON (``groups``: a page of them; default all): the rule, how it was found, the groups."""
    shown = report.groups if groups is None else groups
    return {"rule": {**asdict(report.rule), "text": report.rule.describe()}, "rule_note": note,
            "keeper_rule": report.keeper_rule, "photos": report.photos, "groups_found": len(report.groups),
            "extras": report.extras, "search": report.search, "seconds": round(report.seconds, 3),
            "groups": [{"id": g.id, "size": len(g.members), "members": [member_json(m) for m in g.members]}
                       for g in shown]}


# -- perceptual signature ------------------------------------------------------------------------
# What a re-export does that a plain pHash of the whole frame does not survive: bars added around
# the photo (letterbox, pillarbox, padding of any flat colour), a mirror image, a caption bar drawn
# over an edge. So a photo's signature is several 64-bit pHashes of its content, borders trimmed:
# the whole frame, its mirror image, its centre (caption bars and watermarks sit at the edges), and
# the centre's mirror; two photos' distance is the least over matching kinds (see
# signature_distance). Stored per content hash as their hex digits, one after another.


def trim_borders(image: "Image.Image") -> "Image.Image":
    """``image`` without uniform borders: rows and columns at its edges whose brightness is flat
    (standard deviation along the line below :data:`FLAT_LINE_STD`: black bars, white padding, any
    flat colour, and equally a flat sky at the top, which the original and its copies lose alike),
    repeated until none is left, as long as :data:`MIN_KEPT_SHARE` of each side remains (an image
    that is mostly flat is hashed whole)."""
    box = content_box(image)
    return image if box == (0, 0, image.width, image.height) else image.crop(box)


def content_box(image: "Image.Image") -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of ``image`` within its uniform borders (see :func:`trim_borders`)."""
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    h, w = gray.shape
    top, bottom, left, right = 0, h, 0, w
    for _ in range(TRIM_ROUNDS):
        box = gray[top:bottom, left:right]
        before = (top, bottom, left, right)
        cut_top, cut_bottom = _flat_run(box), _flat_run(box[::-1])
        if bottom - cut_bottom - top - cut_top >= h * MIN_KEPT_SHARE:
            top, bottom = top + cut_top, bottom - cut_bottom
        box = gray[top:bottom, left:right]
        cut_left, cut_right = _flat_run(box.T), _flat_run(box.T[::-1])
        if right - cut_right - left - cut_left >= w * MIN_KEPT_SHARE:
            left, right = left + cut_left, right - cut_right
        if (top, bottom, left, right) == before:
            break
    return left, top, right, bottom


def _flat_run(lines: np.ndarray) -> int:
    """How many rows from the start of ``lines`` (a grayscale array) form a bar: each flat (deviation
    below :data:`FLAT_LINE_STD`) and of the first row's brightness (within :data:`BAR_TONE`: a bar is
    one colour, a sky's gradient is not), at least :data:`MIN_BAR_SHARE` of the side (0 otherwise)."""
    if not len(lines):
        return 0
    flat = (lines.std(axis=1) < FLAT_LINE_STD) & (np.abs(lines.mean(axis=1) - lines[0].mean()) <= BAR_TONE)
    stops = np.flatnonzero(~flat)
    run = int(stops[0]) if len(stops) else len(flat)
    return run if run >= max(1, len(lines) * MIN_BAR_SHARE) else 0


def phash_of_image(image: "Image.Image") -> str:
    """The perceptual signature of ``image``: imagehash's 64-bit pHash of its content (borders
    trimmed, :func:`trim_borders`), of its mirror image, of the frame's centre (:data:`CENTRE_SHARE`
    of each side), of the content's centre, and of their mirrors, as 16 hex digits each
    (:data:`HASH_KINDS`; :data:`SIGNATURE_DIGITS` in all)."""
    import imagehash
    from PIL import ImageOps

    image = image.convert("RGB")
    box = content_box(image)
    content = image.crop(box)
    # Two centres: of the frame as it is (a caption bar's flat part, trimmed, would shift the content's
    # centre) and of the content within its bars (a letterboxed copy's frame centre is not the photo's).
    parts = [content, ImageOps.mirror(content)]
    for left, top, right, bottom in ((0, 0, image.width, image.height), box):
        w, h = right - left, bottom - top
        mx, my = round(w * (1 - CENTRE_SHARE) / 2), round(h * (1 - CENTRE_SHARE) / 2)
        small = min(w, h) * CENTRE_SHARE < 8
        centre = content if small else image.crop((left + mx, top + my, right - mx, bottom - my))
        parts += [centre, ImageOps.mirror(centre)]
    return "".join(f"{int(str(imagehash.phash(part)), 16):016x}" for part in parts)


def _hash_parts(signature: str) -> list[int]:
    return [int(signature[i:i + HASH_DIGITS], 16) for i in range(0, len(signature), HASH_DIGITS)]


def phash_distance(a: str | None, b: str | None) -> int | None:
    """Bits in which two photos' perceptual signatures differ, the least over matching kinds: whole
    frame against whole frame or its mirror, centre against centre or its mirror (a mirror image or a
    caption bar moves one kind, not the other). Plain 16-digit pHashes compare directly. None when
    either is unknown."""
    if a is None or b is None:
        return None
    pa, pb = _hash_parts(a), _hash_parts(b)
    if len(pa) != len(pb) or len(pa) == 1:
        return (pa[0] ^ pb[0]).bit_count()
    return min((pa[i] ^ pb[j]).bit_count() for i, j in _MATCHED_KINDS)


def signature_bits(signatures: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Signatures as a (n, kinds) uint64 matrix (zeros where unknown), and which are known."""
    known = np.array([s is not None and len(s) == SIGNATURE_DIGITS for s in signatures], dtype=bool)
    bits = np.zeros((len(signatures), len(HASH_KINDS)), dtype=np.uint64)
    for i, s in enumerate(signatures):
        if s is not None and known[i]:
            bits[i] = _hash_parts(s)
    return bits, known


def signature_distances(bits: np.ndarray) -> np.ndarray:
    """(n, n) :func:`phash_distance` of every pair of rows of ``bits`` (:func:`signature_bits`)."""
    best = np.full((len(bits), len(bits)), PHASH_BITS, dtype=np.int64)
    for i, j in _MATCHED_KINDS:
        np.minimum(best, np.bitwise_count(bits[:, i][:, None] ^ bits[:, j][None, :]).astype(np.int64), out=best)
    return best


def phash_file(path: str) -> str | None:
    """The perceptual signature of the image file at ``path``, decoded through clipdex's safe opener
    (size checked first, JPEGs at reduced scale); None when it cannot be decoded (gone, damaged)."""
    from clipdex.decode import open_image_file

    try:
        return phash_of_image(open_image_file(path, draft_size=PHASH_DRAFT))
    except ImageDecodeError as e:
        log.info("no pHash for %s: %s", path, e.reason)
        return None


def phashes_for(index: "Index", wanted: dict[str, str],
                progress: Progress | None = None) -> tuple[dict[str, str | None], int]:
    """pHashes by content hash for ``wanted`` (content hash -> a path to read it from): cached
    ones from the catalog, the rest decoded and cached (where the index can be written).
    Returns them and how many were decoded now."""
    with index.lock:  # a signature of an older recipe (another length) is computed again
        known = {h: p for h, p in index.store.phashes(wanted).items() if p is None or len(p) == SIGNATURE_DIGITS}
    todo = [h for h in wanted if h not in known]
    fresh: dict[str, str | None] = {}
    for i, content_hash in enumerate(todo):
        fresh[content_hash] = phash_file(wanted[content_hash])
        if progress:
            progress(i + 1, len(todo))
    if fresh and not index.store.readonly:
        with index.lock:
            index.store.save_phashes(fresh)
    return {**known, **fresh}, len(fresh)


# -- candidates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidates:
    """Pairs of vector rows whose cosine reached the floor: ``pairs`` (n, 2) with a < b, ``cosines`` (n,)."""

    pairs: np.ndarray
    cosines: np.ndarray


def candidate_pairs(search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                    read: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, k: int, floor: float,
                    progress: Progress | None = None) -> Candidates:
    """Every pair of ``rows`` (sorted vector rows) that is among one of them's ``k`` nearest
    neighbours with cosine >= ``floor``, each pair once.

    ``search(queries, k)`` answers a batch of queries (a vector index's ``neighbours``, restricted to
    ``rows``); ``read(rows)`` gives their vectors. Queries go ``QUERY_CHUNK`` at a time: memory stays
    flat at a million photos, and no N x N product is ever formed."""
    found_pairs: list[np.ndarray] = []
    found_cosines: list[np.ndarray] = []
    for start in range(0, len(rows), QUERY_CHUNK):
        chunk = rows[start:start + QUERY_CHUNK]
        hit_rows, hit_scores = search(read(chunk), k + 1)  # + 1: the photo itself comes back
        own = np.broadcast_to(chunk[:, None], hit_rows.shape)
        keep = (hit_rows >= 0) & (hit_rows != own) & (hit_scores >= floor)
        a, b = own[keep], hit_rows[keep]
        found_pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
        found_cosines.append(hit_scores[keep])
        if progress:
            progress(min(start + QUERY_CHUNK, len(rows)), len(rows))
    if not found_pairs:
        return Candidates(np.zeros((0, 2), np.int64), np.zeros(0, np.float32))
    pairs, cosines = np.concatenate(found_pairs), np.concatenate(found_cosines)
    pairs, first = np.unique(pairs, axis=0, return_index=True)
    return Candidates(pairs.astype(np.int64), cosines[first].astype(np.float32))


def components(n: int, pairs: np.ndarray) -> list[np.ndarray]:
    """Connected components (of two or more) of nodes 0..n-1 joined by ``pairs``, as sorted index arrays."""
    if not len(pairs):
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=count)
    split = np.split(order, np.cumsum(sizes)[:-1])
    return [np.sort(part) for part in split if len(part) > 1]


def split_cliques(accepted: np.ndarray, strength: np.ndarray) -> list[list[int]]:
    """Split a component into groups whose members are all copies of each other (complete linkage).

    ``accepted`` (m, m) says which pairs the rule accepts; ``strength`` (m, m) their cosine. Greedy:
    the member with the most accepted pairs (ties: the lowest index) seeds a group; its accepted
    partners join in order of cosine to it, each only if it is a copy of every member so far; the
    rest is split again. A chain A~B~C~D with A, D different becomes {A, B}, {C, D} or similar,
    never one group. Degrees are updated as groups leave (O(m^2) in all, not O(m^3))."""
    m = len(accepted)
    left = np.ones(m, dtype=bool)
    degree = accepted.sum(axis=1).astype(np.int64)
    groups: list[list[int]] = []
    while left.any():
        seed = int(np.argmax(np.where(left, degree, -1)))
        fits = accepted[seed] & left  # members that are copies of every member so far
        partners = [int(j) for j in np.flatnonzero(fits) if j != seed]
        partners.sort(key=lambda j: (-strength[seed, j], j))
        group = [seed]
        for j in partners:
            if fits[j]:
                group.append(j)
                fits &= accepted[j]
        groups.append(sorted(group))
        left[group] = False
        degree -= accepted[:, group].sum(axis=1)
    return groups


def split_stars(accepted: np.ndarray, rank: np.ndarray) -> list[list[int]]:
    """Split a component into groups around a keeper: every member a copy of the group's keeper.

    ``accepted`` (m, m) says which pairs the rule accepts; ``rank`` (m,) orders the members by the
    keeper rule (lowest kept first). Greedy: the member with the most accepted pairs (ties: the best
    ranked) seeds; the best ranked of it and its partners is the keeper, and the group is the keeper
    with every member left that is a copy of it; the rest is split again. Two copies of one original
    (a mirror image and a letterboxed one) need not be copies of each other by the rule, only of the
    keeper; a chain A~B~C~D still never becomes one group (D is no copy of a keeper A or B). The
    keeper outranks every member of its group, so it is the one :func:`find_duplicates` keeps.
    Degrees are updated as groups leave (O(m^2) in all, not O(m^3))."""
    m = len(accepted)
    left = np.ones(m, dtype=bool)
    degree = accepted.sum(axis=1).astype(np.int64)
    groups: list[list[int]] = []
    while left.any():
        live_degree = np.where(left, degree, -1)
        seeds = np.flatnonzero(live_degree == live_degree.max())
        seed = int(seeds[np.argmin(rank[seeds])])
        group = np.flatnonzero(accepted[seed] & left)
        while True:  # the keeper outranks every member (a copy of it may outrank the seed's best)
            keeper = int(group[np.argmin(rank[group])])
            group = np.flatnonzero(accepted[keeper] & left)
            if rank[group].min() >= rank[keeper]:
                break
        groups.append(sorted(int(i) for i in group))
        left[group] = False
        degree -= accepted[:, group].sum(axis=1)
    return groups


# -- finding -----------------------------------------------------------------------------------
@dataclass
class _Photos:
    """The photos behind the vector rows looked at."""

    rows: np.ndarray  # sorted unique vector rows
    by_row: dict[int, list[int]]  # row -> file ids (several: exact copies)
    files: dict[int, "FileRecord"] = field(default_factory=dict)


def stored_rule(index: "Index") -> DuplicateRule | None:
    """The rule calibrated for the index's model, if any."""
    record = index.model_record()
    with index.lock:
        stored = index.store.duplicate_rule(record.id)
    return None if stored is None else DuplicateRule.from_json(stored[0])


def find_duplicates(index: "Index", rule: DuplicateRule | None = None, *, k: int = DEFAULT_K,
                    folders: Sequence[str] = (), exact_only: bool = False, min_size: int = 2,
                    progress: Progress | None = None, phash_progress: Progress | None = None,
                    linkage: str = "keeper") -> DuplicateReport:
    """Groups of copies among the index's photos (see the module's docstring for how).

    ``rule`` None: :func:`rule_for` (the calibrated rule, else :data:`DEFAULT_RULE`). ``folders`` limits the
    photos looked at; ``exact_only`` finds only photos of the same content (no neighbour search);
    ``min_size`` drops smaller groups; ``linkage`` "keeper" makes every member a copy of its group's
    keeper, "complete" of every other member (stricter: the quality bench compares them).
    ``progress`` follows the neighbour search, ``phash_progress``
    the images decoded for pHash. Groups come largest first, each keeper first
    (:data:`KEEPER_RULE`)."""
    from clipdex.search.engine import ModelSearch
    from clipdex.search.filters import SearchFilter
    from clipdex.store.rows import allowed_rows, photos_of_rows

    started = time.perf_counter()
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {', '.join(LINKAGES)}, not {linkage!r}")
    rule = rule or rule_for(index)[0]  # the stored rule unless the collection outgrew it
    # Photos only: a video's frames are moments of one file, never copies to move away.
    filters = SearchFilter(folders=tuple(os.path.abspath(f) for f in folders), media="photos")
    with index.lock:
        record = index.model_record()
        hidden = index.store.missing_roots()
        rows = allowed_rows(index.store, record, filters, hidden)
        engine = ModelSearch(index.store, record)
        by_row: dict[int, list[int]] = {}
        for p in photos_of_rows(index.store, record, rows, filters, hidden):
            by_row.setdefault(p.row, []).append(p.file_id)
        keepers = index.store.keepers()
    photos = _Photos(rows=rows, by_row=by_row)
    if exact_only:
        candidates = Candidates(np.zeros((0, 2), np.int64), np.zeros(0, np.float32))
        search_note = "none (same content only)"
    else:
        search, search_note = _neighbour_search(engine, rows)
        candidates = candidate_pairs(search, engine.read, rows, k, rule.lowest_cosine, progress)
    # Components over every candidate pair (the rule is applied inside each, pair by pair), in
    # positions of `rows` (sorted): found by binary search, no dict of every photo.
    local = np.searchsorted(rows, candidates.pairs).reshape(-1, 2).astype(np.int64)
    parts = components(len(rows), local)
    involved = sorted({int(rows[i]) for part in parts for i in part}
                      | {r for r, ids in by_row.items() if len(ids) > 1})
    with index.lock:
        photos.files = index.store.files_by_ids([i for r in involved for i in by_row.get(r, [])])
    wanted: dict[str, str] = {}
    for r in involved:
        for file_id in by_row.get(r, []):
            f = photos.files.get(file_id)
            if f is not None and f.content_hash:
                wanted.setdefault(f.content_hash, f.fs_path)
                break
    phashes: dict[str, str | None] = {}
    computed = 0
    if rule.uses_phash and parts:  # exact copies alone need no signature; a cosine-only rule none at all
        phashes, computed = phashes_for(index, {h: path for h, path in wanted.items()
                                                if h in _hashes_in(parts, rows, photos)}, phash_progress)
    graph = _partner_graph(len(rows), local)

    def partners(row: int) -> np.ndarray:
        at = int(np.searchsorted(rows, row))
        return rows[graph.indices[graph.indptr[at]:graph.indptr[at + 1]]]

    row_groups: list[list[int]] = []
    for part in parts:
        row_groups += _split([int(r) for r in rows[part]], engine.read, photos, phashes, rule, partners, linkage)
    grouped = {r for g in row_groups for r in g}
    row_groups += [[r] for r, ids in by_row.items() if len(ids) > 1 and r not in grouped]  # exact copies only
    result = []
    for member_rows in row_groups:
        group = _group(member_rows, engine.read, photos, phashes, keepers, rule)
        if len(group) >= min_size:
            result.append(group)
    # Numbered by size, then the group's first path: a keeper marked in the web app changes neither.
    result.sort(key=lambda g: (-len(g), min(m.path for m in g)))
    return DuplicateReport(groups=[DuplicateGroup(i + 1, g) for i, g in enumerate(result)], rule=rule,
                           photos=sum(len(v) for v in by_row.values()), candidates=len(candidates.pairs),
                           phashes_computed=computed, search=search_note, seconds=time.perf_counter() - started)


def _hashes_in(parts: list[np.ndarray], rows: np.ndarray, photos: _Photos) -> set[str]:
    """Content hashes of the components' photos (whose pHash the rule may need)."""
    out = set()
    for part in parts:
        for r in rows[part].tolist():
            f = _first_file(photos, int(r))
            if f is not None and f.content_hash:
                out.add(f.content_hash)
    return out


def _partner_graph(n: int, local: np.ndarray) -> Any:
    """Candidate pairs (positions) as a symmetric CSR matrix: a row's partners are a slice of it."""
    from scipy.sparse import coo_matrix

    both = np.concatenate([local, local[:, ::-1]]) if len(local) else np.zeros((0, 2), np.int64)
    return coo_matrix((np.ones(len(both), np.int8), (both[:, 0], both[:, 1])), shape=(n, n)).tocsr()


Neighbours = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (queries, k) -> (rows, scores)


def _neighbour_search(engine: Any, rows: np.ndarray) -> tuple[Neighbours, str]:
    """A batch neighbour search over ``rows`` through the model's search engine: its approximate
    index (and the rows committed after it, exactly) where it has one, exact search otherwise."""
    from clipdex.search.ann import IvfIndex
    from clipdex.search.base import merge_neighbours

    parts = [p for p in (engine.exact, engine.ann, engine.tail) if p is not None]

    def ask(part: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(part, IvfIndex):  # a copy's neighbours share its list: probe few (bench/duplicates_scale.py)
            return part.neighbours(queries, k, rows, nprobe=duplicate_nprobe(part.params.nlist or 1))
        found: tuple[np.ndarray, np.ndarray] = part.neighbours(queries, k, rows)
        return found

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        best = ask(parts[0], queries, k)
        for more in parts[1:]:
            found_rows, found_scores = ask(more, queries, k)
            best = merge_neighbours(best, found_rows, found_scores, k)
        return best

    note = "approximate (IVF) neighbours" if engine.ann is not None else "exact neighbours"
    return search, note


def _first_file(photos: _Photos, row: int) -> "FileRecord | None":
    return next((photos.files[i] for i in photos.by_row.get(row, []) if i in photos.files), None)


def _row_phash(photos: _Photos, phashes: dict[str, str | None], row: int) -> str | None:
    f = _first_file(photos, row)
    return phashes.get(f.content_hash) if f is not None and f.content_hash else None


def _accepted(rows: list[int], read: Callable[[np.ndarray], np.ndarray], photos: _Photos,
              phashes: dict[str, str | None], rule: DuplicateRule) -> tuple[np.ndarray, np.ndarray]:
    """Which pairs of ``rows`` the rule accepts (m, m), and their cosines: :meth:`DuplicateRule.accepts`
    on matrices."""
    vectors = read(np.array(rows, dtype=np.int64))
    cos = vectors @ vectors.T
    accepted = cos >= rule.copy_cosine
    band = (cos >= rule.band_cosine) & ~accepted
    if band.any():
        confirmed = np.zeros_like(band)
        if rule.phash_steps:
            bits, known = signature_bits([_row_phash(photos, phashes, r) for r in rows])
            distance = signature_distances(bits)
            both = known[:, None] & known[None, :]
            for step_band, step_bits in rule.phash_steps:
                confirmed |= (cos >= step_band) & (distance <= step_bits) & both
        if rule.burst_seconds is not None:
            taken = np.array([_exif_seconds(_first_file(photos, r)) for r in rows], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                confirmed |= np.abs(taken[:, None] - taken[None, :]) <= rule.burst_seconds  # NaN: never
        accepted |= band & confirmed
    np.fill_diagonal(accepted, True)
    return accepted, cos


def _exif_seconds(f: "FileRecord | None") -> float:
    """A photo's EXIF capture time in seconds (NaN when it has none)."""
    if f is None or f.taken_source != "exif" or not f.taken_at:
        return math.nan
    try:
        return datetime.fromisoformat(f.taken_at).timestamp()
    except ValueError:
        return math.nan


def _split(part: list[int], read: Callable[[np.ndarray], np.ndarray], photos: _Photos,
           phashes: dict[str, str | None], rule: DuplicateRule, partners: Callable[[int], np.ndarray],
           linkage: str) -> list[list[int]]:
    """A component's rows split into groups: around a keeper (``linkage`` "keeper",
    :func:`split_stars`) or of rows that are all copies of each other ("complete", :func:`split_cliques`).

    Up to :data:`MAX_COMPONENT` rows every pair is judged; a larger component (thousands of frames of
    one scene) is split around each row's own candidates (``partners(row)``: its neighbour pairs), in
    row order, so that no matrix of it is ever formed. The keeper rule ranks without the marks people
    made: a mark picks the keeper within its group (:func:`_group`) but never changes the groups."""
    def split(rows: list[int]) -> list[list[int]]:
        accepted, cos = _accepted(rows, read, photos, phashes, rule)
        if linkage == "complete":
            return split_cliques(accepted, cos)
        return split_stars(accepted, _keeper_rank(rows, photos))

    if len(part) <= MAX_COMPONENT:
        return [[part[i] for i in g] for g in split(part) if len(g) > 1]
    log.info("a component of %d similar photos is split around each photo's nearest neighbours", len(part))
    taken: set[int] = set()
    groups = []
    for seed in part:
        if seed in taken:
            continue
        around = [seed] + sorted(int(r) for r in partners(seed) if int(r) not in taken)
        best = next((g for g in split(around) if 0 in g), [0])
        if len(best) > 1:
            group = [around[i] for i in best]
            groups.append(group)
            taken.update(group)
    return groups


def _keeper_rank(rows: list[int], photos: _Photos) -> np.ndarray:
    """Each row's place in the keeper rule (0: kept first), by the best of its files (marks aside)."""
    keys = []
    for r in rows:
        files = [photos.files[i] for i in photos.by_row.get(r, []) if i in photos.files]
        keys.append(min((_keeper_key(f, set()) for f in files), default=(True, 0, True, 0.0, 0, 0, 1 << 30, "~")))
    order = sorted(range(len(rows)), key=lambda i: keys[i])
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(len(rows))
    return rank


def _keeper_key(f: "FileRecord", marked: set[str]) -> tuple[Any, ...]:
    """Sort key of the keeper rule (:data:`KEEPER_RULE`): the first is kept. The original over a
    re-saved or edited copy: the same pixels, but the copy lost its EXIF or is newer."""
    pixels = (f.width or 0) * (f.height or 0)
    taken = _exif_seconds(f)
    no_exif = math.isnan(taken)
    return (f.path not in marked, -pixels, no_exif, 0.0 if no_exif else taken, f.mtime_ns, -f.size, len(f.path),
            f.path)


def _group(rows: list[int], read: Callable[[np.ndarray], np.ndarray], photos: _Photos,
           phashes: dict[str, str | None], marked: set[str], rule: DuplicateRule) -> list[DuplicateMember]:
    """A group's members, keeper first, each with its cosine and pHash distance to the keeper and why
    it is there (:data:`WHY_REASONS`)."""
    files = [(r, photos.files[i]) for r in rows for i in photos.by_row.get(r, []) if i in photos.files]
    if not files:
        return []
    files.sort(key=lambda rf: _keeper_key(rf[1], marked))
    keeper = files[0][1]
    vectors = read(np.array([r for r, _ in files], dtype=np.int64))
    cosines = vectors @ vectors[0]
    keeper_hash = phashes.get(keeper.content_hash or "")
    keeper_time = _exif_seconds(keeper)
    natural = min((f for _, f in files), key=lambda f: _keeper_key(f, set()))  # the keeper without marks
    twins = sum(f.content_hash == keeper.content_hash for _, f in files) > 1  # the keeper has a byte-identical copy
    members = []
    for i, (_, f) in enumerate(files):
        same = f.content_hash == keeper.content_hash
        cosine = 1.0 if same else float(min(1.0, cosines[i]))
        distance = 0 if same else phash_distance(keeper_hash, phashes.get(f.content_hash or ""))
        if i == 0:
            why: tuple[str, ...] = ()
        elif same:
            why = ("exact",)
        else:
            why = _why(rule, cosine, distance, f, keeper_time)
            if not why and natural is not keeper:  # a marked keeper: the group was made around the rule's own
                j = next(n for n, (_, g) in enumerate(files) if g is natural)
                why = _why(rule, float(vectors[i] @ vectors[j]),
                           phash_distance(phashes.get(natural.content_hash or ""), phashes.get(f.content_hash or "")),
                           f, _exif_seconds(natural))
        members.append(DuplicateMember(
            file_id=f.id, path=f.path, fs_path=f.fs_path, content_hash=f.content_hash or "", size=f.size,
            width=f.width, height=f.height, taken_at=f.taken_at, keeper=i == 0, marked=f.path in marked,
            cosine=cosine, phash_distance=distance, exact=same and (i > 0 or twins), why=why))
    return members


def _why(rule: DuplicateRule, cosine: float, distance: int | None, f: "FileRecord",
         keeper_time: float) -> tuple[str, ...]:
    apart = abs(_exif_seconds(f) - keeper_time)
    return rule.why(cosine, distance, None if math.isnan(apart) else apart)


# -- calibration -------------------------------------------------------------------------------
def _alterations() -> dict[str, Callable[["Image.Image"], "Image.Image"]]:
    """The edits a copy typically went through, each of which calibration makes of every sampled
    photo (the quality bench measures with *other* edits, bench/duplicates_quality.py)."""
    import io

    from PIL import Image, ImageEnhance

    def resave(image: Image.Image, fmt: str, **options: Any) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")

    def crop(image: Image.Image) -> Image.Image:
        w, h = image.size
        return image.crop((round(w * 0.05), round(h * 0.05), round(w * 0.95), round(h * 0.95)))

    def rotate(image: Image.Image) -> Image.Image:
        w, h = image.size
        turned = image.rotate(3, resample=Image.Resampling.BICUBIC, expand=False)
        return turned.crop((round(w * 0.04), round(h * 0.04), round(w * 0.96), round(h * 0.96)))

    return {
        "resize": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.LANCZOS),
        "jpeg": lambda im: resave(im, "JPEG", quality=35),
        "crop": crop,
        "rotate": rotate,
        "light": lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.25)).enhance(0.85),
        "png": lambda im: resave(im, "PNG"),
        "webp": lambda im: resave(im, "WEBP", quality=80),
    }


ALTERATIONS = ("resize", "jpeg", "crop", "rotate", "light", "png", "webp")


@dataclass(frozen=True)
class CalibrationData:
    """What calibration measured: each altered copy's cosine and pHash distance to its original,
    and the same of each sampled photo's nearest different photos (look-alikes), as pairs."""

    copy_cosine: np.ndarray
    copy_phash: np.ndarray  # -1: unknown
    copy_kind: list[str]
    copy_photo: np.ndarray  # which sampled photo (for the held-out split)
    near_cosine: np.ndarray
    near_phash: np.ndarray  # -1: unknown (not needed: below every band considered)
    near_photo: np.ndarray
    already_copies: int  # nearest "different" photos that are copies already in the photos (left out)
    photos_total: int = 0  # photos of the index (how many pairs a full search tests)


def phash_tail(distances: np.ndarray) -> Callable[[int], float]:
    """The share of look-alike pairs within ``h`` bits, for any ``h``, from the measured ``distances``:
    the empirical share where at least :data:`TAIL_MIN_COUNT` pairs are that close, below that a
    log-linear fit of the lower tail's cumulative counts (a sample of a few thousand pairs sees none
    of the one-in-100,000 look-alikes that a million photos' search tests). Never below the empirical
    share."""
    d = np.sort(distances[distances >= 0])
    n = len(d)
    if not n:
        return lambda h: 0.0
    xs = np.arange(0, PHASH_BITS + 1)
    counts = np.searchsorted(d, xs, side="right")
    lower = (counts >= TAIL_MIN_COUNT) & (xs <= np.median(d))
    if lower.sum() >= 2:
        slope, intercept = np.polyfit(xs[lower], np.log(counts[lower]), 1)
    elif lower.sum() == 1:
        slope, intercept = TAIL_SLOPE, math.log(counts[lower][0]) - TAIL_SLOPE * xs[lower][0]
    else:
        slope, intercept = TAIL_SLOPE, math.log(max(1, counts[-1])) - TAIL_SLOPE * float(d[0])
    slope = max(float(slope), TAIL_MIN_SLOPE)  # never a tail flatter than this (a few points can say so)

    def share(h: int) -> float:
        fitted = math.exp(intercept + slope * h) / n
        return max(float(counts[min(max(h, 0), PHASH_BITS)]) / n, min(1.0, fitted))
    return share


def cosine_tail(near_cosine: np.ndarray, tested: int) -> tuple[float, float]:
    """The copy cosine a collection whose search tests ``tested`` neighbour pairs needs, and the
    look-alike pairs expected above it. The closest look-alikes' distance to a cosine of 1 (``d = 1 -
    cosine``) falls off as a power of ``d`` (a bounded tail, near its end): the share of look-alikes
    within ``d`` is fitted as ``A * d ** alpha`` (log-log, the closest :data:`COSINE_TAIL_SHARE` of the
    sample, at least :data:`COSINE_TAIL_MIN`), and copy_cosine sits where ``tested * A * d ** alpha`` is
    :data:`MAX_EXPECTED_FALSE`. Never below the closest look-alike seen plus :data:`COSINE_MARGIN`; at
    most 0.9999. On the real ViT-B/32 features of 1,000 Unsplash photos (300 sampled x 10 neighbours)
    it gives 0.982 for 1,000 photos, 0.989 for 10,000, 0.995 for a million (none of the 10,000 pairs
    of the 1,000 lies above 0.970)."""
    d = np.sort(1.0 - np.asarray(near_cosine, dtype=np.float64))
    d = d[d > 0]  # a cosine of 1 is the same vector: an exact copy, never a look-alike
    if not len(d):
        return DEFAULT_COPY_COSINE, 0.0
    seen = min(0.9999, 1.0 - float(d[0]) + COSINE_MARGIN)
    top = max(COSINE_TAIL_MIN, math.ceil(len(d) * COSINE_TAIL_SHARE))
    if len(d) < top:  # too few to fit a tail: the default unless the closest seen is higher
        return min(0.9999, max(seen, DEFAULT_COPY_COSINE)), 0.0
    shares = np.arange(1, top + 1) / len(d)
    alpha, log_a = np.polyfit(np.log(d[:top]), np.log(shares), 1)
    alpha = max(float(alpha), 1.0)  # never a tail flatter than uniform in d

    def expected(copy: float) -> float:
        return tested * math.exp(log_a + alpha * math.log(max(1.0 - copy, 1e-12)))

    fitted = 1.0 - math.exp((math.log(MAX_EXPECTED_FALSE / max(1, tested)) - log_a) / alpha)
    copy = min(0.9999, max(seen, fitted))
    return copy, expected(copy)


def choose_rule(data: CalibrationData) -> DuplicateRule:
    """The rule that accepts the most altered copies and no look-alike of ``data``.

    ``copy_cosine`` from the look-alikes' cosine tail (:func:`cosine_tail`, scaled to the pairs a
    search of the whole collection tests); below it, up to :data:`MAX_PHASH_STEPS` pHash steps
    (band cosine, bits): for each distance ``h`` up to :data:`MAX_CALIBRATED_PHASH` the lowest band
    (at one of the copies' cosines, down to :data:`MIN_BAND_COSINE`) with no measured look-alike within
    ``h + PHASH_MARGIN`` bits above it, and whose look-alike pairs across the collection, extrapolated
    by :func:`phash_tail`, stay below :data:`MAX_EXPECTED_FALSE` (two steps: both together). A low band
    with few bits and a higher one with more (a look-alike close in pHash is rarer the more alike its
    cosine is too). Chosen for the most copies accepted (ties: the fewer steps, the narrower rule)."""
    tested = max(1, data.photos_total) * DEFAULT_K  # neighbour pairs a search of every photo tests
    copy, cosine_expected = cosine_tail(data.near_cosine, tested)
    pos_cos, pos_ph = data.copy_cosine, data.copy_phash
    neg_cos, neg_ph = data.near_cosine, data.near_phash
    tail = phash_tail(neg_ph)
    sorted_neg = np.sort(neg_cos)

    def in_band(band: float) -> float:  # share of look-alikes with band <= cosine < copy
        if not len(sorted_neg):
            return 0.0
        inside = np.searchsorted(sorted_neg, copy, side="left") - np.searchsorted(sorted_neg, band, side="left")
        return float(inside) / len(sorted_neg)

    def recall(steps: Sequence[Step]) -> float:
        hit = pos_cos >= copy
        for band, h in steps:
            hit = hit | ((pos_cos >= band) & (pos_ph >= 0) & (pos_ph <= h))
        return float(np.mean(hit)) if len(hit) else 0.0

    bands = sorted({float(c) for c in pos_cos if MIN_BAND_COSINE <= c < copy}, reverse=True)
    allowed: dict[int, list[float]] = {}  # h -> the bands a step of h bits may start at, highest first
    for h in range(MAX_CALIBRATED_PHASH + 1):
        neg_in = (neg_ph >= 0) & (neg_ph <= h + PHASH_MARGIN)
        ceiling = float(neg_cos[neg_in].max()) if neg_in.any() else -1.0  # a band must start above it
        allowed[h] = [b for b in bands if b > ceiling and tested * in_band(b) * tail(h) <= MAX_EXPECTED_FALSE]
    best: tuple[Step, ...] = ()
    best_recall, best_expected = recall(()), 0.0
    for h, options in allowed.items():  # one step: its lowest band
        if options and recall(((options[-1], h),)) > best_recall + 1e-12:
            best, best_recall = ((options[-1], h),), recall(((options[-1], h),))
            best_expected = tested * in_band(options[-1]) * tail(h)
    if MAX_PHASH_STEPS >= 2:
        for h1, low in allowed.items():
            if not low:
                continue
            b1 = low[-1]
            first = tested * in_band(b1) * tail(h1)
            for h2 in range(h1 + 1, MAX_CALIBRATED_PHASH + 1):
                # the lowest band above b1 at which both steps together stay within the expected false pairs
                b2 = next((b for b in reversed(allowed[h2]) if b > b1 and first + tested * in_band(b) * max(
                    0.0, tail(h2) - tail(h1)) <= MAX_EXPECTED_FALSE), None)
                if b2 is None:
                    continue
                pair: tuple[Step, ...] = ((b1, h1), (b2, h2))
                found = recall(pair)
                if found > best_recall + 1e-12:
                    best, best_recall = pair, found
                    best_expected = first + tested * in_band(b2) * max(0.0, tail(h2) - tail(h1))
    copy_r = round(copy, 4)
    steps = tuple((round(min(b, copy), 4), h) for b, h in best)
    band, bits = (steps[0][0], max(h for _, h in steps)) if steps else (copy_r, 0)
    return DuplicateRule(copy_cosine=copy_r, band_cosine=band, max_phash=bits, steps=steps if len(steps) > 1 else (),
                         source="calibrated", expected_false=round(best_expected + cosine_expected, 3),
                         expected_false_cosine=round(cosine_expected, 3))


def _scores(rule: DuplicateRule, data: CalibrationData, copies: np.ndarray, nears: np.ndarray) -> tuple[int, int, int]:
    """(copies accepted, copies, look-alikes accepted) of ``rule`` on the chosen entries."""
    def ok(cos: float, ph: int) -> bool:
        return rule.accepts(cos, None if ph < 0 else ph, None)

    tp = sum(ok(float(data.copy_cosine[i]), int(data.copy_phash[i])) for i in copies)
    fp = sum(ok(float(data.near_cosine[i]), int(data.near_phash[i])) for i in nears)
    return tp, len(copies), fp


def evaluate_rule(data: CalibrationData, seed: int = 0) -> tuple[float, float, dict[str, float]]:
    """Held-out precision and recall of :func:`choose_rule` on ``data``: the sampled photos split in
    two halves, a rule chosen on each and measured on the other, the counts added. Precision counts
    each altered copy as one true pair and each nearest different photo as one chance of a false
    one. Also the recall per alteration."""
    photos = np.unique(np.concatenate([data.copy_photo, data.near_photo]))
    rng = np.random.default_rng(seed)
    half = set(rng.permutation(photos)[:len(photos) // 2].tolist())
    tp = fp = total = 0
    per_kind: dict[str, list[int]] = {}
    for fold in (True, False):
        train_c = np.array([(p in half) == fold for p in data.copy_photo.tolist()], dtype=bool)
        train_n = np.array([(p in half) == fold for p in data.near_photo.tolist()], dtype=bool)
        rule = choose_rule(_subset(data, train_c, train_n))
        test_c, test_n = np.flatnonzero(~train_c), np.flatnonzero(~train_n)
        a, n, f = _scores(rule, data, test_c, test_n)
        tp, total, fp = tp + a, total + n, fp + f
        for i in test_c.tolist():
            hit = rule.accepts(float(data.copy_cosine[i]), None if data.copy_phash[i] < 0 else int(data.copy_phash[i]),
                               None)
            per_kind.setdefault(data.copy_kind[i], []).append(int(hit))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / total if total else 0.0
    return precision, recall, {k: float(np.mean(v)) for k, v in sorted(per_kind.items())}


def _subset(data: CalibrationData, copies: np.ndarray, nears: np.ndarray) -> CalibrationData:
    return CalibrationData(data.copy_cosine[copies], data.copy_phash[copies],
                           [k for k, keep in zip(data.copy_kind, copies.tolist()) if keep], data.copy_photo[copies],
                           data.near_cosine[nears], data.near_phash[nears], data.near_photo[nears], 0,
                           data.photos_total)


def calibrate(index: "Index", *, photos: int = CALIBRATION_PHOTOS, neighbours: int = CALIBRATION_NEIGHBOURS,
              seed: int = 0, save: bool = True, progress: Progress | None = None) -> DuplicateRule:
    """Calibrate the duplicate rule on the index's own photos and model, and store it for the model.

    ``photos`` sampled photos are altered (:data:`ALTERATIONS`) and encoded with the index's model;
    the :data:`DEFAULT_K` nearest different photos of ``neighbours`` sampled photos are the look-alikes
    (one whose pHash is within :data:`ALREADY_COPY_PHASH` bits, or taken within :data:`BURST_SECONDS`
    of it by EXIF, is a copy already in the photos, and left out: counted as a look-alike it would hold
    the rule back from the copies it should find).

    Fewer than :data:`MIN_CALIBRATION_PHOTOS` photos to sample measure nothing: :data:`DEFAULT_RULE`
    comes back, its ``note`` saying why, and nothing is stored (before the model is loaded). Raises
    :class:`DuplicatesError` when the model's weights are not at hand (imported embeddings) or too few
    photos can be read."""
    record = index.model_record()
    with index.lock:
        total = index.store.count_for_model(record, index.store.missing_roots(), "photos")
    sample = min(photos, total)
    if sample < MIN_CALIBRATION_PHOTOS:
        return replace(DEFAULT_RULE, note=(
            f"not calibrated: {sample} photos to sample ({total} indexed, {photos} asked for), and calibration "
            f"needs at least {MIN_CALIBRATION_PHOTOS} to measure anything; the default rule is used"))
    data = calibration_data(index, photos=photos, neighbours=neighbours, seed=seed, progress=progress)
    rule = choose_rule(data)
    precision, recall, per_kind = evaluate_rule(data, seed)
    note = (f"{data.already_copies} nearest photos were copies already in the collection (pHash within "
            f"{ALREADY_COPY_PHASH} bits or taken within {BURST_SECONDS:g} s) and were left out of the look-alikes"
            if data.already_copies else "")
    rule = replace(rule, precision=round(precision, 4), recall=round(recall, 4), copies=len(data.copy_cosine),
                   lookalikes=len(data.near_cosine), calibrated_at=time.time(), note=note,
                   by_alteration={k: round(v, 4) for k, v in per_kind.items()}, photos_total=total)
    if save and not index.store.readonly:
        record = index.model_record()
        with index.lock:
            index.store.save_duplicate_rule(record.id, rule.to_json())
    return rule


def calibration_data(index: "Index", *, photos: int = CALIBRATION_PHOTOS, neighbours: int = CALIBRATION_NEIGHBOURS,
                     seed: int = 0, progress: Progress | None = None) -> CalibrationData:
    """The measurements :func:`calibrate` chooses its rule from (see there)."""
    from clipdex.decode import open_image_file
    from clipdex.search.engine import ModelSearch
    from clipdex.search.filters import SearchFilter
    from clipdex.store.rows import allowed_rows, photos_of_rows

    record = index.model_record()
    try:
        encoder = index.encoder
    except ModelError as e:
        raise _no_weights(index, record, e) from None
    with index.lock:
        hidden = index.store.missing_roots()
        photos_only = SearchFilter(media="photos")
        rows = allowed_rows(index.store, record, photos_only, hidden)
        engine = ModelSearch(index.store, record)
        row_photo: dict[int, RowPhoto] = {}
        for p in photos_of_rows(index.store, record, rows, photos_only, hidden):
            row_photo.setdefault(p.row, p)
    if len(rows) < 2:
        raise DuplicatesError(str(index.path), f"calibration needs at least 2 photos, the index has {len(rows)}",
                              "Index more photos, or pass --threshold.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    alterations = _alterations()
    copy_cos: list[float] = []
    copy_ph: list[int] = []
    copy_kind: list[str] = []
    copy_photo: list[int] = []
    used = 0
    total = min(photos, len(rows))
    for i in order.tolist():
        if used >= total:
            break
        row = int(rows[i])
        photo = row_photo.get(row)
        if photo is None:
            continue
        try:
            image = open_image_file(photo.fs_path)
        except ImageDecodeError as e:
            log.info("calibration skips %s: %s", photo.path, e.reason)
            continue
        stored = engine.read(np.array([row]))[0]
        altered = [(name, make(image)) for name, make in alterations.items()]
        try:
            vectors = _encode(encoder, [im for _, im in altered])
        except ModelError as e:  # the weights are loaded on the first encoding
            raise _no_weights(index, record, e) from None
        original = phash_of_image(image)
        for (name, im), vector in zip(altered, vectors):
            copy_cos.append(float(vector @ stored))
            distance = phash_distance(original, phash_of_image(im))
            copy_ph.append(-1 if distance is None else distance)
            copy_kind.append(name)
            copy_photo.append(row)
        used += 1
        if progress:
            progress(used, total)
    if not used:
        raise DuplicatesError(str(index.path), "none of the sampled photos could be read to make altered copies",
                              "Check that the indexed folders are mounted (`clipdex status`), or pass --threshold.")
    # Look-alikes: every photo among the DEFAULT_K nearest of `neighbours` sampled photos (the pairs a
    # search tests), not only the nearest: a pHash distance has to hold against all of them.
    search, _ = _neighbour_search(engine, rows)
    picked = rows[order[:min(neighbours, len(rows))]]
    near_rows, near_scores = search(engine.read(picked), DEFAULT_K + 1)
    own = np.broadcast_to(picked[:, None], near_rows.shape)
    real = (near_rows >= 0) & (near_rows != own)
    pair_a, pair_b, near = own[real], near_rows[real], near_scores[real].astype(np.float32)
    floor = max(MIN_BAND_COSINE, min(copy_cos) if copy_cos else 1.0)
    # pHash only where it can matter: pairs above the lowest band calibration could choose.
    need = np.flatnonzero(near >= floor)
    with index.lock:  # every pair's photos: their capture times; pHash only for those of `need`
        files = index.store.files_by_ids([row_photo[int(r)].file_id for r in
                                          np.unique(np.concatenate([pair_a, pair_b]))
                                          if int(r) in row_photo])
    hash_of = {p.row: files[p.file_id].content_hash for p in row_photo.values() if p.file_id in files}
    needed = {int(r) for r in np.concatenate([pair_a[need], pair_b[need]]).tolist()}
    wanted = {h: files[row_photo[r].file_id].fs_path for r, h in hash_of.items() if h and r in needed}
    phashes, _ = phashes_for(index, {h: path for h, path in wanted.items() if h})
    near_ph = np.full(len(near), -1, dtype=np.int64)
    for j in need.tolist():
        a, b = hash_of.get(int(pair_a[j])) or "", hash_of.get(int(pair_b[j])) or ""
        d = phash_distance(phashes.get(a), phashes.get(b))
        near_ph[j] = -1 if d is None else d
    def taken(row: int) -> float:
        p = row_photo.get(row)
        return _exif_seconds(files.get(p.file_id) if p is not None else None)

    apart = np.array([abs(taken(int(a)) - taken(int(b))) for a, b in zip(pair_a.tolist(), pair_b.tolist())],
                     dtype=np.float64)
    with np.errstate(invalid="ignore"):
        burst = apart <= BURST_SECONDS  # NaN (no EXIF time): never
    already = ((near_ph >= 0) & (near_ph <= ALREADY_COPY_PHASH)) | burst
    keep = ~already
    return CalibrationData(
        copy_cosine=np.array(copy_cos, dtype=np.float32), copy_phash=np.array(copy_ph, dtype=np.int64),
        copy_kind=copy_kind, copy_photo=np.array(copy_photo, dtype=np.int64),
        near_cosine=near[keep], near_phash=near_ph[keep], near_photo=pair_a[keep].astype(np.int64),
        already_copies=len(np.unique(pair_a[already])), photos_total=len(rows))


def _encode(encoder: Any, images: list["Image.Image"]) -> np.ndarray:
    out = [np.asarray(encoder.encode_pil(images[i:i + ENCODE_BATCH]), dtype=np.float32)
           for i in range(0, len(images), ENCODE_BATCH)]
    vectors = np.concatenate(out)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _no_weights(index: "Index", record: "ModelRecord", error: ModelError) -> DuplicatesError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DuplicatesError(
        f"calibrating duplicates for {record.name} on index {index.path}",
        f"the model's weights are not at hand to encode altered copies of your photos ({shorten(first, 160)})",
        f"Pass --weights FILE of {record.name} to calibrate, or run without --calibrate: the default rule "
        f"({DEFAULT_RULE.describe()}) is used, and --threshold COSINE overrides it.", no_weights=True)


def rule_for(index: "Index", *, threshold: float | None = None, no_phash: bool = False,
             max_phash: int | None = None) -> tuple[DuplicateRule, str]:
    """The rule a run uses, and a note on where it came from: ``--threshold`` over the calibrated rule
    over :data:`DEFAULT_RULE` (:meth:`DuplicateRule.overridden`); ``no_phash`` judges by cosine (and
    capture time) alone, ``max_phash`` replaces every pHash step's distance. A rule calibrated on a
    collection that has since grown :data:`RECALIBRATE_GROWTH` times over (its look-alikes' tail no
    longer fits the pairs a search tests) is not used: the default rule is, and the note says loudly
    to calibrate again. Raises :class:`DuplicatesError` for a ``threshold`` below :data:`MIN_BAND_COSINE`."""
    stored = stored_rule(index)
    rule = DEFAULT_RULE
    base = "default"
    if stored is not None:
        when = (time.strftime(" on %Y-%m-%d", time.localtime(stored.calibrated_at)) if stored.calibrated_at
                else "")
        record = index.model_record()
        with index.lock:
            now = index.store.count_for_model(record, index.store.missing_roots(), "photos")
        if stored.photos_total and now > stored.photos_total * RECALIBRATE_GROWTH:
            note = (f"NOT USING the rule calibrated{when} on {stored.photos_total} photos: the collection has grown to "
                    f"{now}, and a rule measured on the smaller one lets through more look-alikes here. The default "
                    "rule is used; run `clipdex duplicates --calibrate` to calibrate it again")
        else:
            rule, base = stored, "calibrated"
            size = (f" ({stored.photos_total} photos then, {now} now)" if stored.photos_total
                    else " (by an older clipdex: the collection's size then is unknown; --calibrate measures again)")
            note = f"calibrated on your photos{when}{size}"
    else:
        note = ("not calibrated: the default rule (`clipdex duplicates --calibrate` calibrates it on your "
                "photos; it needs the model's weights)")
    if threshold is not None:
        note = f"--threshold {threshold:g} over the {base} rule's band"
    return rule.overridden(threshold=threshold, max_phash=max_phash, no_phash=no_phash), note
