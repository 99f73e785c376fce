"""Model manifests: the bundled model's labelling, SHA-256 verification and refusal on mismatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from connector.infer.errors import ModelError, ModelIntegrityError
from connector.infer.manifest import (
    BUNDLED_MODEL_DIR,
    load_manifest,
    load_verified_model,
)
from connector.store.digests import file_sha256
from connector.infer.runner import CPU, CacRunner, choose_providers
from connector.settings.cac import CacConfig


def copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL_DIR, target)
    return target


def test_bundled_model_is_labelled_synthetic_and_not_clinical() -> None:
    manifest = load_manifest(BUNDLED_MODEL_DIR)
    assert manifest.validated_for_clinical_use is False
    assert "synthetic" in manifest.intended_use.lower()
    assert "not validated for clinical use" in manifest.intended_use.lower()
    assert manifest.input.slices_per_sample == 3
    assert manifest.output.calcium_classes[manifest.output.coronary_class] == "coronary"
    assert manifest.sha256 == file_sha256(BUNDLED_MODEL_DIR / manifest.file)
    assert (BUNDLED_MODEL_DIR / manifest.file).stat().st_size < 2 * 1024 * 1024
    assert manifest.macs_per_slice and manifest.macs_per_slice > 0


def test_runner_reports_model_identity_and_provider() -> None:
    runner = CacRunner.from_config(CacConfig())
    summary = runner.manifest.summary()
    assert summary["sha256"] == file_sha256(BUNDLED_MODEL_DIR / "model.onnx")
    assert summary["name"] == "cac-synthetic"
    assert runner.provider in choose_providers([])


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    model_dir = copy_model(tmp_path)
    blob = bytearray((model_dir / "model.onnx").read_bytes())
    blob[-1] ^= 0x01  # one flipped bit in the weights
    (model_dir / "model.onnx").write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError) as err:
        CacRunner.from_config(CacConfig(model_dir=model_dir))
    assert err.value.code == "model_hash_mismatch"
    assert "refusing" in str(err.value)


def test_manifest_hash_must_match_too(tmp_path: Path) -> None:
    model_dir = copy_model(tmp_path)
    data = json.loads((model_dir / "manifest.json").read_text())
    data["sha256"] = "0" * 64
    (model_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelIntegrityError):
        load_verified_model(model_dir)


def test_missing_or_invalid_manifest(tmp_path: Path) -> None:
    model_dir = copy_model(tmp_path)
    (model_dir / "manifest.json").unlink()
    with pytest.raises(ModelError) as err:
        load_verified_model(model_dir)
    assert err.value.code == "manifest_missing"
    (model_dir / "manifest.json").write_text(json.dumps({"schema": 1, "name": "x"}))
    with pytest.raises(ModelError) as err:
        load_verified_model(model_dir)
    assert err.value.code == "manifest_invalid"
    (model_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError) as err:
        load_verified_model(model_dir)
    assert err.value.code == "manifest_unreadable"


def test_manifest_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    model_dir = copy_model(tmp_path)
    data = json.loads((model_dir / "manifest.json").read_text())
    data["file"] = "../elsewhere.onnx"
    (model_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError) as err:
        load_verified_model(model_dir)
    assert err.value.code == "model_missing"


def test_provider_choice() -> None:
    assert choose_providers([])[-1] == CPU
    assert choose_providers([CPU]) == [CPU]
    with pytest.raises(ModelError) as err:
        choose_providers(
            ["TensorrtExecutionProvider"]
            if "TensorrtExecutionProvider" not in __import__("onnxruntime").get_available_providers()
            else ["NoSuchProvider"]
        )
    assert err.value.code == "provider_unavailable"
