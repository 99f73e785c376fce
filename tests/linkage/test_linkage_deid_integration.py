"""The linkage table as the de-identification engine's identity provider, on a synthetic study.

Same patient across two studies and a restart -> same pseudonym and offset; the site folder
(outside the incoming spool and quarantine, which hold originals by design) has no identifier in
clear afterwards, and the linkage remembers which de-identified study came from which original.
"""

from __future__ import annotations

import pydicom

from connector.deid.engine import DeidEngine
from connector.deid.study import deidentify_study
from connector.linkage import open_identity_provider
from connector.synthetic import SyntheticPatient, SyntheticStudy, write_pet_ct_study
from tests.linkage.conftest import Site
from tests.linkage.test_linkage_privacy import find_identifiers, scan_folder

PATIENT = SyntheticPatient(patient_id="PXQ20417ZK", family="ZEBULONOWSKI", given="OTTOLINE",
                           birth_date="19470523", sex="F", issuer="EASTWOODISSUER77")


def _run(site: Site, study: SyntheticStudy, name: str) -> tuple[list[pydicom.Dataset], object]:
    incoming = site.data_dir / "spool" / "incoming" / name
    _study, paths = write_pet_ct_study(incoming, study, ct_count=2, pet_count=2, ct_rows=32)
    with open_identity_provider(site.config) as provider:
        engine = DeidEngine.from_config(site.config, provider)
        outcome = deidentify_study(paths, site.data_dir / "spool" / "outgoing" / name, site.data_dir / "quarantine", engine)
        assert not outcome.quarantined, outcome.summary()
        out = [pydicom.dcmread(w.path) for w in outcome.written]
        links = provider.lookup_pseudonym(out[0].PatientID)
    return out, links


def test_deid_with_linkage_then_site_scan(site: Site) -> None:
    first = SyntheticStudy(patient=PATIENT, accession="ACC99304171", study_date="20240115")
    second = SyntheticStudy(patient=PATIENT, accession="ACC99304172", study_date="20250302")
    out1, _ = _run(site, first, "a")
    out2, links = _run(site, second, "b")  # a second study, after a restart (new provider)
    pseudonyms = {str(ds.PatientID) for ds in out1 + out2}
    assert len(pseudonyms) == 1 and pseudonyms.pop().startswith("TEST01-")
    assert str(out1[0].PatientName) == str(out1[0].PatientID)
    # the same whole-day offset for both studies: the interval between them is preserved
    from datetime import date

    def d(s: str) -> date:
        return date(int(s[:4]), int(s[4:6]), int(s[6:]))

    assert (d(out2[0].StudyDate) - d(out1[0].StudyDate)) == (d("20250302") - d("20240115"))
    assert out1[0].StudyDate != "20240115"
    originals = {s.original_study_uid: s for s in links.studies}
    assert set(originals) == {first.study_uid, second.study_uid}
    assert originals[first.study_uid].deidentified_study_uid == str(out1[0].StudyInstanceUID)
    assert originals[second.study_uid].accession_number == "ACC99304172"
    assert links.index_date == "20240115"

    data = site.data_dir
    hits = scan_folder(site.root, exclude=(data / "spool" / "incoming", data / "quarantine"))
    assert hits == {}, hits
    # positive control: the originals in the incoming spool do contain them
    original = next((data / "spool" / "incoming").rglob("*.dcm")).read_bytes()
    assert {"patient_id", "name", "birth_date"} <= set(find_identifiers(original))
    assert any((data / "spool" / "outgoing").rglob("*.dcm"))
