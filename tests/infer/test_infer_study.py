"""End to end on DICOM files: score_study (the daemon's call) and the ``site-connector cac`` command."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    PositronEmissionTomographyImageStorage,
    RLELossless,
    generate_uid,
)

from connector.cli.main import main
from connector.infer.agatston import category_for
from connector.infer.manifest import BUNDLED_MODEL_DIR
from connector.store.digests import file_sha256
from connector.infer.runner import CacRunner
from connector.settings.cac import CacConfig
from connector.infer.study import score_study
from training.evaluate import truth_score
from connector.synthetic.phantom_series import write_phantom, write_phantom_series
from connector.synthetic.phantoms import make_phantom

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runner() -> CacRunner:
    return CacRunner.from_config(CacConfig(threads=2))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(424242, plaque_count=9, increment=3.0)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory, phantom) -> Path:
    """A PET/CT study: the CTAC series, a localizer and a PET series, all one StudyInstanceUID."""
    root = tmp_path_factory.mktemp("study")
    study = generate_uid()
    write_phantom(phantom, root / "ctac", study_uid=study, description="CTAC 3.0 mm")
    write_phantom_series(
        np.zeros((2, 64, 64), np.int16),
        [0.0, 1.0],
        1.0,
        root / "scout",
        study_uid=study,
        description="Topogram",
        extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
    )
    write_phantom_series(
        np.zeros((12, 32, 32), np.int16),
        3.27 * np.arange(12),
        3.18,
        root / "pet",
        study_uid=study,
        description="PET AC",
        extra={"Modality": "PT", "SOPClassUID": PositronEmissionTomographyImageStorage},
    )
    return root


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm"))


def test_score_study_scores_the_ctac_with_model_identity_and_timings(
    study_dir: Path, phantom, runner: CacRunner, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        results = score_study(all_files(study_dir), runner)
    assert len(results) == 1
    result = results[0]
    assert result.ok
    truth = truth_score(phantom)
    assert truth > 0
    assert result.category == category_for(truth)
    assert result.agatston.score == pytest.approx(truth, rel=0.35)
    ds = pydicom.dcmread(next((study_dir / "ctac").glob("*.dcm")), stop_before_pixels=True)
    assert (result.study_uid, result.series_uid) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)

    payload = result.to_json()
    for key in ("agatston", "volume_mm3", "lesions", "category", "model", "provider", "seconds", "timings"):
        assert key in payload
    assert payload["category"] in {"0", "1-100", "101-400", ">400"}
    assert payload["model"]["sha256"] == file_sha256(BUNDLED_MODEL_DIR / "model.onnx")
    assert payload["model"]["validated_for_clinical_use"] is False
    assert payload["series_instance_uid"] == ds.SeriesInstanceUID
    assert payload["series"]["slices"] == phantom.hu.shape[0]
    assert payload["series"]["slice_increment_mm"] == pytest.approx(3.0)
    assert payload["timings"]["load"] > 0 and payload["timings"]["inference"] > 0
    assert payload["seconds"] == pytest.approx(payload["timings"]["total"], abs=1e-3)
    json.dumps(payload)  # serialisable as is
    assert "series_instance_uid" not in result.to_json(include_uids=False)

    # Logs carry codes and counts only.
    for value in (ds.StudyInstanceUID, ds.SeriesInstanceUID, str(ds.PatientName), ds.PatientID, ds.AccessionNumber):
        assert value not in caplog.text
    assert "cac series scored" in caplog.text


def test_resampled_and_compressed_series_score_like_the_original(tmp_path: Path, runner: CacRunner) -> None:
    # A phantom reconstructed at 0.8 mm pixels (the model works at 0.98 mm): the runner resamples.
    ph = make_phantom(515151, plaque_count=8, increment=2.5, spacing=0.8, z_margin=5.0)
    plain = score_study(write_phantom(ph, tmp_path / "plain"), runner)[0]
    truth = truth_score(ph)
    assert plain.ok and truth > 0
    assert plain.category == category_for(truth)
    packed = score_study(write_phantom(ph, tmp_path / "rle", transfer_syntax=RLELossless), runner)[0]
    assert packed.ok
    assert packed.agatston.score == plain.agatston.score
    assert packed.agatston.lesion_count == plain.agatston.lesion_count


def test_no_eligible_series_gives_no_result(study_dir: Path, runner: CacRunner) -> None:
    pet_only = all_files(study_dir / "pet") + all_files(study_dir / "scout")
    assert score_study(pet_only, runner) == []


def test_undecodable_series_gives_an_error_result(tmp_path: Path, study_dir: Path, runner: CacRunner) -> None:
    shutil.copytree(study_dir / "ctac", tmp_path / "ctac")
    victim = next((tmp_path / "ctac").glob("*.dcm"))
    ds = pydicom.dcmread(victim)
    ds.PixelData = b"\x00" * 100  # truncated pixel data, headers intact
    ds.save_as(victim)
    results = score_study(all_files(tmp_path), runner)
    assert len(results) == 1
    assert results[0].status == "error"
    assert results[0].error in {"decode_failed", "inconsistent_geometry"}
    assert results[0].to_json()["agatston"] is None


def test_cli_json_output(study_dir: Path, phantom, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["cac", str(study_dir), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out)
    for key in ("agatston", "volume_mm3", "lesions", "category", "model", "seconds"):
        assert key in payload
    assert payload["category"] == category_for(truth_score(phantom))
    assert payload["model"]["name"] == "cac-synthetic"
    ds = pydicom.dcmread(next((study_dir / "ctac").glob("*.dcm")), stop_before_pixels=True)
    assert ds.StudyInstanceUID not in out and ds.SeriesInstanceUID not in out and ds.PatientID not in out


def test_cli_human_output_warns_about_the_synthetic_model(study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cac", str(study_dir / "ctac")]) == 0
    out = capsys.readouterr().out
    assert "Agatston" in out and "category" in out
    assert "NOT validated for clinical use" in out


def test_cli_refuses_a_tampered_model(tmp_path: Path, study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL_DIR, model_dir)
    with open(model_dir / "model.onnx", "ab") as fh:
        fh.write(b"\x00")
    assert main(["cac", str(study_dir), "--model", str(model_dir), "--json"]) == 2
    captured = capsys.readouterr()
    assert "model_hash_mismatch" in captured.err
    assert captured.out == ""


def test_cli_exit_codes_for_bad_folders(tmp_path: Path, study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cac", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["cac", str(tmp_path / "empty")]) == 1
    assert main(["cac", str(study_dir / "pet")]) == 1
    err = capsys.readouterr().err
    assert "not_ct" in err


def test_cli_entry_point_runs_as_a_process(study_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "connector", "cac", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "--model" in proc.stdout and "--json" in proc.stdout
