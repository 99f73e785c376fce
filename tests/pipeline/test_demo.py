"""The README's main-job command: the demo runs the whole chain and reports what the registry got."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_reports_pseudonym_instances_and_cac(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "connector", "demo", "--json", "--folder", str(tmp_path / "demo"),
                          "--ct-slices", "40"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["pseudonym"].startswith("DEMO01-")
    assert result["instances_sent"] == 60  # 40 CT + 20 PET
    assert result["instances"] == 62  # plus the CAC Measurement Report SR and the SEG of the scored calcium
    assert result["manifest"] is True
    assert result["subject"]["pseudonym"] == result["pseudonym"]
    cac = result["cac"]
    assert cac["category"] in {"0", "1-100", "101-400", ">400"}
    assert cac["agatston"] > 0  # the demo phantom carries coronary plaques
    assert cac["model"]["validated_for_clinical_use"] is False
    # nothing identifying in what the registry stored: the demo patient's ID is not in its files
    registry = tmp_path / "demo" / "registry"
    study = next((tmp_path / "demo" / "study").rglob("*.dcm"))
    import pydicom

    patient_id = pydicom.dcmread(study, stop_before_pixels=True).PatientID.encode()
    assert all(patient_id not in p.read_bytes() for p in registry.rglob("*") if p.is_file())
