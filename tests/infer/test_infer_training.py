"""The training script is deterministic: two separate runs give byte-identical ONNX files.

A tiny configuration (2 phantoms, a few steps) keeps this to seconds; the full recipe only differs
in sizes. Skipped where the ``train`` extra (torch) is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from connector.store.digests import file_sha256  # noqa: E402
from connector.infer.runner import CacRunner  # noqa: E402
from connector.synthetic.phantoms import make_phantom  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def train_tiny(out: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "training.train_cac",
        "--out",
        str(out),
        "--phantoms",
        "2",
        "--steps",
        "4",
        "--batch",
        "4",
        "--eval",
        "0",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_training_is_deterministic_and_exports_a_verifiable_model(tmp_path: Path) -> None:
    train_tiny(tmp_path / "a")
    train_tiny(tmp_path / "b")
    sha_a, sha_b = file_sha256(tmp_path / "a" / "model.onnx"), file_sha256(tmp_path / "b" / "model.onnx")
    assert sha_a == sha_b
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["sha256"] == sha_a
    assert manifest["validated_for_clinical_use"] is False
    # The exported model loads through the verified runtime and produces probabilities.
    runner = CacRunner.load(tmp_path / "a")
    ph = make_phantom(3, plaque_count=2, n_slices=5)
    seg = runner.segment(ph.hu.astype(np.float32), (ph.pixel_spacing, ph.pixel_spacing))
    assert seg.coronary.shape == (5, 128, 128)
    assert np.all((seg.heart >= 0) & (seg.heart <= 1))


def test_round_three_weights_target_bone_next_to_the_heart_and_small_lesions() -> None:
    """The round-3 options: non-coronary calcium near the heart label (not far from it) is marked for
    the extra loss weight and its slices drawn more often; slices with only small coronary calcium
    are drawn more often with the boost; with the options off the draw is rounds 1-2's."""
    from training.train_cac import NEAR_HEART_CELLS, near_heart, sampling_weights

    hearts = np.zeros((4, 64, 64), dtype=np.uint8)
    hearts[:3, 20:40, 20:40] = 1
    classes = np.full((4, 64, 64), -1, dtype=np.int8)
    classes[0, 42, 30] = 2  # a rib 2 cells below the heart: near
    classes[1, 60, 5] = 2  # far from the heart
    classes[2, 30, 30] = 1  # one small coronary cell
    classes[3, 10, 10] = 1  # coronary, no heart on this slice
    classes[3, 10, 11:14] = 1  # four cells: not small
    near = near_heart(hearts)
    assert near[0, 42, 30] and not near[1, 60, 5] and not near[3].any()
    assert near[0, 20 - NEAR_HEART_CELLS, 30] and not near[0, 20 - NEAR_HEART_CELLS - 1, 30]
    base = sampling_weights(classes, hearts, None)
    expected = np.array([1.0, 1.0, 4.0, 4.0])
    assert np.allclose(base, expected / expected.sum())  # rounds 1-2
    boosted = sampling_weights(classes, hearts, near, small_coronary_boost=4.0)
    expected = np.array([3.0, 1.0, 8.0, 4.0])
    assert np.allclose(boosted, expected / expected.sum())
