"""A third synthetic chest generator: a tilted heart, coronaries as paths on its surface, and lesions
sampled along those paths, most of them small.

Why: the bundled models were chosen on phantoms whose coronaries follow the same few ramps on an
upright heart, with plaques mostly big or dense; a held-out anatomy of another generator (issue 29)
showed small, moderately dense lesions (1-10 mm², 130-400 HU, 1-3 slices) missed. Small lesions are what
separates CAC 0 from CAC 1-100. This generator draws its own geometry, sharing no code with
``connector.synthetic.phantoms`` or ``training.independent``:

- a body whose cross-section narrows upwards, diaphragm domes with liver (right) and stomach (left)
  below them, so scans reach below the heart;
- a heart of varied size, position and 3D tilt (its long axis towards the apex drawn around left,
  anterior and inferior), in epicardial fat of 3-12 mm;
- LAD in the anterior interventricular groove, LCX and RCA in the atrioventricular groove, each a path
  on the heart's surface with a wobble, rendered as soft-tissue tubes in the fat;
- lesions at random points along those paths: half small (1.5-12 mm² drawn, 180-520 HU painted, so
  1-10 mm² and 130-400 HU measured after blur and noise), the rest moderate or large;
- decoys: a vertebral body with cortex and marrow, osteophytes on its front, ribs that slope downwards
  towards the front (their cross-sections move with z), costal cartilage calcification near the
  sternum, a sternum from touching the heart's fat to 25 mm from it, sternal wires, aortic wall,
  aortic valve and mitral annulus calcium (the annulus lies just inside the AV groove, next to the LCX).

Labels: ``lesion_ids`` (0 = none, k = the k-th coronary lesion, 1 mm margin for partial volume),
``coronary`` (its non-zero part), ``noncoronary``, ``valve`` and ``heart`` (heart, fat and 4 mm).

Seeds: training draws from ``TRAIN_SEED_BASE``, model choice from ``VALIDATION_SEED_BASE`` and the
report from ``TEST_SEED_BASE``; nothing else in the repository uses these ranges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

TRAIN_SEED_BASE = 300_000
VALIDATION_SEED_BASE = 310_000
TEST_SEED_BASE = 320_000
ARCH_CARTILAGE_STREAM = 29  # the costal-arch cartilage's own random stream: np.random.default_rng([seed, 29])
SIZE = 512
SPACINGS = (0.62, 0.70, 0.78, 0.86, 0.94, 1.0)
INCREMENTS = (2.0, 2.5, 3.0, 3.75, 5.0)
LABEL_MARGIN_MM = 1.0
HEART_MARGIN_MM = 4.0


@dataclass
class VesselPhantom:
    """The fields :func:`training.evaluate.score_phantom` reads, plus per-lesion labels."""

    hu: np.ndarray
    heart: np.ndarray
    coronary: np.ndarray
    noncoronary: np.ndarray
    valve: np.ndarray
    lesion_ids: np.ndarray
    abdomen: np.ndarray  # liver, stomach and spleen under the diaphragm's domes (tests of the heart region)
    pixel_spacing: float
    increment: float
    heart_centre_mm: tuple[float, float, float]  # x (columns), y (rows), z, image centre at (0, 0)
    lesions: list[dict[str, float | str]] = field(default_factory=list)


@dataclass(frozen=True)
class Spot:
    """An ellipsoid of calcium (or metal) at a world point, radii in mm."""

    x: float
    y: float
    z: float
    rxy: float
    rz: float
    hu: float


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Columns e1, e2, e3 of the heart's frame in world (x left, y posterior, z up); e3 towards the apex."""
    apex = np.array([rng.uniform(0.45, 0.85), -rng.uniform(0.3, 0.7), -rng.uniform(0.35, 0.8)])
    e3 = apex / np.linalg.norm(apex)
    ref = np.array([0.0, 0.0, 1.0])
    e1 = np.cross(ref, e3)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e3, e1)
    spin = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(spin), math.sin(spin)
    return np.stack([c * e1 + s * e2, -s * e1 + c * e2, e3], axis=1)


class _Heart:
    """An ellipsoid in a rotated frame; paths on its surface in local (theta, w) coordinates."""

    def __init__(self, centre: np.ndarray, axes: tuple[float, float, float], rot: np.ndarray, fat: float) -> None:
        self.c, self.axes, self.rot, self.fat = centre, axes, rot, fat

    def surface(self, theta: np.ndarray, w: np.ndarray, out: float) -> np.ndarray:
        """World points (n, 3) on the surface at long-axis fraction ``w`` (-1 base .. 1 apex), ``out`` mm outside."""
        a, b, c = self.axes
        s = np.sqrt(np.clip(1.0 - w * w, 0.0, 1.0))
        local = np.stack([(a + out) * s * np.cos(theta), (b + out) * s * np.sin(theta), (c + out) * w], axis=1)
        return self.c + local @ self.rot.T

    def theta_towards(self, direction: np.ndarray) -> float:
        """The local azimuth whose surface normal points most along a world direction."""
        d = self.rot.T @ direction
        return math.atan2(d[1] / self.axes[1], d[0] / self.axes[0])

    def inside(self, xx: np.ndarray, yy: np.ndarray, z: float, grow: float) -> np.ndarray:
        """Boolean cross-section at height ``z`` of the ellipsoid grown by ``grow`` mm."""
        a, b, c = (r + grow for r in self.axes)
        p = np.stack([xx - self.c[0], yy - self.c[1], np.full_like(xx, z - self.c[2])], axis=-1) @ self.rot
        return (p[..., 0] / a) ** 2 + (p[..., 1] / b) ** 2 + (p[..., 2] / c) ** 2 <= 1.0


def _paths(rng: np.random.Generator, heart: _Heart, base_w: float) -> dict[str, np.ndarray]:
    """LAD, LCX and RCA as world point paths (about 1 mm apart) in the epicardial fat."""
    out = heart.fat * rng.uniform(0.35, 0.6)
    anterior = heart.theta_towards(np.array([0.0, -1.0, 0.0]))
    left = heart.theta_towards(np.array([1.0, 0.0, 0.0]))
    turn = 1.0 if math.sin(left - anterior) > 0 else -1.0  # which way round reaches the left side
    n = 220
    t = np.linspace(0.0, 1.0, n)
    wobble = lambda amp: amp * np.sin(2 * math.pi * (rng.uniform(0.5, 1.5) * t + rng.uniform(0, 1)))  # noqa: E731
    lad = heart.surface(anterior + rng.uniform(-0.25, 0.25) + wobble(0.12), base_w + (0.92 - base_w) * t, out)
    lcx = heart.surface(anterior + turn * (0.35 + rng.uniform(1.6, 2.4) * t), base_w + wobble(0.05), out)
    rca = heart.surface(anterior - turn * (0.25 + rng.uniform(2.0, 2.8) * t), base_w + wobble(0.05), out)
    return {"LAD": lad, "LCX": lcx, "RCA": rca}


def _lesion(rng: np.random.Generator, point: np.ndarray, increment: float, kind: str) -> Spot:
    if kind == "small":
        area, hu = rng.uniform(1.5, 12.0), rng.uniform(180, 520)
        rz = increment * rng.uniform(0.3, 1.3)
    elif kind == "moderate":
        area, hu = rng.uniform(10, 40), rng.uniform(200, 900)
        rz = increment * rng.uniform(0.6, 1.6)
    else:
        area, hu = rng.uniform(40, 120), rng.uniform(400, 1300)
        rz = rng.uniform(3.0, 7.0)
    return Spot(float(point[0]), float(point[1]), float(point[2]), math.sqrt(area / math.pi), rz, hu)


def _ellipsoid_slice(xx: np.ndarray, yy: np.ndarray, z: float, s: Spot, grow: float = 0.0) -> tuple[np.ndarray, float]:
    """Soft cover (0..1, anti-aliased edge) of a spot's cross-section at ``z`` and its hard mask radius."""
    k = 1.0 - ((z - s.z) / (s.rz + grow)) ** 2
    if k <= 0:
        return np.zeros(xx.shape, dtype=np.float32), 0.0
    r = (s.rxy + grow) * math.sqrt(k)
    d = np.hypot(xx - s.x, yy - s.y)
    return np.clip(0.5 - (d - r) / 0.7, 0.0, 1.0).astype(np.float32), r


def vessel_phantom(seed: int, *, increment: float | None = None, spacing: float | None = None,
                   reach_below: bool | None = None, arch_cartilage: bool = False) -> VesselPhantom:
    """One phantom, deterministic from ``seed`` (the split is chosen by the seed's range).

    ``arch_cartilage`` (training phantoms of round 4 on): also costal cartilage along the costal
    arches against the heart (:func:`_arch_cartilage`), drawn from a generator of its own, so every
    other voxel is what the phantom is without it."""
    rng = np.random.default_rng(seed)
    u = rng.uniform
    spacing = float(spacing if spacing is not None else SPACINGS[seed % len(SPACINGS)])
    increment = float(increment if increment is not None else rng.choice(INCREMENTS))
    noise, blur = u(8, 35), u(0.45, 0.9)

    body_a, body_b = u(135, 195), u(105, 145)
    skin_fat = u(6, 28)
    rot = _rotation(rng)
    axes = (u(36, 52), u(32, 46), u(45, 66))  # local e1, e2, and the long axis
    fat = u(3, 12)
    hx = u(5, 40)
    sternum_back = -body_b + skin_fat + u(12, 20)  # y of the sternum's posterior surface
    gap = float(rng.choice([0.0, u(0, 4), u(4, 12), u(12, 25)]))
    spine_r = u(14, 21)
    spine_c = (u(-6, 6), body_b - skin_fat - spine_r - u(12, 24))
    behind = u(18, 30)  # mm from the heart's fat to the spine (oesophagus, descending aorta)
    extent = np.sqrt((rot ** 2) @ np.square(axes))  # half-extent of the heart along world x, y, z
    room = spine_c[1] - spine_r - behind - sternum_back - gap  # front to back, for the heart in its fat
    if 2 * (extent[1] + fat) > room:  # a deeper chest rather than a heart lying on the spine
        deeper = (2 * (extent[1] + fat) - room) / 2
        body_b, sternum_back, spine_c = body_b + deeper, sternum_back - deeper, (spine_c[0], spine_c[1] + deeper)
    hy = sternum_back + gap + extent[1] + fat
    hz = 0.0
    heart = _Heart(np.array([hx, hy, hz]), axes, rot, fat)
    dome_z = hz - extent[2] * u(0.55, 0.85)  # the diaphragm's top, under the heart
    base_w = -u(0.35, 0.55)
    paths = _paths(rng, heart, base_w)

    desc_r, asc_r = u(10, 14), u(12, 17)
    desc_c = (spine_c[0] + spine_r + desc_r * u(0.2, 0.9), spine_c[1] - spine_r * u(0.6, 1.2))
    root = heart.surface(np.array([heart.theta_towards(np.array([-0.6, -0.3, 0.7]))]), np.array([base_w]), 0.0)[0]
    asc_c = (float(root[0]) - u(0, 8), float(root[1]) - u(0, 6))
    cortex, marrow = u(450, 950), u(140, 300)
    if rng.random() < 0.3:
        marrow = cortex * u(0.7, 0.95)
    sternum_half = u(13, 15)
    rib_slope = u(0.25, 0.55)  # mm of descent per mm round the chest wall, posterior to anterior
    rib_z0 = u(0, 28)

    # Lesions along the vessel paths (each counted once, even if two end up touching).
    burden = int(rng.choice([0, 1, 2, 3], p=[0.2, 0.3, 0.3, 0.2]))
    count = [0, int(rng.integers(1, 3)), int(rng.integers(2, 5)), int(rng.integers(4, 9))][burden]
    lesions: list[tuple[str, str, Spot]] = []
    for _ in range(count):
        name = str(rng.choice(["LAD", "LCX", "RCA"], p=[0.45, 0.25, 0.3]))
        pts = paths[name]
        p = pts[int(rng.integers(8, len(pts) - 8))]
        if any(math.dist(p, (s.x, s.y, s.z)) < 9.0 for _, _, s in lesions):
            continue
        kind = str(rng.choice(["small", "moderate", "large"], p=[0.55, 0.3, 0.15]))
        lesions.append((name, kind, _lesion(rng, p, increment, kind)))

    decoys: list[Spot] = []
    for _ in range(rng.poisson(2.5)):  # descending and ascending aortic wall
        a = u(0, 2 * math.pi)
        c, r, zz = (desc_c, desc_r, u(-90, 90)) if rng.random() < 0.6 else (asc_c, asc_r, hz + extent[2] * u(0.2, 1.3))
        decoys.append(Spot(c[0] + r * math.cos(a), c[1] + r * math.sin(a), zz, u(1, 3), u(1.5, 5), u(250, 900)))
    if rng.random() < 0.5:  # osteophytes on the front of the vertebrae
        for _ in range(int(rng.integers(1, 4))):
            decoys.append(Spot(spine_c[0] + u(-10, 10), spine_c[1] - spine_r - u(0, 2), u(-80, 60), u(1.5, 4),
                               u(2, 5), u(300, 800)))
    if rng.random() < 0.5:  # costal cartilage calcification beside the sternum, low in the chest
        for _ in range(int(rng.integers(1, 5))):
            side = float(rng.choice([-1.0, 1.0]))
            decoys.append(Spot(side * u(20, 45), sternum_back - u(0, 6), u(-70, 10), u(1.5, 4), u(2, 6), u(250, 700)))
    valve_spots: list[Spot] = []
    if rng.random() < 0.45:  # mitral annulus: an arc just inside the AV groove, on the left
        left = heart.theta_towards(np.array([1.0, 0.2, 0.0]))
        for th in left + u(-0.6, 0.0) + 0.35 * np.arange(int(rng.integers(2, 6))):
            q = heart.surface(np.array([th]), np.array([base_w]), -u(5, 9))[0]
            valve_spots.append(Spot(float(q[0]), float(q[1]), float(q[2]), u(1.5, 3), u(1.5, 3.5), u(300, 850)))
    if rng.random() < 0.35:  # aortic valve at the root
        for _ in range(int(rng.integers(1, 4))):
            valve_spots.append(Spot(asc_c[0] + u(-5, 5), asc_c[1] + u(-5, 5), float(root[2]) + u(-4, 4),
                                    u(1.5, 4), u(1.5, 3.5), u(300, 950)))
    wires = [Spot(u(-4, 4), sternum_back - 4 + u(-2, 2), u(-60, 60), u(0.5, 1.0), u(1, 2), u(1800, 3000))
             for _ in range(int(rng.integers(2, 6)))] if rng.random() < 0.2 else []
    if arch_cartilage:
        decoys += _arch_cartilage(np.random.default_rng([seed, ARCH_CARTILAGE_STREAM]), heart)

    below = bool(rng.random() < 0.5) if reach_below is None else reach_below
    z_lo = hz - extent[2] - fat - (u(60, 120) if below else u(10, 30))
    z_hi = hz + extent[2] + fat + u(15, 60)
    zs = np.arange(z_lo + u(0, increment), z_hi, increment)
    axis = ((np.arange(SIZE) - (SIZE - 1) / 2) * spacing).astype(np.float32)
    xx, yy = np.meshgrid(axis, axis)
    shape = (len(zs), SIZE, SIZE)
    hu = np.empty(shape, dtype=np.int16)
    heart_l, non_l, valve_l, abdomen_l = (np.zeros(shape, dtype=bool) for _ in range(4))
    ids = np.zeros(shape, dtype=np.int16)
    margin_px = max(1, round(LABEL_MARGIN_MM / spacing))
    white = noise * 2.0 * math.sqrt(math.pi) * 0.8

    def ellipse(cx: float, cy: float, a: float, b: float) -> np.ndarray:
        return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0

    for i, z in enumerate(zs):
        z = float(z)
        narrow = float(np.clip(1.0 - 0.0018 * max(0.0, z - hz), 0.75, 1.0))  # the chest narrows upwards
        ba, bb = body_a * narrow, body_b * (0.5 + 0.5 * narrow)
        img = np.full((SIZE, SIZE), -1000.0, dtype=np.float32)
        img[ellipse(0, 0, ba, bb)] = -95.0
        img[ellipse(0, 0, ba - skin_fat, bb - skin_fat)] = 42.0
        for side in (-1.0, 1.0):  # lungs, with the diaphragm dome below
            lung = ellipse(side * (ba - skin_fat) * 0.47, bb * 0.08, (ba - skin_fat) * 0.4, (bb - skin_fat) * 0.78)
            lung &= ellipse(0, 0, ba - skin_fat - 6, bb - skin_fat - 6)  # the chest wall closes round it
            dome = dome_z + (6.0 if side < 0 else 0.0) - 0.012 * ((xx - side * ba * 0.45) ** 2 + (yy - 10) ** 2)
            img[lung & (z > dome)] = -830.0
            under = lung & (z <= dome)
            abdomen_l[i] |= under
            if side < 0:
                img[under] = 58.0  # liver
            else:
                img[under] = 30.0  # stomach and spleen
                img[under & ellipse(ba * 0.3, -bb * 0.1, 28, 20) & (z > dome - 30)] = -700.0  # gastric air
        fat_in = heart.inside(xx, yy, z, fat)
        if fat_in.any():  # the heart hangs in the mediastinum: soft tissue joins it to the midline
            rr, cc = np.nonzero(fat_in)
            hy_, hx_ = float(yy[rr, cc].mean()), float(xx[rr, cc].mean())
            reach = 0.5 * math.sqrt(rr.size / math.pi) * spacing
            for f in np.linspace(0.0, 1.0, 12):
                img[ellipse(hx_ * f, sternum_back + 12 + (hy_ - sternum_back - 12) * f, reach, reach)] = 20.0
        img[fat_in] = -85.0
        img[heart.inside(xx, yy, z, 0.0)] = 38.0
        heart_l[i] = heart.inside(xx, yy, z, fat + HEART_MARGIN_MM)
        for pts in paths.values():  # the arteries: soft tissue tubes in the fat
            near = pts[np.abs(pts[:, 2] - z) < 1.8]
            for x, y, pz in near[::2]:
                r = math.sqrt(max(0.0, 1.8 ** 2 - (z - pz) ** 2))
                if r > 0.4:
                    img[ellipse(float(x), float(y), r, r)] = 40.0
        img[ellipse(*desc_c, desc_r, desc_r)] = 40.0
        if z > float(root[2]):
            img[ellipse(*asc_c, asc_r, asc_r)] = 40.0
        non = np.zeros((SIZE, SIZE), dtype=bool)
        vb = ellipse(*spine_c, spine_r, spine_r * 0.85)  # vertebral body: cortex ring and marrow
        img[vb] = cortex
        img[ellipse(*spine_c, spine_r - 2.2, spine_r * 0.85 - 2.2)] = marrow
        non |= vb
        arch = ellipse(spine_c[0], spine_c[1] + spine_r + 11, 11, 8)
        img[arch] = cortex * 0.85
        img[ellipse(spine_c[0], spine_c[1] + spine_r + 11, 6.5, 5)] = 15.0
        non |= arch & (img > 130)
        st = ellipse(0, sternum_back - 6, sternum_half, 6)  # sternum
        img[st] = cortex * 0.8
        img[ellipse(0, sternum_back - 6, 11, 3.8)] = marrow
        non |= st
        wall_a, wall_b = ba - skin_fat - 8, bb - skin_fat - 7
        for k in range(12):  # sloping ribs: where each crosses this slice, going round the chest wall
            phi = (z - (rib_z0 - 28.0 * k)) / -rib_slope / max(wall_a, wall_b)  # radians from the spine
            for side in (-1.0, 1.0):
                if 0.35 < phi < 2.75:
                    cx = side * wall_a * math.sin(phi)
                    cy = wall_b * math.cos(phi)
                    rib = ellipse(cx, cy, 6.5, 4.5)
                    img[rib] = cortex * 0.9
                    img[ellipse(cx, cy, 4.0, 2.2)] = marrow
                    non |= rib
        for s in decoys + valve_spots + wires:
            cover, r = _ellipsoid_slice(xx, yy, z, s)
            if r > 0.15:
                img = np.maximum(img, img + (s.hu - img) * cover)
                hit = _ellipsoid_slice(xx, yy, z, s, LABEL_MARGIN_MM)[0] > 0.5
                non |= hit
                if s in valve_spots:
                    valve_l[i] |= hit
        for k, (_, _, s) in enumerate(lesions, start=1):
            cover, r = _ellipsoid_slice(xx, yy, z, s)
            if r > 0.15:
                img = np.maximum(img, img + (s.hu - img) * cover)
                ids[i][_ellipsoid_slice(xx, yy, z, s, LABEL_MARGIN_MM)[0] > 0.5] = k
        if wires:
            for s in wires:
                if abs(z - s.z) < s.rz:
                    d = np.abs(yy - s.y) + 0 * xx
                    img += (np.exp(-((d / 0.8) ** 2)) * 120.0 * np.clip(1 - np.abs(xx - s.x) / 60.0, 0, 1)).astype(np.float32)
        non_l[i] = ndimage.binary_dilation(non, iterations=margin_px) & (ids[i] == 0)
        img = ndimage.gaussian_filter(img, blur, mode="nearest")
        img += ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE), dtype=np.float32), 0.8) * white
        hu[i] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    info = [{"artery": name, "kind": kind, "area_mm2": round(math.pi * s.rxy ** 2, 2), "painted_hu": round(s.hu)}
            for name, kind, s in lesions]
    return VesselPhantom(hu=hu, heart=heart_l, coronary=ids > 0, noncoronary=non_l, valve=valve_l, lesion_ids=ids,
                         abdomen=abdomen_l, pixel_spacing=spacing, increment=increment, heart_centre_mm=(hx, hy, hz), lesions=info)


def _arch_cartilage(rng: np.random.Generator, heart: _Heart) -> list[Spot]:
    """1-4 calcified costal cartilage pieces in front of and beside the heart, each 2-8 mm outside the
    heart label (heart, fat and 4 mm), 600-700 HU, from mid-heart towards the apex: what round 3's
    candidates scored on the independent chests (docs/cac.md), which the sternum-side cartilage above
    never taught them."""
    spots = []
    for _ in range(int(rng.integers(1, 5))):
        side = float(rng.choice([-1.0, 1.0]))
        theta = heart.theta_towards(np.array([side * rng.uniform(0.6, 1.2), -1.0, 0.0])) + rng.uniform(-0.25, 0.25)
        r_xy, r_z = rng.uniform(1.5, 4.0), rng.uniform(2.0, 6.0)
        out = heart.fat + 4.0 + rng.uniform(2.0, 8.0) + r_xy
        q = heart.surface(np.array([theta]), np.array([rng.uniform(-0.3, 0.6)]), out)[0]
        spots.append(Spot(float(q[0]), float(q[1]), float(q[2]), r_xy, r_z, rng.uniform(600.0, 700.0)))
    return spots


def train_phantom(index: int, *, arch_cartilage: bool = False) -> tuple[int, VesselPhantom]:
    seed = TRAIN_SEED_BASE + index
    return seed, vessel_phantom(seed, arch_cartilage=arch_cartilage)


def validation_phantom(index: int) -> tuple[int, VesselPhantom]:
    seed = VALIDATION_SEED_BASE + index
    return seed, vessel_phantom(seed)


def test_phantom(index: int) -> tuple[int, VesselPhantom]:
    seed = TEST_SEED_BASE + index
    return seed, vessel_phantom(seed)
