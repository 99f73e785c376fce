"""training.ensemble: one ONNX graph whose outputs are the mean of its members' outputs.

Built here from copies of the original v1 model (no torch needed): the mean of a model with itself
must give that model's probabilities; a damaged or mismatched member is refused with exit code 2;
and the bundled model's manifest describes an ensemble whose hash the runtime verifies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from connector.infer.manifest import BUNDLED_MODEL_DIR, MANIFEST_NAME, load_verified_model  # noqa: E402
from connector.store.digests import file_sha256  # noqa: E402
from connector.infer.runner import CacRunner  # noqa: E402
from connector.synthetic.phantoms import make_phantom  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
V1 = ROOT / "models" / "cac-synthetic-v1"


def run_ensemble(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "training.ensemble", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_the_mean_of_a_model_with_itself_gives_its_probabilities(tmp_path: Path) -> None:
    proc = run_ensemble("--out", str(tmp_path / "ens"), str(V1), str(V1), "--eval", "0", "--eval-independent", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "ens" / MANIFEST_NAME).read_text())
    assert manifest["sha256"] == file_sha256(tmp_path / "ens" / "model.onnx")
    v1 = json.loads((V1 / MANIFEST_NAME).read_text())
    assert manifest["compute"]["macs_per_slice"] == 2 * v1["compute"]["macs_per_slice"]
    assert [m["sha256"] for m in manifest["training"]["members"]] == [v1["sha256"]] * 2
    assert manifest["validated_for_clinical_use"] is False

    ph = make_phantom(11, plaque_count=4, n_slices=8)
    hu, spacing = ph.hu.astype(np.float32), (ph.pixel_spacing, ph.pixel_spacing)
    single = CacRunner.load(V1, threads=1).segment(hu, spacing)
    double = CacRunner.load(tmp_path / "ens", threads=1).segment(hu, spacing)
    for name in ("heart", "coronary", "other"):
        np.testing.assert_allclose(getattr(double, name), getattr(single, name), atol=1e-5)
    assert single.coronary.max() > 0.5  # the phantom's plaques are there to be compared
    # The same members give the same bytes (the manifest's hash can be reproduced).
    again = run_ensemble("--out", str(tmp_path / "again"), str(V1), str(V1), "--eval", "0", "--eval-independent", "0")
    assert again.returncode == 0
    assert file_sha256(tmp_path / "again" / "model.onnx") == manifest["sha256"]


def test_a_member_whose_bytes_do_not_match_its_manifest_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(V1, bad)
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes()[:-1] + b"\0")
    proc = run_ensemble("--out", str(tmp_path / "ens"), str(V1), str(bad), "--eval", "0", "--eval-independent", "0")
    assert proc.returncode == 2
    assert "sha256" in proc.stderr
    assert not (tmp_path / "ens" / "model.onnx").exists()


def test_members_with_different_inputs_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(V1, other)
    manifest = json.loads((other / MANIFEST_NAME).read_text())
    manifest["input"]["hu_window"] = [-1024.0, 3071.0]
    (other / MANIFEST_NAME).write_text(json.dumps(manifest))
    proc = run_ensemble("--out", str(tmp_path / "ens"), str(V1), str(other), "--eval", "0", "--eval-independent", "0")
    assert proc.returncode == 2 and "'input'" in proc.stderr


def test_the_bundled_model_is_a_verified_ensemble_of_three_seeds() -> None:
    manifest, _ = load_verified_model(BUNDLED_MODEL_DIR)
    raw = json.loads((BUNDLED_MODEL_DIR / MANIFEST_NAME).read_text())
    members = raw["training"]["members"]
    assert len(members) == 3 and len({m["seed"] for m in members}) == 3
    assert raw["sha256"] == file_sha256(BUNDLED_MODEL_DIR / "model.onnx")
    assert manifest.validated_for_clinical_use is False
