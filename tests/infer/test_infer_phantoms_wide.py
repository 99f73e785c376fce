"""The phantom generator's wide ranges (issue 15 item 2), and that the original generator is unchanged."""

from __future__ import annotations

import hashlib

import numpy as np

from connector.synthetic.phantoms import WIDE, WIDE_TEST, make_phantom, random_spec, render
from training.evaluate import WIDE_TEST_SPACINGS, held_out_wide


def test_original_generator_is_unchanged_bit_for_bit() -> None:
    # The bundled v1 model's world: the wide ranges draw nothing extra unless asked.
    ph = make_phantom(900_500)
    assert hashlib.sha256(ph.hu.tobytes()).hexdigest()[:16] == "a9b2053cbd05db57"
    assert not ph.spec.metal


def test_wide_ranges_draw_big_dense_plaques_metal_solid_bone_and_a_close_heart() -> None:
    big, metal_kinds, solid, gaps = 0, set(), 0, []
    for seed in range(40):
        spec = random_spec(np.random.default_rng(seed), ranges=WIDE, plaque_count=8)
        big += sum(p.rxy >= WIDE.big_rxy[0] for p in spec.plaques)
        metal_kinds |= {m.kind for m in spec.metal}
        solid += spec.bone_marrow_hu >= 0.7 * spec.bone_cortex_hu
    assert big > 40 and metal_kinds == {"wire", "stent"} and solid >= 5


def test_metal_is_labelled_non_coronary() -> None:
    for seed in range(60):
        rng = np.random.default_rng(seed)
        spec = random_spec(rng, ranges=WIDE_TEST, plaque_count=4)
        if any(m.kind == "stent" for m in spec.metal):
            break
    ph = render(spec, rng, spacing=0.7, noise=False)
    metal = ph.hu >= 1400
    assert metal.any()
    assert not ph.coronary[metal].any() and ph.noncoronary[metal].all()
    assert ph.pixel_spacing == 0.7


def test_wide_test_split_uses_its_own_seeds_spacings_and_ranges() -> None:
    seeds = set()
    for i in range(4):
        seed, ph = held_out_wide(i, n_slices=3)
        seeds.add(seed)
        assert ph.pixel_spacing == WIDE_TEST_SPACINGS[i]
    assert all(800_000 <= s < 900_000 for s in seeds)  # neither training (< 70) nor the original held-out
