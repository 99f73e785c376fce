"""Input preparation: windowing, neighbour slices, grid resampling, cropping the air around the body."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from connector.infer.preprocess import GridMap, body_box, neighbour_indices, window
from connector.infer.runner import CacRunner
from connector.settings.cac import CacConfig
from connector.synthetic.phantoms import make_phantom


def test_window_clips_and_scales_without_touching_the_input() -> None:
    hu = np.array([-1000.0, -300.0, 450.0, 1200.0, 3000.0], dtype=np.float32)
    before = hu.copy()
    assert np.allclose(window(hu, -300, 1200), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert np.array_equal(hu, before)


def test_neighbour_indices_repeat_the_end_slices() -> None:
    idx = neighbour_indices(5, np.array([0, 2, 4]), 3)
    assert idx.tolist() == [[0, 0, 1], [1, 2, 3], [3, 4, 4]]
    assert neighbour_indices(5, np.array([0]), 5).tolist() == [[0, 0, 0, 1, 2]]


def test_grid_map_identity_and_resampling() -> None:
    same = GridMap.build((512, 512), (0.9766, 0.9766), 512, 0.9765625)
    assert same.identity
    data = np.arange(4 * 4, dtype=np.float32).reshape(1, 4, 4)
    assert GridMap.build((4, 4), (1.0, 1.0), 4, 1.0).to_model(data, -1000) is data

    # A 0.5 mm series of 8 pixels seen on a 1 mm model grid of 8 pixels: the series covers the
    # middle 4 model pixels; the rest is air.
    grid = GridMap.build((8, 8), (0.5, 0.5), 8, 1.0)
    assert not grid.identity
    assert grid.model_rows.tolist()[:2] == [-1, -1] and grid.model_rows.tolist()[-2:] == [-1, -1]
    series = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    model = grid.to_model(series, -1000.0)
    assert model.shape == (1, 8, 8)
    assert (model[0, :2] == -1000).all() and (model[0, :, -2:] == -1000).all()
    assert model[0, 2, 2] == series[0, grid.model_rows[2], grid.model_cols[2]]
    # Every series pixel maps into the model grid and back to a nearby position.
    assert (grid.series_rows >= 0).all()
    centre_mm = (np.arange(8) - 3.5) * 0.5
    assert np.all(np.abs((grid.series_rows - 3.5) * 1.0 - centre_mm) <= 0.5 + 1e-9)


def test_body_box_is_aligned_and_covers_the_body() -> None:
    vol = np.full((3, 512, 512), -1000.0, dtype=np.float32)
    vol[1, 100:300, 150:420] = 40.0
    r0, r1, c0, c1 = body_box(vol, 16, 32)
    assert all(v % 16 == 0 for v in (r0, r1, c0, c1))
    assert r0 <= 100 - 32 and r1 >= 300 + 32 and c0 <= 150 - 32 and c1 >= 420 + 32
    assert (r1 - r0, c1 - c0) == (272, 352)  # 64..336, 112..464
    assert body_box(np.full((2, 64, 64), -1000.0), 16, 8) == (0, 64, 0, 64)


def test_cropping_the_air_does_not_change_the_result() -> None:
    runner = CacRunner.from_config(CacConfig())
    assert runner.manifest.input.size_multiple
    ph = make_phantom(777, plaque_count=6, z_margin=0.0)
    hu = ph.hu.astype(np.float32)
    spacing = (ph.pixel_spacing, ph.pixel_spacing)
    cropped = runner.score_hu(hu, spacing, ph.increment)
    full_manifest = dataclasses.replace(
        runner.manifest, input=dataclasses.replace(runner.manifest.input, size_multiple=None)
    )
    runner.manifest = full_manifest
    full = runner.score_hu(hu, spacing, ph.increment)
    assert cropped.agatston.score > 0
    assert np.array_equal(cropped.mask, full.mask)
    assert cropped.agatston.score == pytest.approx(full.agatston.score)
