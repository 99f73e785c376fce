"""End to end: storescu -> daemon (CAC on) -> dev registry holds the CAC SR and SEG under the pseudonym.

The study is a synthetic PET/CT whose CT is a chest phantom with coronary plaques. The daemon scores
it, keeps the scored-calcium map on the site, builds the SR and SEG from the original CT, de-identifies
them like the images and sends them with the study by STOW-RS; the study becomes ``pushed`` only once
they (in the study's STOW batches) are acknowledged too.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from connector.infer.dicom_results import CALCIUM_SCORE
from connector.infer.scored_calcium import load_scored_calcium
from devregistry import RegistryServer
from connector.store.layout import SiteLayout
from connector.store.state import study_key
from connector.synthetic import SyntheticPatient, SyntheticStudy, write_demo_study
from tests.support.waiting import wait_for
from tests.push.test_push_daemon import identifiers, push_settings, storescu, token_file
from tests.support.daemon import ConnectorProcess

pytestmark = pytest.mark.slow

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def test_registry_holds_cac_sr_and_seg_under_the_pseudonym(tmp_path: Path) -> None:
    study = SyntheticStudy(patient=SyntheticPatient(family="VALDEMARIUS", given="PRIMROSELLA"))
    files = write_demo_study(tmp_path / "pacs", ct_slices=30, study=study)
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    try:
        settings = push_settings(registry.url, token, cac__enabled=True, cac__threads=2)
        with ConnectorProcess(tmp_path / "site", **settings) as daemon:
            storescu(daemon.port, files)
            # every image, plus the SR and the SEG, then the manifest naming them all
            wait_for(lambda: registry.store.stats()["instances"] == len(files) + 2
                     and registry.store.stats()["manifests"] == 1 and registry.store.stats()["results"] == 1,
                     timeout=240)
            wait_for(lambda: json.loads(daemon.cli("status", "--json", check=True).stdout)["studies"]
                     .get("pushed") == 1, timeout=60)
            layout = SiteLayout(daemon.data_dir, daemon.folder / "keys")
        reg = registry.store
        [held] = reg.studies()
        pseudonym = held["patient_id"]
        rows = reg.instances_of(held["study_instance_uid"])
        by_class: dict[str, list[pydicom.Dataset]] = {}
        needles = identifiers(study)
        for row in rows:
            data = reg.instance_file(row).read_bytes()
            assert not [n for n in needles if n in data]
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.PatientID == pseudonym == str(ds.PatientName) and ds.PatientIdentityRemoved == "YES"
            by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
        [sr], [seg] = by_class[SR_CLASS], by_class[SEG_CLASS]
        cts = sorted((d for d in by_class["1.2.840.10008.5.1.4.1.1.2"]),
                     key=lambda d: float(d.ImagePositionPatient[2]))
        # The SR: highdicom reads it back; its Agatston value is the JSON result's.
        [result] = reg.records("results")
        assert result["pseudonym"] == pseudonym and result["agatston"] > 0
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        report = hd.sr.srread(io.BytesIO(buffer.getvalue()))
        [group] = report.content.get_image_measurement_groups()
        score = next(m for m in group.get_measurements() if m.name.meaning == CALCIUM_SCORE.meaning)
        assert float(score.value) == pytest.approx(result["agatston"], abs=1e-9)
        [evidence] = sr.CurrentRequestedProcedureEvidenceSequence
        assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == cts[0].SeriesInstanceUID
        # The SEG: its frames over the registry's CT are the scored map the site kept.
        scored = load_scored_calcium(layout.scored_calcium_path(study_key(study.study_uid), 0))
        seg_ds = hd.seg.Segmentation.from_dataset(seg)
        labels = seg_ds.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(c.SOPInstanceUID) for c in cts], combine_segments=True,
            skip_overlap_checks=True)
        weight_of = {int(s.SegmentNumber): int(str(s.SegmentLabel).rsplit(" ", 1)[1]) for s in seg.SegmentSequence}
        lut = np.zeros(max(weight_of) + 1, dtype=np.uint8)
        for number, weight in weight_of.items():
            lut[number] = weight
        expected = np.zeros_like(labels, dtype=np.uint8)
        expected[list(scored.slice_indices)] = scored.weights
        np.testing.assert_array_equal(lut[labels], expected)
        # They travelled in the study's own STOW jobs (grouped by its de-identified study UID), so the
        # study became "pushed" only once they were acknowledged as well.
        import sqlite3

        with sqlite3.connect(layout.state_db) as db:
            grouped = {ref for ref, grp in db.execute(
                "SELECT i.ref, j.grp FROM outbox_items i JOIN outbox_jobs j ON i.job_id = j.id "
                "WHERE j.kind = 'stow' AND i.state = 'done'") if grp == held["study_instance_uid"]}
        assert {str(sr.SOPInstanceUID), str(seg.SOPInstanceUID)} <= grouped
        # The registry's manifest lists them, and nothing identifying reached the registry's disk.
        [manifest] = reg.manifests()
        assert {str(sr.SOPInstanceUID), str(seg.SOPInstanceUID)} <= set(manifest["manifest"]["sop_instance_uids"])
        for path in (tmp_path / "registry").rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not [n for n in needles if n in data], path.name
    finally:
        registry.stop()
