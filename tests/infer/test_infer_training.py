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
