"""Through the daemon: a study received by C-STORE is de-identified, and nothing identifying is left
anywhere in the site folder except where originals live by design (incoming spool, quarantine)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom

from connector.synthetic import SyntheticPatient, SyntheticStudy, write_pet_ct_study
from tests.support.daemon import ConnectorProcess, wait_for_study_state
from tests.support.tools import dcmtk


def identifiers(study: SyntheticStudy) -> list[bytes]:
    p = study.patient
    y, m, d = p.birth_date[:4], p.birth_date[4:6], p.birth_date[6:]
    values = [p.patient_id, p.family, p.given, p.birth_date, f"{y}-{m}-{d}", f"{d}/{m}/{y}", f"{m}/{d}/{y}",
              f"{d}.{m}.{y}", study.accession]
    out = []
    for v in values:
        out += [v.encode(), v.encode("utf-16-le")]
    return out


def test_site_folder_holds_no_identifier_outside_originals(tmp_path: Path) -> None:
    study = SyntheticStudy(patient=SyntheticPatient(family="QUIXOTEZ", given="WILHELMINA"))
    _, files = write_pet_ct_study(tmp_path / "study", study, ct_count=8, pet_count=4, ct_rows=64)
    # a modern PET writes RadiopharmaceuticalAdministrationEventUID (no table row names it): it was
    # kept, and the guard quarantined every PET slice for it (issue 25); now every UID is remapped
    event_uid = "1.2.826.0.1.3680043.10.1432.77.5551234"
    for path in files:
        ds = pydicom.dcmread(path)
        if ds.Modality == "PT":
            ds.RadiopharmaceuticalAdministrationEventUID = event_uid
            for item in ds.get("RadiopharmaceuticalInformationSequence", []):
                item.RadiopharmaceuticalAdministrationEventUID = event_uid
            ds.save_as(path, enforce_file_format=True)
    with ConnectorProcess(tmp_path / "site", logging__file=str(tmp_path / "site" / "data" / "logs" / "c.log")) as d:
        subprocess.run([dcmtk("storescu"), "-aec", "SITECONN", "127.0.0.1", str(d.port), *map(str, files)],
                       check=True, capture_output=True)
        status = wait_for_study_state(d, "deidentified")
        assert status["instances_received"] == len(files)
        outgoing = sorted(d.spool.glob("outgoing/*/*.dcm"))
        assert len(outgoing) == len(files)
        # the daemon is still running: the WAL files are live
        scanned = 0
        needles = identifiers(study) + [event_uid.encode()]  # (the state DB holds original study UIDs by design)
        for path in sorted((tmp_path / "site").rglob("*")):
            rel = path.relative_to(tmp_path / "site").as_posix()
            if not path.is_file() or rel.startswith(("data/spool/incoming/", "data/quarantine/")):
                continue
            data = path.read_bytes()
            scanned += 1
            for needle in needles:
                assert needle not in data, f"identifier found in {rel}"
        assert scanned > 10
        assert any(p.name.endswith("-wal") for p in (tmp_path / "site").rglob("*"))
        ds = pydicom.dcmread(outgoing[0])
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID.startswith("TEST01-") and ds.PatientName == ds.PatientID
        assert ds.StudyInstanceUID != study.study_uid
    # the originals really are where they are allowed to be (the scan above would have found them)
    assert any(study.patient.patient_id.encode() in p.read_bytes()
               for p in (tmp_path / "site" / "data" / "spool" / "incoming").rglob("*.dcm"))
    # logs were part of the scan: the daemon's stderr and its rotating log file both sit in the site folder
    assert "study_processed" in d.logs()
    assert (tmp_path / "site" / "data" / "logs" / "c.log").stat().st_size > 0
