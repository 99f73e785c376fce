"""Independent chest phantoms: a second, deliberately different synthetic world for CAC evaluation.

Why: a model trained and tested on one generator can look perfect on that generator's test split and
still fail on anatomy it never saw (issue 15: on chest phantoms built without ``connector.synthetic.phantoms``,
the bundled model scored half of the large lesions; wider models scored a sternum or the spine). This
module shares no code or parameters with ``connector.synthetic.phantoms`` (only numpy/scipy), so its anatomy,
densities, blur and noise differ from anything a model here was trained on. It is never used for
training; ``training.evaluate`` reports it as its own column.

Each phantom: an elliptic body with a fat layer, two lungs, a heart in a shell of epicardial fat with
four, two or no coronary lesions (phantoms 0-3, 4-7, 8-11, then again) of 5-7 pixels radius and
480-700 HU on its surface, ascending and descending
aorta with wall calcium, a ring-shaped spine (dense cortex, lighter marrow), ribs that come and go
along z, a sternum whose gap to the heart's fat ranges from touching to 25 mm (solid in some), and an
aortic-valve calcification in half of them. Pixel spacing 0.70-0.98 mm, increments 2.5-5 mm, noise
12-30 HU. Labels: coronary lesions (1 mm margin for partial volume), all non-coronary calcium, and
the valve part of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SEED_BASE = 700_000  # training draws seeds from 0 and 100000, the other test splits from 800000 and 900000
SPACINGS = (0.70, 0.78, 0.86, 0.98)
INCREMENTS = (2.5, 3.0, 5.0)
STERNUM_GAPS = (0.0, 3.0, 10.0, 25.0)  # mm between the sternum's back and the heart's fat
SIZE = 512


@dataclass
class IndependentPhantom:
    """The fields :func:`training.evaluate.score_phantom` reads, like ``connector.synthetic.phantoms.Phantom``."""

    hu: np.ndarray
    heart: np.ndarray
    coronary: np.ndarray
    noncoronary: np.ndarray
    valve: np.ndarray
    pixel_spacing: float
    increment: float


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0


def _ellipsoid_section(xx: np.ndarray, yy: np.ndarray, dz: float, c: tuple[float, float], r: tuple[float, float, float]
                       ) -> np.ndarray:
    """Cross-section at height ``dz`` from the centre of an ellipsoid with radii ``r`` (x, y, z)."""
    k = 1.0 - (dz / r[2]) ** 2
    if k <= 0:
        return np.zeros(xx.shape, dtype=bool)
    s = math.sqrt(k)
    return _ellipse(xx, yy, c[0], c[1], r[0] * s, r[1] * s)


def independent_phantom(index: int) -> tuple[int, IndependentPhantom]:
    """The index-th independent phantom (deterministic)."""
    seed = SEED_BASE + index
    rng = np.random.default_rng(seed)
    spacing = SPACINGS[index % len(SPACINGS)]
    increment = INCREMENTS[index % len(INCREMENTS)]
    noise = float(rng.uniform(12.0, 30.0))
    gap = STERNUM_GAPS[index % len(STERNUM_GAPS)]
    solid_sternum = bool(rng.random() < 0.5)

    # Geometry in mm: x to the image's right, y down (posterior), z up; image centre at (0, 0).
    body_a, body_b = rng.uniform(150, 185), rng.uniform(105, 130)
    body_fat = rng.uniform(10, 25)
    heart_c = (rng.uniform(10, 30), rng.uniform(-25, -5))
    heart_r = (rng.uniform(52, 64), rng.uniform(42, 52), rng.uniform(48, 58))
    fat = rng.uniform(5, 9)
    outer = (heart_r[0] + fat, heart_r[1] + fat, heart_r[2] + fat)
    sternum_half = (rng.uniform(12, 18), rng.uniform(5, 8))
    sternum_c = (heart_c[0] * 0.3, heart_c[1] - outer[1] - gap - sternum_half[1])
    spine_c, spine_r = (rng.uniform(-5, 5), body_b - rng.uniform(30, 40)), rng.uniform(15, 20)
    asc_r = rng.uniform(12, 16)  # ascending aorta: outside the heart's fat, to its right and front, touching it
    th = math.radians(rng.uniform(205, 230))
    asc_c = (heart_c[0] + (outer[0] + asc_r + 1.0) * math.cos(th), heart_c[1] + (outer[1] + asc_r + 1.0) * math.sin(th))
    desc_c, desc_r = (spine_c[0] - spine_r - 12, spine_c[1] - spine_r * 0.6), rng.uniform(10, 13)
    rib_phase = rng.uniform(0, 25)
    lesions = []
    for k in range((4, 2, 0)[(index // 4) % 3]):  # on the heart's surface, in the fat, spread over z
        az = math.radians(rng.uniform(-160, 20) + 40 * k)
        el = rng.uniform(-0.6, 0.6)
        scale = 1.0 + fat / 2 / heart_r[0]
        lx = heart_c[0] + heart_r[0] * scale * math.cos(az) * math.cos(el)
        ly = heart_c[1] + heart_r[1] * scale * math.sin(az) * math.cos(el)
        lz = heart_r[2] * math.sin(el)
        rpx = rng.uniform(5, 7)
        lesions.append(((lx, ly, lz), (rpx * spacing, rpx * spacing, rng.uniform(2.5, 4.0)), rng.uniform(480, 700)))
    aortic_wall = [(rng.uniform(0, 2 * math.pi), rng.uniform(8, 30), rng.uniform(300, 650)) for _ in range(2)]
    valve = None
    if rng.random() < 0.5:
        valve = ((heart_c[0] - heart_r[0] * 0.35, heart_c[1] - heart_r[1] * 0.25, heart_r[2] * 0.45),
                 (rng.uniform(3, 5),) * 2 + (rng.uniform(2, 4),), rng.uniform(300, 600))

    z_lo, z_hi = -outer[2] - 20.0, outer[2] + 20.0
    zs = np.arange(z_lo + rng.uniform(0, increment), z_hi, increment)
    axis = (np.arange(SIZE) - (SIZE - 1) / 2) * spacing
    xx, yy = np.meshgrid(axis, axis)
    shape = (len(zs), SIZE, SIZE)
    hu = np.empty(shape, dtype=np.int16)
    heart_l, cor_l, non_l, valve_l = (np.zeros(shape, dtype=bool) for _ in range(4))
    margin_px = max(1, round(1.0 / spacing))
    for i, z in enumerate(zs):
        img = np.full((SIZE, SIZE), -1000.0, dtype=np.float32)
        body = _ellipse(xx, yy, 0, 10, body_a, body_b)
        img[body] = -100.0
        img[_ellipse(xx, yy, 0, 10, body_a - body_fat, body_b - body_fat)] = 35.0
        for side in (-1, 1):
            img[_ellipse(xx, yy, side * body_a * 0.45, 0, body_a * 0.33, body_b * 0.62)] = -820.0
        heart_out = _ellipsoid_section(xx, yy, z, heart_c, outer)
        img[heart_out] = -90.0
        img[_ellipsoid_section(xx, yy, z, heart_c, heart_r)] = 45.0
        heart_l[i] = heart_out
        non = np.zeros((SIZE, SIZE), dtype=bool)
        for c, r in ((asc_c, asc_r), (desc_c, desc_r)):
            if c is asc_c and z < outer[2] * 0.1:
                continue  # the ascending aorta leaves the heart's upper half
            img[_ellipse(xx, yy, c[0], c[1], r, r)] = 40.0
        for ang, zc, h in aortic_wall:
            if abs(z - zc) < 4.0:
                spot = _ellipse(xx, yy, asc_c[0] + asc_r * math.cos(ang), asc_c[1] + asc_r * math.sin(ang), 3.0, 3.0)
                img[spot] = h
                non |= spot
        sp = _ellipse(xx, yy, *spine_c, spine_r, spine_r)
        img[sp] = 700.0
        img[_ellipse(xx, yy, *spine_c, spine_r - 3, spine_r - 3)] = 200.0
        non |= sp
        st = _ellipse(xx, yy, *sternum_c, *sternum_half)
        img[st] = 550.0 if solid_sternum else 650.0
        if not solid_sternum:
            img[_ellipse(xx, yy, *sternum_c, sternum_half[0] - 2.5, sternum_half[1] - 2.5)] = 220.0
        non |= st
        if (z + rib_phase) % 25.0 < 12.0:
            for ang in np.radians([200, 220, 240, 300, 320, 340]):
                rx, ry = (body_a - body_fat - 8) * math.cos(ang), 10 + (body_b - body_fat - 8) * math.sin(ang)
                rib = _ellipse(xx, yy, rx, ry, 7.0, 4.0)
                img[rib] = 600.0
                non |= rib
        if valve is not None:
            (vx, vy, vz), vr, vh = valve
            v = _ellipsoid_section(xx, yy, z - vz, (vx, vy), vr)
            img[v] = vh
            non |= v
            valve_l[i] = v
        cor = np.zeros((SIZE, SIZE), dtype=bool)
        for (lx, ly, lz), lr, lh in lesions:
            les = _ellipsoid_section(xx, yy, z - lz, (lx, ly), lr)
            img[les] = lh
            cor |= les
        cor_l[i] = ndimage.binary_dilation(cor, iterations=margin_px) if cor.any() else cor
        non_l[i] = ndimage.binary_dilation(non, iterations=margin_px) & ~cor_l[i]
        img = ndimage.gaussian_filter(img, 0.7, mode="nearest")
        img += ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE), dtype=np.float32), 1.0) * noise * 3.5
        hu[i] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    return seed, IndependentPhantom(hu=hu, heart=heart_l, coronary=cor_l, noncoronary=non_l, valve=valve_l,
                                    pixel_spacing=spacing, increment=increment)
