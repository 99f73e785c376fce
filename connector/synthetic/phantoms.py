"""Synthetic chest CT attenuation-correction phantoms with known calcium, for training and tests.

Why: the bundled CAC model must be trainable and testable without any patient data. Each phantom is
an analytic chest (body, lungs, spine, ribs, sternum, descending and ascending aorta, heart with an
epicardial fat shell and three coronary arteries) rendered slice by slice at a chosen pixel spacing
and slice increment, then blurred and given correlated noise like a low-dose CTAC scan. Calcium is
placed on the coronaries (the target) and on the aorta, aortic valve, mitral annulus and bones (the
distractors), and the renderer returns per-voxel labels alongside the HU values, so a ground-truth
Agatston score can be computed with the same scorer the connector uses.

Only numpy and scipy are needed (no torch), so tests and benchmarks can use it too. Everything is
driven by a ``numpy.random.Generator``: the same seed gives the same phantom, bit for bit.
Coordinates are patient LPS in millimetres: x to the patient's left (image columns), y posterior
(image rows), z superior (slice positions).

Why one module, long as it is: the anatomy, the calcium and the rendering share one
coordinate frame and one random stream, so a phantom is reproducible from its seed alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

MODEL_PIXEL_SPACING = 500.0 / 512  # 0.9765625 mm: a 500 mm CTAC field of view on 512 pixels
LABEL_MARGIN_MM = 1.0  # ground-truth lesion labels reach this far past the plaque edge (partial volume)
HEART_MARGIN_MM = 4.0  # the heart label (pericardial sac) reaches this far past the epicardial fat


@dataclass(frozen=True)
class Blob:
    """An ellipsoid of uniform density (calcium, valve, plaque): centre (x, y, z), radii in mm."""

    x: float
    y: float
    z: float
    rxy: float
    rz: float
    hu: float
    kind: str = "aorta"  # distractor kind: "aorta" or "valve" (aortic valve, mitral annulus)


@dataclass(frozen=True)
class Artery:
    """A coronary artery on the heart's surface: azimuth/elevation ramps in the heart frame."""

    az0: float
    daz: float
    el0: float
    de: float
    radius: float


@dataclass(frozen=True)
class GeneratorRanges:
    """How wide the generator draws. The defaults are the original generator (the bundled v1 model's
    world, bit for bit); :data:`WIDE` is what the v2 model trains on, :data:`WIDE_TEST` the test split
    it never sees (other seeds and other ranges)."""

    big_lesion_share: float = 0.0  # share of coronary plaques drawn big and dense (radius, HU below)
    big_rxy: tuple[float, float] = (4.0, 7.0)
    big_hu: tuple[float, float] = (450.0, 1300.0)
    sternal_wires: float = 0.0  # probability of sternal wires (metal, streaks): never coronary
    stent: float = 0.0  # probability of a coronary stent (metal, streaks): never scored as calcium
    metal_hu: tuple[float, float] = (1800.0, 3000.0)
    heart_gap: tuple[float, float] = (14.0, 20.0)  # mm between the sternum and the heart's fat: 0 = touching
    dense_bone: float = 0.0  # probability of solid bones (marrow as dense as the cortex): big bright blobs


WIDE = GeneratorRanges(big_lesion_share=0.3, sternal_wires=0.3, stent=0.25, heart_gap=(2.0, 20.0), dense_bone=0.3)
WIDE_TEST = GeneratorRanges(big_lesion_share=0.5, big_rxy=(4.5, 7.5), big_hu=(480.0, 1400.0), sternal_wires=0.5,
                            stent=0.4, metal_hu=(1500.0, 3071.0), heart_gap=(1.0, 12.0), dense_bone=0.5)
PIXEL_SPACINGS_WIDE = (0.6, 1.0)  # mm: cardiac to whole-chest fields of view on 512 pixels
NOISE_WIDE = (8.0, 35.0)  # HU: down to low-dose CTAC


@dataclass
class PhantomSpec:
    """Geometry and densities of one synthetic patient (all lengths in mm)."""

    body_cx: float
    body_cy: float
    body_a: float
    body_b: float
    fat_mm: float
    heart_c: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    heart_angle: float
    epi_fat_mm: float
    arteries: list[Artery]
    plaques: list[Blob]
    spine_c: tuple[float, float]
    spine_r: float
    bone_cortex_hu: float
    bone_marrow_hu: float
    disc_phase: float
    rib_phase: float
    desc_aorta_c: tuple[float, float]
    desc_aorta_r: float
    asc_aorta_c: tuple[float, float]
    asc_aorta_r: float
    noncoronary: list[Blob] = field(default_factory=list)  # aortic wall, valve, mitral annulus calcium
    noise_hu: float = 15.0
    metal: list[Blob] = field(default_factory=list)  # sternal wires and stents (kind "wire"/"stent"): streaks

    @property
    def heart_z_range(self) -> tuple[float, float]:
        """Extent of the heart with its epicardial fat (the heart label reaches HEART_MARGIN_MM further)."""
        hz, az = self.heart_c[2], self.heart_axes[2] + self.epi_fat_mm
        return hz - az, hz + az


@dataclass
class Phantom:
    """A rendered phantom: HU volume (Z, Y, X) int16 and boolean label volumes of the same shape."""

    hu: np.ndarray
    heart: np.ndarray
    coronary: np.ndarray
    noncoronary: np.ndarray  # all non-coronary calcium: bone, aortic wall, valves
    valve: np.ndarray  # the part of ``noncoronary`` inside the heart (aortic valve, mitral annulus)
    z_positions: np.ndarray
    pixel_spacing: float
    increment: float
    spec: PhantomSpec


# ---------------------------------------------------------------------------------------------
# Random specification


def random_spec(
    rng: np.random.Generator,
    *,
    plaque_count: int | None = None,
    noncoronary_load: float = 1.0,
    noise_hu: tuple[float, float] = (8.0, 20.0),
    ranges: GeneratorRanges = GeneratorRanges(),
) -> PhantomSpec:
    """Draw one synthetic patient. ``plaque_count`` fixes the number of coronary plaques (0: none)."""
    u = rng.uniform
    body_cx, body_cy = u(-12, 12), u(-8, 12)
    body_a, body_b = u(150, 185), u(105, 125)
    fat_mm = u(8, 22)
    spine_r = u(15, 19)
    spine_c = (body_cx + u(-3, 3), body_cy + body_b - fat_mm - spine_r - u(8, 14))
    sternum_y = body_cy - body_b + fat_mm + 8
    ha, hb, hc = u(45, 58), u(34, 42), u(42, 55)
    epi = u(5, 8)
    angle = math.radians(u(-50, -25))
    ext_y = math.sqrt((ha * math.sin(angle)) ** 2 + (hb * math.cos(angle)) ** 2) + epi
    hy = sternum_y + u(*ranges.heart_gap) + ext_y  # anterior mediastinum, clear of the sternum (by default)
    hx = body_cx + u(15, 30)
    hz = 0.0
    desc_r = u(10, 13)
    desc_c = (spine_c[0] + spine_r + desc_r + u(2, 6), spine_c[1] - u(0, 10))  # left of the vertebra
    asc_r = u(12, 15)
    asc_c = (hx - ha * 0.3, hy - u(0, 6))  # aortic root near the middle of the heart

    arteries = []
    for k in range(3):
        arteries.append(
            Artery(
                az0=2 * math.pi * k / 3 + u(-0.5, 0.5),
                daz=float(rng.choice([-1, 1])) * u(0.5, 1.4),
                el0=u(0.15, 0.6),
                de=-u(0.6, 1.2),
                radius=u(1.3, 2.0),
            )
        )
    spec = PhantomSpec(
        body_cx=body_cx,
        body_cy=body_cy,
        body_a=body_a,
        body_b=body_b,
        fat_mm=fat_mm,
        heart_c=(hx, hy, hz),
        heart_axes=(ha, hb, hc),
        heart_angle=angle,
        epi_fat_mm=epi,
        arteries=arteries,
        plaques=[],
        spine_c=spine_c,
        spine_r=spine_r,
        bone_cortex_hu=u(550, 950),
        bone_marrow_hu=u(160, 280),
        disc_phase=u(0, 28),
        rib_phase=u(0, 30),
        desc_aorta_c=desc_c,
        desc_aorta_r=desc_r,
        asc_aorta_c=asc_c,
        asc_aorta_r=asc_r,
        noise_hu=u(*noise_hu),
    )
    spec.noncoronary = _random_noncoronary(rng, spec, noncoronary_load)
    if plaque_count is None:
        burden = rng.choice(4, p=[0.25, 0.25, 0.25, 0.25])
        plaque_count = int([0, rng.integers(1, 4), rng.integers(3, 8), rng.integers(7, 16)][burden])
    spec.plaques = _random_plaques(rng, spec, plaque_count, ranges)
    spec.metal = _random_metal(rng, spec, ranges)
    if ranges.dense_bone and rng.random() < ranges.dense_bone:
        spec.bone_marrow_hu = spec.bone_cortex_hu * rng.uniform(0.7, 0.95)
    return spec


def _random_noncoronary(rng: np.random.Generator, spec: PhantomSpec, load: float) -> list[Blob]:
    u = rng.uniform
    blobs: list[Blob] = []
    z_lo, z_hi = spec.heart_z_range
    # Descending aorta wall calcium, anywhere along the scan.
    for _ in range(rng.poisson(4 * load)):
        a = u(0, 2 * math.pi)
        r = spec.desc_aorta_r
        blobs.append(
            Blob(
                spec.desc_aorta_c[0] + r * math.cos(a),
                spec.desc_aorta_c[1] + r * math.sin(a),
                u(z_lo - 40, z_hi + 40),
                u(1.0, 3.0),
                u(1.5, 6.0),
                u(250, 950),
            )
        )
    # Ascending aorta wall calcium, above the heart.
    for _ in range(rng.poisson(2 * load)):
        a = u(0, 2 * math.pi)
        r = spec.asc_aorta_r
        blobs.append(
            Blob(
                spec.asc_aorta_c[0] + r * math.cos(a),
                spec.asc_aorta_c[1] + r * math.sin(a),
                u(z_hi + 12, z_hi + 40),
                u(1.0, 3.0),
                u(1.5, 5.0),
                u(250, 950),
            )
        )
    hx, hy, hz = spec.heart_c
    # Aortic valve calcium: deep in the heart at the aortic root.
    if rng.random() < 0.5 * load + 0.1:
        for _ in range(rng.integers(1, 4)):
            blobs.append(
                Blob(
                    spec.asc_aorta_c[0] + u(-5, 5),
                    spec.asc_aorta_c[1] + u(-5, 5),
                    hz + spec.heart_axes[2] * 0.3 + u(-4, 4),
                    u(1.5, 4.5),
                    u(1.5, 4.0),
                    u(300, 950),
                    "valve",
                )
            )
    # Mitral annular calcification: an arc of blobs inside the heart.
    if rng.random() < 0.4 * load + 0.1:
        cx, cy = hx + u(-5, 5), hy + u(-3, 8)
        a0 = u(0, 2 * math.pi)
        for k in range(rng.integers(2, 6)):
            a = a0 + 0.5 * k
            blobs.append(
                Blob(
                    cx + 11 * math.cos(a),
                    cy + 11 * math.sin(a),
                    hz - spec.heart_axes[2] * 0.1,
                    u(1.5, 3.0),
                    u(1.5, 3.0),
                    u(300, 900),
                    "valve",
                )
            )
    return blobs


def artery_points(spec: PhantomSpec, artery: Artery, n: int = 160) -> np.ndarray:
    """Points (n, 3) along a coronary artery, 3 mm outside the heart wall in the epicardial fat."""
    t = np.linspace(0.0, 1.0, n)
    az = artery.az0 + artery.daz * t
    el = artery.el0 + artery.de * t
    ha, hb, hc = (a + 3.0 for a in spec.heart_axes)
    uu = ha * np.cos(el) * np.cos(az)
    vv = hb * np.cos(el) * np.sin(az)
    zz = hc * np.sin(el)
    ca, sa = math.cos(spec.heart_angle), math.sin(spec.heart_angle)
    hx, hy, hz = spec.heart_c
    return np.stack([hx + ca * uu - sa * vv, hy + sa * uu + ca * vv, hz + zz], axis=1)


def _random_metal(rng: np.random.Generator, spec: PhantomSpec, ranges: GeneratorRanges) -> list[Blob]:
    """Sternal wires (in the sternum) and a coronary stent (a chain of metal along an artery)."""
    metal: list[Blob] = []
    u = rng.uniform
    z_lo, z_hi = spec.heart_z_range
    if ranges.sternal_wires and rng.random() < ranges.sternal_wires:
        st_y = spec.body_cy - spec.body_b + spec.fat_mm + 8
        for _ in range(int(rng.integers(2, 6))):
            metal.append(Blob(spec.body_cx + u(-4, 4), st_y + u(-2, 2), u(z_lo - 20, z_hi + 20), u(0.5, 1.0),
                              u(1.0, 2.0), u(*ranges.metal_hu), "wire"))
    if ranges.stent and rng.random() < ranges.stent:
        artery = spec.arteries[int(rng.integers(0, 3))]
        pts = artery_points(spec, artery)
        start = int(rng.integers(10, len(pts) - 30))
        hu = u(*ranges.metal_hu)
        for p in pts[start : start + int(rng.integers(6, 16)) : 2]:
            metal.append(Blob(float(p[0]), float(p[1]), float(p[2]), u(1.2, 1.8), 1.5, hu, "stent"))
    return metal


def _random_plaques(rng: np.random.Generator, spec: PhantomSpec, count: int,
                    ranges: GeneratorRanges = GeneratorRanges()) -> list[Blob]:
    plaques: list[Blob] = []
    avoid = [(b.x, b.y, b.z) for b in spec.noncoronary]
    big = count >= 7
    tries = 0
    while len(plaques) < count and tries < count * 40:
        tries += 1
        artery = spec.arteries[int(rng.integers(0, 3))]
        pts = artery_points(spec, artery)
        p = pts[int(rng.integers(5, len(pts) - 5))]
        if any(math.dist(p, q) < 12.0 for q in avoid):
            continue
        if math.dist(p[:2], spec.asc_aorta_c) < spec.asc_aorta_r + 8:
            continue
        rxy = rng.uniform(1.5, 3.6) if big else rng.uniform(0.7, 3.0)
        hu = rng.uniform(140, 1100) if rng.random() < 0.85 else rng.uniform(135, 220)
        rz = rng.uniform(0.8, 3.0) * (1.4 if big else 1.0)
        if ranges.big_lesion_share and rng.random() < ranges.big_lesion_share:  # big and dense
            rxy, hu, rz = rng.uniform(*ranges.big_rxy), rng.uniform(*ranges.big_hu), rng.uniform(2.0, 5.0)
        plaques.append(Blob(float(p[0]), float(p[1]), float(p[2]), rxy, rz, hu))
        avoid.append((float(p[0]), float(p[1]), float(p[2])))
    return plaques


# ---------------------------------------------------------------------------------------------
# Rendering


class _Canvas:
    """One axial slice being painted: HU image plus label planes, with pixel-centre mm coordinates."""

    def __init__(self, size: int, spacing: float) -> None:
        self.size, self.sp = size, spacing
        self.coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * spacing
        self.hu = np.full((size, size), -1000.0, dtype=np.float32)
        self.heart = np.zeros((size, size), dtype=bool)
        self.coronary = np.zeros((size, size), dtype=bool)
        self.noncoronary = np.zeros((size, size), dtype=bool)
        self.valve = np.zeros((size, size), dtype=bool)

    def _window(self, cx: float, cy: float, reach: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        lo_c = int(np.searchsorted(self.coords, cx - reach))
        hi_c = int(np.searchsorted(self.coords, cx + reach))
        lo_r = int(np.searchsorted(self.coords, cy - reach))
        hi_r = int(np.searchsorted(self.coords, cy + reach))
        if hi_c <= lo_c or hi_r <= lo_r:
            return None
        xs = self.coords[lo_c:hi_c][None, :] - cx
        ys = self.coords[lo_r:hi_r][:, None] - cy
        return slice(lo_r, hi_r), slice(lo_c, hi_c), xs, ys

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        hu: float,
        *,
        angle: float = 0.0,
        mode: str = "set",
        label: str | None = None,
        label_margin: float = 0.0,
    ) -> None:
        """Paint an ellipse with an anti-aliased edge (partial volume) and optionally label it."""
        if rx <= 0 or ry <= 0:
            return
        win = self._window(cx, cy, max(rx, ry) + label_margin + 2 * self.sp)
        if win is None:
            return
        rs, cs, xs, ys = win
        if angle:
            ca, sa = math.cos(angle), math.sin(angle)
            uu, vv = ca * xs + sa * ys, -sa * xs + ca * ys
        else:
            uu, vv = xs + 0 * ys, ys + 0 * xs
        q = np.sqrt((uu / rx) ** 2 + (vv / ry) ** 2)
        cover = np.clip(0.5 - (q - 1.0) * min(rx, ry) / self.sp, 0.0, 1.0)
        region = self.hu[rs, cs]
        painted = region + (hu - region) * cover
        self.hu[rs, cs] = np.maximum(region, painted) if mode == "max" else painted
        if label is not None:
            inside = np.sqrt((uu / (rx + label_margin)) ** 2 + (vv / (ry + label_margin)) ** 2) <= 1.0
            plane = getattr(self, label)
            plane[rs, cs] |= inside

    def streaks(self, cx: float, cy: float, hu: float, *, seed: int, length: float = 45.0) -> None:
        """Beam-hardening streaks from metal: thin bright and dark lines through (cx, cy)."""
        win = self._window(cx, cy, length)
        if win is None:
            return
        rs, cs, xs, ys = win
        rng = np.random.default_rng(seed)
        amplitude = min(250.0, 0.08 * hu)
        for k, angle in enumerate(rng.uniform(0, math.pi, 4)):
            distance = np.abs(-math.sin(angle) * xs + math.cos(angle) * ys)
            fade = np.clip(1.0 - np.hypot(xs, ys) / length, 0.0, 1.0)
            line = np.exp(-((distance / 0.6) ** 2)) * fade
            self.hu[rs, cs] += (amplitude if k % 2 == 0 else -amplitude) * line

    def label_ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float, label: str) -> None:
        """Mark an ellipse in a label plane without painting HU."""
        if rx <= 0 or ry <= 0:
            return
        win = self._window(cx, cy, max(rx, ry) + self.sp)
        if win is None:
            return
        rs, cs, xs, ys = win
        ca, sa = math.cos(angle), math.sin(angle)
        uu, vv = ca * xs + sa * ys, -sa * xs + ca * ys
        getattr(self, label)[rs, cs] |= (uu / rx) ** 2 + (vv / ry) ** 2 <= 1.0


def _cross_section(radius: float, dz: float) -> float:
    return math.sqrt(radius * radius - dz * dz) if abs(dz) < radius else 0.0


def render_slice(spec: PhantomSpec, z: float, size: int, spacing: float) -> _Canvas:
    """Noise-free HU slice at height ``z`` plus label planes."""
    cv = _Canvas(size, spacing)
    s = spec
    cv.ellipse(s.body_cx, s.body_cy, s.body_a, s.body_b, -100.0)  # subcutaneous fat
    cv.ellipse(s.body_cx, s.body_cy, s.body_a - s.fat_mm, s.body_b - s.fat_mm, 40.0)  # muscle / mediastinum
    inner_a, inner_b = s.body_a - s.fat_mm - 14, s.body_b - s.fat_mm - 12
    for side in (-1, 1):  # lungs
        cv.ellipse(s.body_cx + side * inner_a * 0.5, s.body_cy + inner_b * 0.05, inner_a * 0.46, inner_b * 0.85, -850.0)
    # Descending aorta along the whole scan, ascending aorta from the heart's middle upwards.
    cv.ellipse(*s.desc_aorta_c, s.desc_aorta_r, s.desc_aorta_r, 40.0)
    _render_heart(cv, s, z)
    if z > s.heart_c[2]:
        cv.ellipse(*s.asc_aorta_c, s.asc_aorta_r, s.asc_aorta_r, 40.0)
    _render_bones(cv, s, z)
    for b in s.noncoronary:
        r = b.rxy * _cross_section(b.rz, z - b.z) / b.rz if b.rz else 0.0
        if r > 0.15:
            cv.ellipse(b.x, b.y, r, r, b.hu, mode="max", label="noncoronary", label_margin=LABEL_MARGIN_MM)
            if b.kind == "valve":
                cv.label_ellipse(b.x, b.y, r + LABEL_MARGIN_MM, r + LABEL_MARGIN_MM, 0.0, "valve")
    for p in s.plaques:
        r = p.rxy * _cross_section(p.rz, z - p.z) / p.rz
        if r > 0.15:
            cv.ellipse(p.x, p.y, r, r, p.hu, mode="max", label="coronary", label_margin=LABEL_MARGIN_MM)
    for m in s.metal:  # after the plaques: a stent's metal is never coronary calcium
        r = m.rxy * _cross_section(m.rz, z - m.z) / m.rz
        if r > 0.15:
            cv.streaks(m.x, m.y, m.hu, seed=int(abs(m.x * 1000 + m.y * 10)))
            cv.ellipse(m.x, m.y, r, r, m.hu, mode="max", label="noncoronary", label_margin=LABEL_MARGIN_MM)
            cv.coronary[cv.noncoronary & (cv.hu >= 1200)] = False
    return cv


def _render_heart(cv: _Canvas, s: PhantomSpec, z: float) -> None:
    hx, hy, hz = s.heart_c
    ha, hb, hc = s.heart_axes
    e, m = s.epi_fat_mm, HEART_MARGIN_MM
    f_label = _cross_section(hc + e + m, z - hz) / (hc + e + m)
    if f_label <= 0:
        return
    cv.label_ellipse(hx, hy, (ha + e + m) * f_label, (hb + e + m) * f_label, s.heart_angle, "heart")
    f_out = _cross_section(hc + e, z - hz) / (hc + e)
    cv.ellipse(hx, hy, (ha + e) * f_out, (hb + e) * f_out, -80.0, angle=s.heart_angle)  # epicardial fat
    f_in = _cross_section(hc, z - hz) / hc
    if f_in > 0:
        cv.ellipse(hx, hy, ha * f_in, hb * f_in, 40.0, angle=s.heart_angle)
    for artery in s.arteries:
        pts = artery_points(s, artery)
        near = np.abs(pts[:, 2] - z) < artery.radius
        for x, y, pz in pts[near]:
            r = _cross_section(artery.radius, z - pz)
            if r > 0.3:
                cv.ellipse(float(x), float(y), r, r, 40.0, mode="max")


def _render_bones(cv: _Canvas, s: PhantomSpec, z: float) -> None:
    cortex, marrow = s.bone_cortex_hu, s.bone_marrow_hu
    sx, sy = s.spine_c
    if (z + s.disc_phase) % 28.0 < 6.0:
        cv.ellipse(sx, sy, s.spine_r, s.spine_r * 0.9, 80.0)  # intervertebral disc
    else:
        cv.ellipse(sx, sy, s.spine_r, s.spine_r * 0.9, cortex, label="noncoronary")
        cv.ellipse(sx, sy, s.spine_r - 1.8, s.spine_r * 0.9 - 1.8, marrow)
    cv.ellipse(sx, sy + s.spine_r + 9, 10, 9, cortex * 0.8, label="noncoronary")  # neural arch
    cv.ellipse(sx, sy + s.spine_r + 9, 6.5, 6.0, 10.0)  # spinal canal
    cv.ellipse(sx, sy + s.spine_r + 26, 4.5, 10, cortex * 0.8, label="noncoronary")  # spinous process
    # Sternum, anterior midline.
    st_y = s.body_cy - s.body_b + s.fat_mm + 8
    cv.ellipse(s.body_cx, st_y, 14, 6.5, cortex * 0.8, label="noncoronary")
    cv.ellipse(s.body_cx, st_y, 12, 4.5, marrow)
    # Ribs: cross-sections on the inner chest wall, each present in a band of slices.
    ra, rb = s.body_a - s.fat_mm - 7, s.body_b - s.fat_mm - 6
    for k in range(14):
        theta = math.radians(-160 + k * (320 / 13))  # skip the anterior midline (sternum)
        if (z + s.rib_phase + 8.0 * math.cos(theta)) % 30.0 >= 12.0:
            continue
        cx = s.body_cx + ra * math.sin(theta)
        cy = s.body_cy - rb * math.cos(theta)
        tangent = math.atan2(rb * math.sin(theta), ra * math.cos(theta))
        cv.ellipse(cx, cy, 9, 5, cortex, angle=tangent, label="noncoronary")
        cv.ellipse(cx, cy, 7, 3, marrow, angle=tangent)


def render(
    spec: PhantomSpec,
    rng: np.random.Generator,
    *,
    increment: float = 3.0,
    z_margin: float = 20.0,
    size: int = 512,
    spacing: float = MODEL_PIXEL_SPACING,
    n_slices: int | None = None,
    noise: bool = True,
) -> Phantom:
    """Render the phantom on slices ``increment`` apart covering the heart plus ``z_margin``."""
    z_lo, z_hi = spec.heart_z_range
    if n_slices is None:
        n_slices = int(math.ceil((z_hi - z_lo + 2 * z_margin) / increment)) + 1
    z0 = (z_lo + z_hi) / 2 - increment * (n_slices - 1) / 2 + rng.uniform(-increment / 2, increment / 2)
    zs = z0 + increment * np.arange(n_slices)
    shape = (n_slices, size, size)
    hu = np.empty(shape, dtype=np.int16)
    heart, cor, noncor, valve = (np.zeros(shape, dtype=bool) for _ in range(4))
    white_sigma = spec.noise_hu / _smoothed_noise_gain(0.8)
    for i, z in enumerate(zs):
        cv = render_slice(spec, float(z), size, spacing)
        img = ndimage.gaussian_filter(cv.hu, 0.6, mode="nearest")  # scanner point-spread function
        if noise:
            img += ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 0.8) * white_sigma
        hu[i] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
        heart[i], cor[i], noncor[i], valve[i] = cv.heart, cv.coronary, cv.noncoronary, cv.valve
    return Phantom(
        hu=hu,
        heart=heart,
        coronary=cor,
        noncoronary=noncor,
        valve=valve,
        z_positions=zs,
        pixel_spacing=spacing,
        increment=increment,
        spec=spec,
    )


def _smoothed_noise_gain(sigma: float) -> float:
    """Standard deviation left after Gaussian-filtering unit white noise (2-D)."""
    return 1.0 / (2.0 * math.sqrt(math.pi) * sigma)


def make_phantom(seed: int, **kw: object) -> Phantom:
    """Convenience: one phantom from an integer seed (spec and rendering share the generator)."""
    rng = np.random.default_rng(seed)
    render_kw = {
        k: kw.pop(k) for k in list(kw) if k in {"increment", "z_margin", "size", "spacing", "n_slices", "noise"}
    }
    spec = random_spec(rng, **kw)  # type: ignore[arg-type]
    return render(spec, rng, **render_kw)  # type: ignore[arg-type]
