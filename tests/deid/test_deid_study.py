"""The daemon's step: a stable study in, durable de-identified files and reasoned quarantine out."""

from __future__ import annotations

import json
from pathlib import Path

from pydicom import dcmread

from connector.config import load_config
from connector.deid.engine import DeidEngine
from connector.deid.study import deidentify_study
from connector.synthetic import SyntheticStudy, write_pet_ct_study
from tests.deid.factory import StudyUids, base_dataset, encode, leaks


def test_study_to_outgoing_and_quarantine(tmp_path: Path, engine: DeidEngine, provider) -> None:
    study = SyntheticStudy()
    _s, paths = write_pet_ct_study(tmp_path / "in", study, ct_count=3, pet_count=2, ct_rows=32)
    junk = tmp_path / "in" / "junk.dcm"
    junk.write_bytes(b"not dicom")
    sc = base_dataset(modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7")
    sc.StudyInstanceUID = study.study_uid
    burned = tmp_path / "in" / "sc.dcm"
    burned.write_bytes(encode(sc))
    out, quarantine = tmp_path / "outgoing", tmp_path / "quarantine"

    outcome = deidentify_study(paths + [junk, burned], out, quarantine, engine)

    assert len(outcome.written) == 5
    assert {q.reason for q in outcome.quarantined} == {"not-dicom", "burned-in-risk:secondary-capture"}
    assert {q.source for q in outcome.quarantined} == {junk, burned}
    assert len(outcome.study_uids) == 1 and len(outcome.pseudonyms) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{w.sop_instance_uid}.dcm" for w in outcome.written)
    assert not list(out.glob("*.part"))
    for w in outcome.written:
        assert w.path.parent == out and w.sop_instance_uid.startswith("2.25.")
        ds = dcmread(w.path)
        assert ds.SOPInstanceUID == w.sop_instance_uid and ds.StudyInstanceUID == w.study_instance_uid
        assert ds.PatientID == w.pseudonym and w.modality in ("CT", "PT")
        data = w.path.read_bytes()
        for value in (study.patient.family, study.patient.given, study.patient.patient_id, study.accession,
                      study.institution, study.patient.birth_date):
            assert value.encode() not in data
    # Quarantine entries: the original bytes and a machine-readable reason next to them.
    records = [json.loads(p.read_text()) for p in (quarantine / "deid").glob("*.json")]
    assert sorted(r["reason"] for r in records) == ["burned-in-risk:secondary-capture", "not-dicom"]
    for q in outcome.quarantined:
        assert (quarantine / "deid" / f"{q.entry_id}.bin").read_bytes() == q.source.read_bytes()
    # The site's linkage learns which de-identified study came from which original (once).
    assert list(provider.studies) == outcome.study_uids
    assert provider.studies[outcome.study_uids[0]][1:] == (study.study_uid, study.accession)
    assert json.dumps(outcome.summary())  # counts and codes only
    assert leaks(json.dumps(outcome.summary()).encode()) == []


def test_rerun_is_idempotent(tmp_path: Path, engine: DeidEngine) -> None:
    _s, paths = write_pet_ct_study(tmp_path / "in", SyntheticStudy(), ct_count=2, pet_count=1, ct_rows=32)
    first = deidentify_study(paths, tmp_path / "out", tmp_path / "q", engine)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    second = deidentify_study(paths, tmp_path / "out", tmp_path / "q", engine)
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert before == after and len(after) == 3
    assert [w.path for w in first.written] == [w.path for w in second.written]


def test_engine_from_config_uses_configured_rules(tmp_path: Path, provider) -> None:
    site_rules = tmp_path / "site-rules.yaml"
    site_rules.write_text("format: 1\ninclude: [registry-default.yaml]\nrules:\n  - {keyword: StationName, action: keep}\n")
    config_path = tmp_path / "connector.toml"
    config_path.write_text('[site]\nid = "SITE09"\n[deid]\nrules = ["site-rules.yaml"]\n[storage]\nfsync = false\n')
    config = load_config(config_path, environ={})
    engine = DeidEngine.from_config(config, provider)
    assert engine.profile.files[-1].path == site_rules.resolve()
    assert engine.site_id == "SITE09" and engine.fsync is False
    ds = base_dataset()
    result = engine.process_bytes(encode(ds))
    assert result.status == "ok"
    default = DeidEngine.from_config(load_config(None, environ={}), provider)
    assert default.profile.files[-1].name == "registry-default"


def test_a_name_met_only_in_a_later_object_still_stops_earlier_free_text(tmp_path: Path, engine: DeidEngine) -> None:
    """Names are learned as the study's objects go by (no object is read twice); an object whose kept
    description holds a name that only a later object's header reveals is quarantined at the end."""
    uids = StudyUids()
    first = base_dataset(uids=uids, instance=1)
    first.SeriesDescription = "CTAC HEART 3mm"  # HEART is a vocabulary word ... and, as it turns out, a name
    first.OperatorsName = "TECHNICIAN^ANNA"
    second = base_dataset(uids=uids, instance=2)
    second.SeriesDescription = "CTAC HEART 3mm"
    second.PerformingPhysicianName = "HEART^OTTOLINE"
    third = base_dataset(uids=uids, instance=3)
    third.SeriesDescription = "CTAC 3mm"
    files = []
    for i, ds in enumerate((first, second, third)):
        files.append(tmp_path / "in" / f"{i}.dcm")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(encode(ds))
    outcome = deidentify_study(files, tmp_path / "out", tmp_path / "q", engine)
    assert [q.reason for q in outcome.quarantined] == ["phi-guard:name"]
    assert outcome.quarantined[0].source == files[0]
    assert sorted(w.source for w in outcome.written) == files[1:]
    assert dcmread(outcome.written[0].path).SeriesDescription == "CTAC *** 3mm"  # the cleaner knew by then
    assert len(list((tmp_path / "out").iterdir())) == 2  # the first object's output is gone
