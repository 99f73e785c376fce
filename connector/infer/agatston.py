"""Exact Agatston and volume scoring, and the lesion-level rule that lets a model choose lesions.

Why separate from the model: the model only says *which* calcium is coronary; the numbers the
registry stores must follow the published rule exactly so that results are comparable across sites
and model versions. The rule (Agatston 1990, as used for CTAC scans):

- candidate lesions: 8-connected components of HU >= 130 pixels, slice by slice;
- a lesion counts only if its area is at least 1 mm^2;
- weight from the lesion's peak HU: 130-199 -> 1, 200-299 -> 2, 300-399 -> 3, >= 400 -> 4;
- score = sum(area_mm2 x weight) x (slice increment / 3 mm), so overlapping or thinner
  reconstructions give the same score as contiguous 3 mm slices;
- volume = sum(area_mm2) x slice increment;
- category from the unrounded score: 0, 1-100, 101-400, >400.

Which lesions are coronary (:func:`select_coronary`): a reader, or a network, says a lesion is
coronary and then the WHOLE lesion is scored, as readers and published pipelines do. The model's
say comes as per-pixel marks: CORONARY (the model's coronary-calcium class inside its heart region)
or OTHER (non-coronary calcium: bone, aorta, valves, or coronary-looking calcium outside the heart).

1. Units, per slice: each candidate component is a unit. A component carrying both kinds of marks
   is split by them (seeded region growing: the marks flood the component, cheapest HU step first,
   so the parts meet where the density jumps, a lesion's edge against brighter aortic calcium, else
   about half-way between the marks). When that gives one connected coronary part and one connected
   other part joined by a neck (touching pixels <= ``NECK_RATIO`` (1.0) x the equivalent diameter
   of the smaller part; a straight cut through one convex blob is always longer, >= 1.4 x), they
   are two objects that touch, say a coronary lesion against aortic-wall calcium: only the coronary
   part stays a unit, with its own pixels and so its own peak HU. Otherwise (coronary marks around
   an "other" core, scattered votes) the component stays one unit.
2. Lesions, across slices: a unit with at least one CORONARY mark starts a lesion; a unit on an
   adjacent slice joins it, transitively, when the two overlap in-plane by at least
   ``OVERLAP_TO_JOIN`` (half) of the smaller one's pixels (the same lesion continuing; calcium that
   merely touches it diagonally does not join). A unit with more OTHER than CORONARY marks is
   never pooled: it is judged alone, on its own marks (on held-out phantoms a valve cusp lying on a
   coronary lesion's slices was otherwise carried in). The model is often unsure on a lesion's end
   slices (few or no marks there); the lesion is one object, so it is judged once.
3. A lesion is coronary when at least ``MIN_CORONARY_FRACTION`` (20 %) of its pixels are marked
   CORONARY; every unit of it is then scored whole (each slice by the Agatston rule above).

Why 20 %: on the bundled model's own held-out phantoms the classes never mix (non-coronary
components carry no coronary mark at all, coronary ones are >= 40 % marked), so the threshold only
matters on scans unlike the training data. There, slices of big dense coronary lesions (radius
5-7 px, 480-700 HU) were seen marked ~22-34 % coronary (the rim; the core looks like bone to the model) and
valve calcium ~17 %: 20 % scores the former whole and leaves the latter out, with a thin margin
that only a better model widens (see docs/cac.md).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

HU_THRESHOLD = 130.0
MIN_LESION_AREA_MM2 = 1.0
REFERENCE_INCREMENT_MM = 3.0
CATEGORIES = ("0", "1-100", "101-400", ">400")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_AREA_EPS = 1e-9  # float slack so 4 x 0.25 mm^2 counts as the 1 mm^2 it is
MIN_CORONARY_FRACTION = 0.2  # an object is coronary when >= this share of its pixels is marked coronary
NECK_RATIO = 1.0  # touching pixels / equivalent diameter of the smaller part up to which parts are split
UNITS_CACHE_SLICES = 48  # slices whose candidate units select_coronary keeps (about 1 MB each at 512²)
OVERLAP_TO_JOIN = 0.5  # units on adjacent slices are one lesion when they overlap by this share of the smaller

NO_MARK, CORONARY, OTHER = 0, 1, 2
MarkLookup = Callable[[int, np.ndarray, np.ndarray], np.ndarray]
"""(slice index, rows, columns) -> the model's mark (NO_MARK, CORONARY, OTHER) of each of those pixels."""


@dataclass(frozen=True)
class Lesion:
    """One scored lesion on one slice."""

    slice_index: int
    pixels: int
    area_mm2: float
    peak_hu: float
    weight: int
    score: float  # area x weight x increment / 3 mm


@dataclass(frozen=True)
class AgatstonResult:
    score: float
    volume_mm3: float
    lesions: tuple[Lesion, ...]
    slice_increment_mm: float
    # (slices, rows, columns) uint8: each scored lesion's density weight (1-4) on its pixels, 0 elsewhere.
    # What the scored-calcium map, the study page and the DICOM SEG show. None only when built by hand.
    weights: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The volume's slice that weights[0] is (the runtime scores only the heart's slices).
    first_slice: int = field(default=0, compare=False)

    @property
    def lesion_count(self) -> int:
        return len(self.lesions)

    @property
    def category(self) -> str:
        return category_for(self.score)


def density_weight(peak_hu: float) -> int:
    """Agatston density factor of a lesion from its peak HU (0 below the 130 HU threshold)."""
    if peak_hu >= 400:
        return 4
    if peak_hu >= 300:
        return 3
    if peak_hu >= 200:
        return 2
    if peak_hu >= HU_THRESHOLD:
        return 1
    return 0


def category_for(score: float) -> str:
    """Risk category from the *unrounded* score: "0", "1-100", "101-400" or ">400"."""
    if score <= 0:
        return CATEGORIES[0]
    if score <= 100:
        return CATEGORIES[1]
    if score <= 400:
        return CATEGORIES[2]
    return CATEGORIES[3]


def agatston(
    hu: np.ndarray,
    mask: np.ndarray | None,
    pixel_spacing: tuple[float, float],
    slice_increment: float,
    *,
    first_slice: int = 0,
) -> AgatstonResult:
    """Score a volume ``hu`` (Z, Y, X) in Hounsfield units.

    ``first_slice``: ``hu`` is that slab of a larger volume, from that slice on (lesions carry the
    volume's slice numbers; ``weights`` covers the slab only).

    ``mask`` (same shape, bool) restricts scoring to coronary calcium; None scores every voxel
    (useful for phantoms). ``pixel_spacing`` is (row, column) in mm; ``slice_increment`` is the
    distance between slice centres in mm (not the slice thickness).
    """
    if hu.ndim != 3:
        raise ValueError("hu must be a (slices, rows, columns) volume")
    if mask is not None and mask.shape != hu.shape:
        raise ValueError("mask and hu differ in shape")
    if slice_increment <= 0 or min(pixel_spacing) <= 0:
        raise ValueError("spacing must be positive")
    pixel_area = float(pixel_spacing[0]) * float(pixel_spacing[1])
    z_factor = float(slice_increment) / REFERENCE_INCREMENT_MM
    lesions: list[Lesion] = []
    weights = np.zeros(hu.shape, dtype=np.uint8)
    for k in range(hu.shape[0]):
        candidate = hu[k] >= HU_THRESHOLD
        if mask is not None:
            candidate &= mask[k]
        if not candidate.any():
            continue
        labels, count = ndimage.label(candidate, structure=_EIGHT_CONNECTED)
        index = np.arange(1, count + 1)
        # sizes and peaks over the labelled pixels only (ndimage.maximum walks the whole slice, 10+ ms
        # at 512², for the same values)
        at = np.flatnonzero(labels)
        lab = labels.ravel()[at]
        sizes = np.bincount(lab, minlength=count + 1)[1:]
        order = np.argsort(lab, kind="stable")
        starts = np.searchsorted(lab[order], index)
        peaks = np.maximum.reduceat(hu[k].ravel()[at][order], starts)
        lut = np.zeros(count + 1, dtype=np.uint8)
        for label, pixels, peak in zip(index, sizes, peaks, strict=True):
            area = float(pixels) * pixel_area
            if area + _AREA_EPS < MIN_LESION_AREA_MM2:
                continue
            weight = density_weight(float(peak))
            lut[label] = weight
            lesions.append(Lesion(k + first_slice, int(pixels), area, float(peak), weight, area * weight * z_factor))
        if lut.any():
            weights[k] = lut[labels]
    score = float(sum(lesion.area_mm2 * lesion.weight for lesion in lesions) * z_factor)
    volume = float(sum(lesion.area_mm2 for lesion in lesions) * slice_increment)
    return AgatstonResult(
        score=score,
        volume_mm3=volume,
        lesions=tuple(lesions),
        slice_increment_mm=float(slice_increment),
        weights=weights,
        first_slice=first_slice,
    )



def marks_from_array(marks: np.ndarray) -> MarkLookup:
    """A :data:`MarkLookup` over a full-resolution (slices, rows, columns) volume of mark codes."""

    def lookup(k: int, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
        return marks[k, rr, cc]

    return lookup


def select_coronary(
    hu: np.ndarray,
    marks: MarkLookup | np.ndarray,
    *,
    slices: Iterable[int] | None = None,
    min_fraction: float = MIN_CORONARY_FRACTION,
    neck_ratio: float = NECK_RATIO,
    within: tuple[int, int] | None = None,
    units: UnitCache | None = None,
) -> np.ndarray:
    """Full-resolution mask of the coronary lesions, each whole (or a split-off coronary part).

    ``marks`` is a :data:`MarkLookup` or a full volume of mark codes; ``slices`` names the slices
    that carry a coronary mark at all (the caller knows them cheaply; None: every slice), which is
    where lesions can start. ``within`` (first, last): the mask of those slices only, shape
    (last - first + 1, rows, columns) (lesions are still followed and judged across every slice,
    so the choice is the same as on the whole volume). ``units``: a cache already filled for these
    ``hu`` and marks (:func:`lesion_reach`'s), so no slice's units are computed twice. Score the
    result with :func:`agatston`. The rule is in the module docstring.
    """
    if hu.ndim != 3:
        raise ValueError("hu must be a (slices, rows, columns) volume")
    lookup = marks_from_array(marks) if isinstance(marks, np.ndarray) else marks
    first, last = (0, hu.shape[0] - 1) if within is None else within
    mask = np.zeros((max(0, last - first + 1), *hu.shape[1:]), dtype=bool)
    units = UnitCache(hu, lookup, neck_ratio) if units is None else units

    seen: set[tuple[int, int]] = set()
    for k in range(hu.shape[0]) if slices is None else slices:
        for seed in np.flatnonzero(units(k).coronary > 0):
            if (k, int(seed)) in seen:
                continue
            lesion = [(k, int(seed))]
            seen.add(lesion[0])
            todo = [] if _mostly_other(units(k), int(seed)) else list(lesion)
            while todo:  # the units that touch it on the slices above and below, transitively
                j, v = todo.pop()
                here = units(j)
                for j2 in (j - 1, j + 1):
                    if not 0 <= j2 < hu.shape[0]:
                        continue
                    there = units(j2)
                    for w in _joined_units(here, v, there):
                        if (j2, w) in seen:
                            continue
                        if not _mostly_other(there, w):
                            seen.add((j2, w))
                            lesion.append((j2, w))
                            todo.append((j2, w))
            pixels = sum(int(units(j).pixels[v]) for j, v in lesion)
            coronary = sum(int(units(j).coronary[v]) for j, v in lesion)
            if coronary >= min_fraction * pixels:
                for j, v in lesion:
                    if first <= j <= last:
                        box = units(j).boxes[v - 1]
                        mask[j - first][box] |= units(j).labels[box] == v
    return mask


class UnitCache:
    """The candidate units of a volume's slices, computed when first asked for.

    A slice's units are a pure function of its HU and marks: the most recently used are kept (a
    lesion runs over a few neighbouring slices), older ones recomputed if a lesion comes back to
    them, so memory stays bounded on a whole-body scan with marks on hundreds of slices. A slice
    must not be asked for before its marks are final (:func:`lesion_reach` asks only for those)."""

    def __init__(self, hu: np.ndarray, lookup: MarkLookup, neck_ratio: float = NECK_RATIO,
                 size: int = UNITS_CACHE_SLICES) -> None:
        self.hu, self.lookup, self.neck_ratio, self.size = hu, lookup, neck_ratio, size
        self._cache: OrderedDict[int, _SliceUnits] = OrderedDict()

    def __call__(self, k: int) -> _SliceUnits:
        cache = self._cache
        if k in cache:
            cache.move_to_end(k)
        else:
            cache[k] = _slice_units(self.hu[k], k, self.lookup, self.neck_ratio)
            if len(cache) > self.size:
                cache.popitem(last=False)
        return cache[k]


def lesion_reach(
    units: UnitCache, known: np.ndarray, inside: np.ndarray, first: int, min_share: float = 0.5
) -> list[int]:
    """Slices still without marks that the choice of a lesion scorable in ``inside`` depends on.

    ``inside`` (slices first.., rows, columns) bool: where a lesion may be scored (the heart region's
    slab: ``HeartRegion.restrict_slab`` keeps a chosen unit, which is a piece of the mask, only with
    at least ``min_share`` of its pixels there); ``known`` (per slice of the volume) bool: the slices
    whose marks ``units`` can already use. Returned: each region slice with a candidate pixel inside
    but no marks (its units are not known yet), and each unknown slice next to a unit of a lesion
    with a unit so scorable where that unit overlaps any candidate (HU >= 130) pixel, since the lesion
    may continue there (a unit there is a part of such a candidate, so no overlap, no join). Mark those,
    call again, until it returns []: then every lesion that can be scored lies on known slices and
    :func:`select_coronary` chooses exactly as with marks on every slice (its unknown slices' units
    form lesions of their own, with no pixel inside, which ``restrict_slab`` drops)."""
    hu, n = units.hu, len(known)
    needed: set[int] = set()
    todo: list[tuple[int, int]] = []
    for i in range(len(inside)):
        k = first + i
        candidate = inside[i] & (hu[k] >= HU_THRESHOLD)
        if not candidate.any():
            continue
        if not known[k]:
            needed.add(k)
            continue
        here = units(k)
        ids, count = np.unique(here.labels[candidate], return_counts=True)
        todo.extend((k, int(v)) for v, c in zip(ids, count, strict=True) if v and c >= min_share * here.pixels[v])
    seen = set(todo)
    while todo:
        j, v = todo.pop()
        here = units(j)
        if _mostly_other(here, v):  # judged alone, never pooled (select_coronary)
            continue
        box = here.boxes[v - 1]
        footprint = here.labels[box] == v
        for j2 in (j - 1, j + 1):
            if not 0 <= j2 < n or j2 in needed:
                continue
            if not known[j2]:
                if (hu[j2][box][footprint] >= HU_THRESHOLD).any():
                    needed.add(j2)
                continue
            there = units(j2)
            for w in _joined_units(here, v, there):
                if (j2, w) not in seen:
                    seen.add((j2, w))
                    todo.append((j2, w))
    return sorted(needed)


def _joined_units(here: _SliceUnits, v: int, there: _SliceUnits) -> list[int]:
    """The units of a neighbouring slice that overlap unit ``v`` of ``here`` enough to be one lesion
    with it (shared by the lesion choice and the growth of the model's slice set, so both follow a
    lesion alike)."""
    box = here.boxes[v - 1]
    below = there.labels[box][here.labels[box] == v]
    ids, overlaps = np.unique(below[below > 0], return_counts=True)
    return [int(w) for w, overlap in zip(ids, overlaps, strict=True)
            if overlap >= OVERLAP_TO_JOIN * min(here.pixels[v], there.pixels[w])]


def _mostly_other(units: _SliceUnits, w: int) -> bool:
    """More OTHER than CORONARY marks: such a unit is judged on its own marks, never pooled."""
    return bool(units.other[w] > units.coronary[w])


@dataclass
class _SliceUnits:
    """One slice's candidate units: 130 HU components, a split one reduced to its coronary part."""

    labels: np.ndarray  # (rows, columns) unit number, 0 outside every unit
    pixels: np.ndarray  # per unit number: pixels, CORONARY-marked pixels, OTHER-marked pixels
    coronary: np.ndarray
    other: np.ndarray
    boxes: list[tuple[slice, slice]]


def _slice_units(hu: np.ndarray, k: int, lookup: MarkLookup, neck_ratio: float) -> _SliceUnits:
    candidate = hu >= HU_THRESHOLD
    labels = np.zeros(hu.shape, dtype=np.int32)
    rows, cols = np.flatnonzero(candidate.any(axis=1)), np.flatnonzero(candidate.any(axis=0))
    if not len(rows):
        empty = np.zeros(1, dtype=np.int64)
        return _SliceUnits(labels, empty, empty, empty, [])
    # Labelled inside the candidates' bounding box only (about 1 % of a CT slice is >= 130 HU, often in
    # a third of its area): the same labels, numbered in the same raster order, in a fraction of the time.
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    count = ndimage.label(candidate[r0:r1, c0:c1], structure=_EIGHT_CONNECTED, output=labels[r0:r1, c0:c1])
    rr, cc = np.nonzero(labels[r0:r1, c0:c1])
    rr += r0
    cc += c0
    lab = labels[rr, cc]
    code = np.asarray(lookup(k, rr, cc))
    pixels = np.bincount(lab, minlength=count + 1)
    coronary = np.bincount(lab, weights=code == CORONARY, minlength=count + 1).astype(np.int64)
    other = np.bincount(lab, weights=code == OTHER, minlength=count + 1).astype(np.int64)
    boxes = [(slice(b[0].start + r0, b[0].stop + r0), slice(b[1].start + c0, b[1].stop + c0))
             for b in ndimage.find_objects(labels[r0:r1, c0:c1])]
    for label in np.flatnonzero((coronary > 0) & (other > 0)):
        box = boxes[label - 1]
        assert box is not None
        sel = lab == label
        codes = np.zeros(labels[box].shape, dtype=np.uint8)
        codes[rr[sel] - box[0].start, cc[sel] - box[1].start] = code[sel]
        component = labels[box] == label
        part = _coronary_part(hu[box], component, codes, neck_ratio)
        if part is not None:  # two objects that touch: the other one is never a candidate
            labels[box][component & ~part] = 0
            pixels[label] = int(part.sum())
            coronary[label] = int((codes[part] == CORONARY).sum())
            other[label] = int((codes[part] == OTHER).sum())
    return _SliceUnits(labels, pixels, coronary, other, boxes)  # type: ignore[arg-type]


def _split_by_marks(hu: np.ndarray, component: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each pixel of ``component`` gets the kind of mark that reaches it first when the marks flood
    the component, cheapest step first, a step costing the HU difference between neighbours (seeded
    region growing, a watershed on local contrast; ties first come first served): the parts meet
    where the density jumps (a lesion's edge against brighter aortic calcium), or about half-way
    between the marks where it does not. Mixed components are rare and small, so plain Python over
    their pixels costs little."""
    values = hu.astype(np.float64)
    parts = np.zeros(component.shape, dtype=np.uint8)
    rows, cols = component.shape
    heap: list[tuple[float, int, int, int, int]] = []
    for order, (r, c) in enumerate(np.argwhere(component & (codes > 0))):
        heap.append((0.0, order, int(r), int(c), int(codes[r, c])))
    heapq.heapify(heap)
    order = len(heap)
    while heap:
        _, _, r, c, label = heapq.heappop(heap)
        if parts[r, c]:
            continue
        parts[r, c] = label
        for nr in range(max(r - 1, 0), min(r + 2, rows)):
            for nc in range(max(c - 1, 0), min(c + 2, cols)):
                if component[nr, nc] and not parts[nr, nc]:
                    heapq.heappush(heap, (abs(values[nr, nc] - values[r, c]), order, nr, nc, label))
                    order += 1
    return parts


def _coronary_part(hu: np.ndarray, component: np.ndarray, codes: np.ndarray, neck_ratio: float) -> np.ndarray | None:
    """The coronary part of a component marked both ways when it is two objects that touch, else None."""
    parts = _split_by_marks(hu, component, codes)
    cor_part = component & (parts == CORONARY)
    other_part = component & (parts == OTHER)
    _, cor_pieces = ndimage.label(cor_part, structure=_EIGHT_CONNECTED)
    _, other_pieces = ndimage.label(other_part, structure=_EIGHT_CONNECTED)
    if cor_pieces != 1 or other_pieces != 1:
        return None
    contact = int((cor_part & ndimage.binary_dilation(other_part, structure=_EIGHT_CONNECTED)).sum())
    smaller = min(int(cor_part.sum()), int(other_part.sum()))
    return cor_part if contact <= neck_ratio * 2.0 * np.sqrt(smaller / np.pi) else None
