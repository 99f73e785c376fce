"""A real Orthanc acting as the hospital PACS pushes a study to the connector over C-STORE."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.support.daemon import ConnectorProcess
from tests.support.dicomfiles import dataset_bytes, stored_by_sop
from tests.support.orthanc import OrthancServer


def test_orthanc_pushes_study_and_every_instance_arrives_byte_identical(tmp_path: Path, small_study) -> None:
    _, files = small_study
    daemon = ConnectorProcess(tmp_path / "site", dicom__allowed_ae_titles=["HOSPITALPACS"])
    modalities = {"connector": ["SITECONN", "127.0.0.1", daemon.port]}
    with daemon, OrthancServer(tmp_path / "orthanc", aet="HOSPITALPACS", modalities=modalities,
                               env={"TCP_NODELAY": "1"}) as pacs:
        study_ids = {pacs.upload(f)["ParentStudy"] for f in files}
        assert len(study_ids) == 1
        job = pacs.request("POST", "/modalities/connector/store",
                           {"Resources": list(study_ids), "Synchronous": False})
        assert pacs.wait_job(job["ID"])["State"] == "Success"
        stored = stored_by_sop(daemon.spool)
    assert len(stored) == len(files)
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(stored[uid]) == dataset_bytes(path)
