"""End to end: [results] return_to_pacs sends the CAC SR and SEG, with the ORIGINAL identifiers, to a
real Orthanc acting as the hospital PACS, by C-STORE through the outbox, retrying while it is down;
the registry meanwhile holds only the de-identified copies."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest

from devregistry import RegistryServer
from connector.synthetic import SyntheticPatient, SyntheticStudy, write_demo_study
from tests.support.waiting import wait_for
from tests.push.test_push_daemon import identifiers, push_settings, storescu, token_file
from tests.support.daemon import ConnectorProcess
from tests.support.orthanc import OrthancServer

pytestmark = pytest.mark.slow

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def test_return_to_pacs_sends_sr_and_seg_under_the_original_patient(tmp_path: Path) -> None:
    study = SyntheticStudy(patient=SyntheticPatient(family="HOLLOWAYNE", given="EVANGELINE"))
    files = write_demo_study(tmp_path / "pacs-files", ct_slices=30, study=study)
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    pacs = OrthancServer(tmp_path / "orthanc", aet="HOSPITALPACS")  # ports chosen now, started later
    try:
        settings = push_settings(registry.url, token, cac__enabled=True, cac__threads=2, pacs__host="127.0.0.1",
                                 pacs__port=pacs.dicom_port, pacs__ae_title="HOSPITALPACS",
                                 results__return_to_pacs=True,
                                 results__allow_unvalidated_model=True)  # the bundled model: research use only
        with ConnectorProcess(tmp_path / "site", **settings) as daemon:
            storescu(daemon.port, files)
            wait_for(lambda: json.loads(daemon.cli("status", "--json", check=True).stdout)["studies"]
                     .get("pushed") == 1, timeout=240, interval=0.5)
            # The PACS is down: the results wait in the outbox and are retried, not lost.
            logs = daemon.wait_for_log("PACS return will be retried", timeout=30)
            assert "PACS return will be retried" in logs
            with pacs:
                wait_for(lambda: len(pacs.request("GET", "/instances")) == 2, timeout=60, interval=0.5)
                held = [pydicom.dcmread(io.BytesIO(pacs.request("GET", f"/instances/{i}/file")))
                        for i in pacs.request("GET", "/instances")]
            logs = daemon.wait_for_log("CAC result sent to the PACS", timeout=10)
        assert sorted(str(d.SOPClassUID) for d in held) == sorted([SR_CLASS, SEG_CLASS])
        for ds in held:  # the hospital gets them under the patient's own identifiers, in the original study
            assert ds.PatientID == study.patient.patient_id and str(ds.PatientName) == study.patient.name
            assert ds.StudyInstanceUID == study.study_uid and ds.AccessionNumber == study.accession
            assert "PatientIdentityRemoved" not in ds or ds.PatientIdentityRemoved != "YES"
        # The registry holds de-identified copies only, and none of those originals.
        reg = registry.store
        [row] = reg.studies()
        assert row["instance_count"] == len(files) + 2
        originals = {str(d.SOPInstanceUID) for d in held}
        assert not originals & {r["sop_instance_uid"] for r in reg.instances_of(row["study_instance_uid"])}
        for path in (tmp_path / "registry").rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not [n for n in identifiers(study) if n in data], path.name
        assert study.patient.patient_id not in logs and study.patient.family not in logs
    finally:
        registry.stop()
