"""Where the heart is, found without the model: the only place calcium may be scored.

Why: a CT attenuation-correction scan of a PET/CT reaches far beyond the heart (neck to upper
abdomen, often the whole body). On anatomy nobody here drew, both bundled models scored the spine
and ribs below the heart and the costal cartilage beside it (a scan without coronary calcium
scored 4,772). Coronary calcium is, by definition, on the heart. So before any lesion counts, the
runtime finds the heart with plain image analysis that shares nothing with the network, and a
lesion outside that region is never scored, whatever the network says.

The method, per axial slice on a ~3 mm grid (cheap: 1-2 ms a slice; each slice is
treated on its own, but every labelling is one call for a slab of up to 64 slices, with
4-connectivity within the slice only, so the result is the same as slice by slice and memory does
not grow with the slice count):

1. body: the largest region above -500 HU, holes filled; lungs: air (< -500 HU) inside it, in
   pieces of at least 5 cm2 (bowel gas and the trachea are smaller or outside the lungs' hull);
2. the thoracic cavity between the lungs: the convex hull of both lungs (the heart sits between
   and in front of them), only where both a left and a right lung are present;
3. the mediastinum: soft tissue and fat (> -250 HU) inside that hull, in front of the spine's
   anterior edge (the spine's body is the largest bone piece behind the hull's centre), the largest
   such piece within ``MIDLINE_MM`` of the body's midline (the liver's dome rises as an island into
   the right lung base, level with the heart's lower half, and can be larger than the heart's section);
4. the heart's slices: the contiguous run around the slice with the largest mediastinum whose
   area stays above 45 % of that maximum (the great vessels above have far less), widened by
   ``Z_MARGIN_MM``; in-plane, the mediastinum of those slices widened by ``XY_MARGIN_MM``
   (epicardial fat and the coronaries on the surface). Only where the lungs fill enough of their
   hull: below the diaphragm's domes the lung bases are thin rims round the liver and stomach, and
   the hull of those rims holds a "mediastinum" larger than the heart. The run's centre slice needs
   ``PEAK_LUNG_SHARE`` (lungs / hull), the run ``RUN_LUNG_SHARE`` (the heart's lowest slices sit on
   the diaphragm), and only slices of ``PEAK_LUNG_SHARE`` shape the in-plane region.

Dense pieces larger than any coronary plaque (>= 1.5 cm2: sternum, costal cartilage, ribs, spine)
lying mostly outside the cavity are cut out of the widened region at the series' own resolution,
so widening never brings the chest wall in, while a plaque near the sternum stays. A scan in which no heart is found
(no lungs on both sides anywhere, e.g. a head or abdomen CT) is not scored at all: the result
says ``heart_not_found`` rather than a number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

GRID_MM = 3.0  # the working grid's pixel size
BODY_HU, AIR_HU, SOFT_HU, BONE_HU = -500.0, -500.0, -250.0, 180.0
MIN_LUNG_CM2 = 5.0
PEAK_LUNG_SHARE = 0.4  # lungs / their hull: 0.45-0.8 at the heart's middle, 0.1-0.38 round the liver dome
RUN_LUNG_SHARE = 0.3
MIDLINE_MM = 15.0  # the mediastinum reaches at least this close to the body's midline
MIN_HEART_CM2 = 25.0  # a slice whose mediastinum is smaller holds no heart (or only its tip)
RUN_FRACTION = 0.45
Z_MARGIN_MM = 12.0
XY_MARGIN_MM = 10.0
ANTERIOR_MM = 30.0  # the heart's front lies beyond the lungs' hull, up to the sternum: reach this far for it
CHEST_WALL_MIN_MM2 = 150.0  # bone pieces this large are skeleton (sternum, ribs, vertebrae); coronary plaques are smaller


@dataclass(frozen=True)
class HeartRegion:
    """``slab`` (last - first + 1, rows, cols) bool: the region on the heart's slices first..last of the
    series grid (nothing lies outside them); ``mask`` the same on the whole volume."""

    slab: np.ndarray
    first: int
    last: int
    areas_cm2: tuple[float, ...]  # mediastinum area per slice (diagnostics, tests)

    @property
    def found(self) -> bool:
        return self.last >= self.first

    @property
    def mask(self) -> np.ndarray:
        """The region on the whole volume (slices, rows, cols) (tests, tools; the runtime uses ``slab``)."""
        out = np.zeros((len(self.areas_cm2), *self.slab.shape[1:]), dtype=bool)
        if self.found:
            out[self.first : self.last + 1] = self.slab
        return out

    def restrict(self, lesions: np.ndarray, min_share: float = 0.5) -> np.ndarray:
        """``lesions`` (a bool mask like the volume) keeping only the lesions (8-connected pieces per
        slice) that lie at least ``min_share`` inside the region: a lesion is kept or dropped whole."""
        out = np.zeros_like(lesions)
        if self.found:
            out[self.first : self.last + 1] = self.restrict_slab(lesions[self.first : self.last + 1], min_share)
        return out

    def restrict_slab(self, lesions: np.ndarray, min_share: float = 0.5) -> np.ndarray:
        """:meth:`restrict` for a mask of the heart's slices only (first..last), as ``slab``."""
        out = np.zeros_like(lesions)
        if not self.found:
            return out
        eight = np.ones((3, 3), dtype=bool)
        for k in np.flatnonzero(lesions.any(axis=(1, 2))):
            labels, n = ndimage.label(lesions[k], structure=eight)
            total = np.bincount(labels.ravel(), minlength=n + 1)
            inside = np.bincount(labels[self.slab[k]], minlength=n + 1)
            keep = np.flatnonzero((inside >= min_share * total) & (np.arange(n + 1) > 0))
            out[k] = np.isin(labels, keep)
        return out


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within a slice, never across slices


def _label_slices(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """(labels, count, each slice's last label) of ``mask`` (slices, rows, cols) labelled slice by
    slice in one call: no piece crosses slices, and as labels are numbered in scan order each slice's
    pieces get consecutive labels in the order a 2-D labelling of that slice gives them (so ties
    between equal sizes break the same way). Slice k holds labels ends[k-1]+1..ends[k]."""
    labels, n = ndimage.label(mask, structure=_IN_PLANE)
    ends = np.maximum.accumulate(labels.reshape(len(labels), -1).max(axis=1, initial=0))
    return labels, n, ends


def _largest_per_slice(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected piece of every slice of ``mask`` (the first of equal ones, in scan order)."""
    labels, n, ends = _label_slices(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.zeros(n + 1, dtype=bool)
    start = 1
    for end in ends:
        if end >= start:
            keep[start + int(sizes[start : end + 1].argmax())] = True
            start = int(end) + 1
    return keep[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` (4-connected background) of every slice of ``mask`` (slices, rows,
    cols) by one labelling instead of an iterated dilation: background pieces that do not reach the
    slice's edge are holes."""
    labels, n = ndimage.label(~mask, structure=_IN_PLANE)
    if n == 0:
        return mask.copy()
    border = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        border[edge] = True
    border[0] = True  # the mask itself
    return mask | ~border[labels]


def _hull(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Filled convex hull of ``points`` (N, 2 row/col) on a grid of ``shape``, filled row by row
    (each row of a convex polygon is one span: from the edges' crossings)."""
    out = np.zeros(shape, dtype=bool)
    if len(points) < 3:
        return out
    try:
        hull = ConvexHull(points)
    except QhullError:
        return out
    poly = points[hull.vertices].astype(np.float64)
    r0, r1 = int(np.ceil(poly[:, 0].min())), int(np.floor(poly[:, 0].max()))
    a, b = poly, np.roll(poly, -1, axis=0)
    sloped = a[:, 0] != b[:, 0]  # a flat edge crosses no row on its own: its ends are other edges' ends
    a, b = a[sloped], b[sloped]
    rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    crosses = (rows >= np.minimum(a[:, 0], b[:, 0])) & (rows <= np.maximum(a[:, 0], b[:, 0]))
    x = a[:, 1] + (rows - a[:, 0]) / (b[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    left = np.where(crosses, x, np.inf).min(axis=1, initial=np.inf)
    right = np.where(crosses, x, -np.inf).max(axis=1, initial=-np.inf)
    spans = left <= right
    c0 = np.where(spans, np.ceil(np.where(spans, left, 0.0)), 0.0).clip(0, None)
    c1 = np.where(spans, np.floor(np.where(spans, right, -1.0)) + 1, 0.0).clip(None, shape[1])
    columns = np.arange(shape[1])
    out[r0 : r1 + 1] = (columns >= c0[:, None]) & (columns < c1[:, None])
    return out


def _row_extremes(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(N, 2) row/col points: the leftmost and rightmost set pixel of every row of ``mask`` (whose
    first pixel is at ``origin``). Their convex hull is the hull of all set pixels (a hull vertex is
    extreme in its row), from far fewer points; sorted and each pixel once, as np.argwhere's are."""
    rows = np.flatnonzero(mask.any(axis=1))
    sub = mask[rows]
    points = np.empty((len(rows), 2, 2), dtype=np.int64)
    points[:, :, 0] = (rows + origin[0])[:, None]
    points[:, 0, 1] = sub.argmax(axis=1) + origin[1]
    points[:, 1, 1] = mask.shape[1] - 1 - sub[:, ::-1].argmax(axis=1) + origin[1]
    single = points[:, 0, 1] == points[:, 1, 1]  # one pixel wide: its point once
    return points.reshape(-1, 2)[~np.stack([np.zeros_like(single), single], axis=1).ravel()]


SLAB_SLICES = 64  # slices worked on together: labels and temporaries for these only, so memory stays flat


def _cavities(small: np.ndarray, px_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mediastinum mask, its area in cm2, the lungs' share of their hull, the large bone) for every
    slice of ``small`` (the working grid). Each slice is worked on alone, but the labellings are done
    for ``SLAB_SLICES`` slices at once (one call each per slab instead of one a slice; slabs keep the
    labels and temporaries small whatever the slice count) and within the box holding every pixel
    above ``BODY_HU`` (everything looked at lies inside it: body, air within it, bone); only the hull
    is drawn slice by slice, on the whole grid's coordinates as before."""
    n = len(small)
    cavities, bone = np.zeros(small.shape, dtype=bool), np.zeros(small.shape, dtype=bool)
    areas, shares = np.zeros(n), np.zeros(n)
    row_any, col_any = np.zeros(small.shape[1], dtype=bool), np.zeros(small.shape[2], dtype=bool)
    for k0 in range(0, n, SLAB_SLICES):
        above = small[k0 : k0 + SLAB_SLICES] > BODY_HU
        row_any |= above.any(axis=(0, 2))
        col_any |= above.any(axis=(0, 1))
    in_rows, in_cols = np.flatnonzero(row_any), np.flatnonzero(col_any)
    if not len(in_rows):
        return cavities, areas, shares, bone
    box = (int(in_rows[0]), int(in_rows[-1]) + 1, int(in_cols[0]), int(in_cols[-1]) + 1)
    for k0 in range(0, n, SLAB_SLICES):
        part = slice(k0, k0 + SLAB_SLICES)
        _cavities_slab(small[part], px_mm, box, cavities[part], areas[part], shares[part], bone[part])
    return cavities, areas, shares, bone


def _cavities_slab(small: np.ndarray, px_mm: float, box: tuple[int, int, int, int], cavities: np.ndarray,
                   areas: np.ndarray, shares: np.ndarray, bone: np.ndarray) -> None:
    """:func:`_cavities` for a slab of slices within ``box`` (r0, r1, c0, c1), written into the given
    views of its results. Pieces never cross slices, so a slab gives each slice what the whole stack
    would: within a slice the labels keep their scan order, and with it the ties' outcome."""
    _, rows, cols = small.shape
    r0, r1, c0, c1 = box
    inside = (slice(None), slice(r0, r1), slice(c0, c1))
    hu = small[inside]
    above = hu > BODY_HU
    h = r1 - r0
    cm2 = px_mm * px_mm / 100.0
    body = _fill_holes(_largest_per_slice(above))
    air = body & (hu < AIR_HU)
    labels, count = ndimage.label(air, structure=_IN_PLANE)
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * cm2
    big = sizes >= MIN_LUNG_CM2
    big[0] = False
    lungs = big[labels]
    del labels
    body_cols = body.any(axis=1)  # (slices, cols)
    has_body = body_cols.any(axis=1)
    first_col = body_cols.argmax(axis=1) + c0
    last_col = c1 - 1 - body_cols[:, ::-1].argmax(axis=1)
    centre = (first_col + last_col) / 2.0  # on the whole grid's columns
    per_column = np.count_nonzero(lungs, axis=1)  # (slices, cols)
    columns = np.arange(c0, c1)
    left = np.where(columns > centre[:, None], per_column, 0).sum(axis=1) * cm2
    right = np.where(columns < centre[:, None], per_column, 0).sum(axis=1) * cm2
    valid = has_body & (left >= MIN_LUNG_CM2) & (right >= MIN_LUNG_CM2)  # a left and a right lung
    hull = np.zeros(hu.shape, dtype=bool)
    for k in np.flatnonzero(valid):
        hull[k] = _hull(_row_extremes(lungs[k], (r0, c0)), (rows, cols))[r0:r1, c0:c1]  # the hull lies in the box
    lung_px = np.count_nonzero(lungs, axis=(1, 2))
    per_row = np.count_nonzero(hull, axis=2)  # the hull pixels' mean row, from counts per row
    total = per_row.sum(axis=1)
    shares[:] = np.where(valid, lung_px / np.maximum(1, total), 0.0)
    weighted = (np.arange(r0, r1) * per_row).sum(axis=1)
    centre_row = np.where(total > 0, weighted / np.maximum(total, 1), np.nan)
    cavity = hull & body & ~lungs & (hu > SOFT_HU)
    behind = np.arange(r0, r1)[None, :, None] > centre_row[:, None, None]
    bone[inside] = _large_bone(hu, px_mm)
    spine = _largest_per_slice(cavity & bone[inside] & behind)  # never a plaque: those are smaller
    spine_any = spine.any(axis=2)
    spine_row = np.where(spine_any.any(axis=1), spine_any.argmax(axis=1), h)
    cavity &= np.arange(h)[None, :, None] < spine_row[:, None, None]  # in front of the spine
    window = _midline_window(centre, max(1, int(round(MIDLINE_MM / px_mm))), cols)[:, c0:c1]
    cavities[inside] = _midline_piece(cavity, window)
    areas[:] = np.count_nonzero(cavities, axis=(1, 2)) * cm2


def _midline_window(centre: np.ndarray, reach: int, cols: int) -> np.ndarray:
    """(slices, cols) bool: the columns within ``reach`` of each slice's body midline ``centre``."""
    mid = centre.astype(np.int64)  # as int(): centre >= 0
    lo, hi = np.maximum(0, mid - reach), np.minimum(cols, mid + reach + 1)
    columns = np.arange(cols)
    return (columns >= lo[:, None]) & (columns < hi[:, None])


def _midline_piece(cavity: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Per slice, the largest piece of ``cavity`` reaching into ``window`` (slices, cols: the columns
    near the body's midline). The mediastinum always spans the midline; the liver's dome, rising as
    an island into the right lung base level with the heart's lower half, lies to one side and can be
    larger than the heart's section."""
    labels, n, ends = _label_slices(cavity)
    if n == 0:
        return cavity
    near = np.zeros(n + 1, dtype=bool)
    near[labels[np.broadcast_to(window[:, None, :], labels.shape)]] = True
    near[0] = False
    sizes = np.where(near, np.bincount(labels.ravel(), minlength=n + 1), -1)
    keep = np.zeros(n + 1, dtype=bool)
    start = 1
    for end in ends:
        if end >= start:
            best = start + int(sizes[start : end + 1].argmax())
            keep[best] = near[best]  # no piece near the midline: nothing
            start = int(end) + 1
    return keep[labels]


def grid_step(pixel_spacing: tuple[float, float]) -> int:
    """Every how many series pixels the working grid (~``GRID_MM``) samples."""
    return max(1, int(round(GRID_MM / max(min(pixel_spacing), 1e-3))))


def find_heart(hu: np.ndarray, pixel_spacing: tuple[float, float], slice_increment: float) -> HeartRegion:
    """The heart region of a HU volume (slices, rows, columns), sorted along the patient axis."""
    n, rows, cols = hu.shape
    step = grid_step(pixel_spacing)
    px_mm = float(min(pixel_spacing)) * step
    small = np.ascontiguousarray(hu[:, ::step, ::step])
    cavities, areas, shares, bone = _cavities(small, px_mm)
    areas[shares < RUN_LUNG_SHARE] = 0.0  # lung bases round the upper abdomen
    candidates = np.where(shares >= PEAK_LUNG_SHARE, areas, 0.0)
    if candidates.max(initial=0.0) < MIN_HEART_CM2:
        return HeartRegion(np.zeros((0, rows, cols), dtype=bool), 0, -1, tuple(areas.round(1)))
    peak = int(candidates.argmax())
    floor = max(MIN_HEART_CM2, RUN_FRACTION * areas[peak])
    first = last = peak
    while first > 0 and areas[first - 1] >= floor:
        first -= 1
    while last < n - 1 and areas[last + 1] >= floor:
        last += 1
    margin = int(np.ceil(Z_MARGIN_MM / max(slice_increment, 1e-3)))
    first, last = max(0, first - margin), min(n - 1, last + margin)
    # in-plane: the union of the heart slices' mediastinum, so the margin slices get the heart's outline;
    # not from slices where the lungs thin out (round the liver dome that "mediastinum" is the abdomen)
    heart_level = shares[first : last + 1] >= PEAK_LUNG_SHARE
    outline = cavities[first : last + 1][heart_level].any(axis=0)
    outline = _fill_holes(outline[None])[0]
    grow = max(1, int(round(XY_MARGIN_MM / px_mm)))
    mask = np.zeros((last - first + 1, rows, cols), dtype=bool)
    full_px = float(pixel_spacing[0]) * float(pixel_spacing[1])
    heart = slice(first, last + 1)
    extended = _forward_to_chest_wall(outline, small[heart], bone[heart], int(round(ANTERIOR_MM / px_mm)))
    grown = _dilate(extended, grow)
    for k in range(first, last + 1):
        extended_k, grown_k = extended[k - first], grown[k - first]
        grown_rows, grown_cols = np.flatnonzero(grown_k.any(axis=1)), np.flatnonzero(grown_k.any(axis=0))
        if not len(grown_rows):
            continue
        # the skeleton is cut at the series' own resolution (on the coarse grid a plaque that nearly
        # touches the sternum would merge with it), within the region's bounding box only: the
        # only part of the slice ever seen at full resolution
        r0, r1 = int(grown_rows[0]) * step, min((int(grown_rows[-1]) + 1) * step, rows)
        c0, c1 = int(grown_cols[0]) * step, min((int(grown_cols[-1]) + 1) * step, cols)
        box = (slice(r0, r1), slice(c0, c1))
        cut = _outside_bone(hu[k][box], full_px ** 0.5, _box_on_series_grid(extended_k, step, r0, r1, c0, c1))
        mask[k - first][box] = _box_on_series_grid(grown_k, step, r0, r1, c0, c1) & ~cut
    return HeartRegion(mask, first, last, tuple(areas.round(1)))


def _box_on_series_grid(small: np.ndarray, step: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows r0:r1 and columns c0:c1 of ``small`` (the working grid) brought to the series grid (each
    working pixel covers step x step series pixels)."""
    return small[np.arange(r0, r1) // step][:, np.arange(c0, c1) // step]


def _outside_bone(hu: np.ndarray, px_mm: float, inside: np.ndarray) -> np.ndarray:
    """The large bone pieces (``_large_bone``) lying mostly outside ``inside``, from one labelling."""
    labels, n = ndimage.label(hu > BONE_HU)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    total = np.bincount(labels.ravel(), minlength=n + 1)
    within = np.bincount(labels[inside], minlength=n + 1)
    cut = (total * px_mm * px_mm >= CHEST_WALL_MIN_MM2) & (within < 0.5 * total)
    cut[0] = False
    return cut[labels]


def _large_bone(hu: np.ndarray, px_mm: float) -> np.ndarray:
    """Dense pieces (> 180 HU) of at least ``CHEST_WALL_MIN_MM2``: the skeleton, never a plaque. On a
    stack of slices (3-D), each slice's pieces on their own."""
    labels, n = ndimage.label(hu > BONE_HU, structure=_IN_PLANE if hu.ndim == 3 else None)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * px_mm * px_mm
    large = sizes >= CHEST_WALL_MIN_MM2
    large[0] = False
    return large[labels]


def _dilate(mask: np.ndarray, grow: int) -> np.ndarray:
    """Every slice of ``mask`` dilated ``grow`` times (4-connected, as ``ndimage.binary_dilation``), in
    one call on the box round everything set widened by ``grow`` (nothing beyond it can be reached)."""
    out = np.zeros_like(mask)
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if not len(rows):
        return out
    box = (slice(None), slice(max(0, int(rows[0]) - grow), int(rows[-1]) + grow + 1),
           slice(max(0, int(cols[0]) - grow), int(cols[-1]) + grow + 1))
    out[box] = ndimage.binary_dilation(mask[box], structure=_IN_PLANE, iterations=grow)
    return out


def _forward_to_chest_wall(outline: np.ndarray, hu: np.ndarray, skeleton: np.ndarray, reach: int) -> np.ndarray:
    """``outline`` (rows, cols) extended towards the front (lower row numbers), column by column, through
    soft tissue, fat and small dense pieces (plaques) until the skeleton (sternum, cartilage) or air,
    at most ``reach`` pixels: the front of the heart and the LAD lie in front of the lungs. One result
    per slice of ``hu`` and ``skeleton`` (slices, rows, cols)."""
    out = np.repeat(outline[None], len(hu), axis=0)
    columns = np.flatnonzero(outline.any(axis=0))
    if reach <= 0 or not len(columns):
        return out
    top = outline[:, columns].argmax(axis=0)  # each column's first outline row
    rows = top[None, :] - np.arange(1, reach + 1)[:, None]  # (reach, columns): the rows above it, nearest first
    at = (slice(None), rows.clip(0, None), columns[None, :])
    open_ = (rows >= 0) & (hu[at] > SOFT_HU) & ~skeleton[at]  # (slices, reach, columns): passable
    open_ = np.logical_and.accumulate(open_, axis=1)  # up to the first blocked row
    k, i, j = np.nonzero(open_)
    out[k, rows[i, j], columns[j]] = True
    return out
