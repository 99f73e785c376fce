"""Same patient -> same subject (across studies, restarts, threads, processes); studies; lookups."""

from __future__ import annotations

import multiprocessing
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from connector.deid.provider import IdentityProvider, PatientIdentity
from connector.linkage import (
    LinkageProvider,
    MissingIdentifierError,
    StudyConflictError,
    UnknownPseudonymError,
    open_identity_provider,
)
from connector.linkage import crypto as linkage_crypto
from tests.linkage.conftest import Site, fake_patient, make_site


def test_provider_satisfies_the_protocol(provider: LinkageProvider) -> None:
    as_protocol: IdentityProvider = provider  # type-checked; and at run time:
    assert len(as_protocol.uid_secret()) == 32
    assert re.fullmatch(r"TEST01-[0-9A-HJKMNP-TV-Z]{8}", as_protocol.subject_for(fake_patient()).pseudonym)


def test_same_patient_same_subject_across_studies_and_restart(site: Site) -> None:
    patient = fake_patient(1)
    with open_identity_provider(site.config) as first:
        s1 = first.subject_for(patient, study_date="20240115")
        s2 = first.subject_for(patient, study_date="20240601")
        secret = first.uid_secret()
    with open_identity_provider(site.config) as again:  # a daemon restart
        s3 = again.subject_for(
            PatientIdentity(" syn0000001 ", "synth-hospital", "OTHER^SPELLING", "", ""), study_date="20250101"
        )
        assert again.uid_secret() == secret
        other = again.subject_for(fake_patient(2))
        same_id_other_issuer = again.subject_for(PatientIdentity(patient.patient_id, "OTHER-ISSUER"))
    assert s1 == s2 == s3
    assert -3650 <= s1.date_offset_days <= -1
    assert other.pseudonym != s1.pseudonym
    assert same_id_other_issuer.pseudonym not in (s1.pseudonym, other.pseudonym)


def test_index_date_is_the_earliest_study(provider: LinkageProvider) -> None:
    patient = fake_patient(3)
    provider.subject_for(patient, study_date="20240601")
    assert provider.lookup_patient(patient.patient_id, patient.issuer, audit=False).index_date == "20240601"
    provider.subject_for(patient, study_date="20250101")  # later: unchanged
    provider.subject_for(patient, study_date="garbage")  # invalid: ignored
    assert provider.lookup_patient(patient.patient_id, patient.issuer, audit=False).index_date == "20240601"
    provider.subject_for(patient, study_date="20230210")  # an older study arrives later: it is the index
    found = provider.lookup_patient(patient.patient_id, patient.issuer, audit=False)
    assert found.index_date == "20230210"
    no_date = fake_patient(4)
    provider.subject_for(no_date)
    provider.subject_for(no_date, study_date="20240101")
    assert provider.lookup_patient(no_date.patient_id, no_date.issuer, audit=False).index_date == "20240101"


def test_missing_patient_id_is_refused(provider: LinkageProvider) -> None:
    with pytest.raises(MissingIdentifierError):
        provider.subject_for(PatientIdentity("   ", "SYNTH-HOSPITAL", "SYNTH^NOID"))
    assert provider.store.counts()["subjects"] == 0


def test_eight_threads_same_new_patient_one_subject(site: Site) -> None:
    provider = open_identity_provider(site.config)
    patient = fake_patient(5)
    barrier = threading.Barrier(8)

    def work(_i: int) -> tuple[str, int]:
        barrier.wait()
        s = provider.subject_for(patient, study_date="20240115")
        return s.pseudonym, s.date_offset_days

    try:
        with ThreadPoolExecutor(8) as pool:
            results = set(pool.map(work, range(8)))
        assert len(results) == 1
        assert provider.store.counts()["subjects"] == 1
    finally:
        provider.close()


def _process_worker(config_path: str, patient_id: str, start: object, ready: object, out: object) -> None:
    from connector.config import load_config
    from connector.deid.provider import PatientIdentity
    from connector.linkage import open_identity_provider

    config = load_config(Path(config_path), environ={})
    start.wait()  # type: ignore[attr-defined]
    with open_identity_provider(config) as p:
        ready.wait()  # type: ignore[attr-defined]
        s = p.subject_for(PatientIdentity(patient_id, "SYNTH-HOSPITAL"), study_date="20240115")
        out.put((s.pseudonym, s.date_offset_days))  # type: ignore[attr-defined]


def test_concurrent_processes_first_start_and_same_new_patient(site: Site) -> None:
    """Four worker processes start at once on a fresh site: one table, one keyring, one subject."""
    ctx = multiprocessing.get_context("spawn")
    start, ready, out = ctx.Barrier(4), ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(str(site.config_path), "SYN7777777", start, ready, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = {out.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(results) == 1
    with site.open(create=False) as p:
        assert p.store.counts()["subjects"] == 1
        assert p.verify_audit().ok
    assert site.audit_log.read_text().count('"keyring.create"') == 1


def test_record_study_idempotent_and_conflicts(provider: LinkageProvider) -> None:
    a = provider.subject_for(fake_patient(10))
    b = provider.subject_for(fake_patient(11))
    provider.record_study(a.pseudonym, "1.2.826.0.1.3680043.10.99.1", "2.25.111", "ACC0001")
    provider.record_study(a.pseudonym, "1.2.826.0.1.3680043.10.99.1", "2.25.111", "ACC0001")  # reprocessed
    assert provider.store.counts()["studies"] == 1
    with pytest.raises(StudyConflictError):  # same study, now under another patient ID
        provider.record_study(b.pseudonym, "1.2.826.0.1.3680043.10.99.1", "2.25.111", "ACC0001")
    with pytest.raises(UnknownPseudonymError):
        provider.record_study("TEST01-ZZZZZZZZ", "1.2.3", "2.25.222")
    ident = provider.lookup_pseudonym(a.pseudonym)
    assert [(s.deidentified_study_uid, s.original_study_uid, s.accession_number) for s in ident.studies] == [
        ("2.25.111", "1.2.826.0.1.3680043.10.99.1", "ACC0001")
    ]
    assert provider.store.find_study("1.2.826.0.1.3680043.10.99.1") == (a.pseudonym, "2.25.111")
    assert provider.store.find_study("1.2.3.4") is None


def test_lookup_by_pseudonym_returns_identifiers(provider: LinkageProvider) -> None:
    patient = fake_patient(12)
    s = provider.subject_for(patient, study_date="20240115")
    ident = provider.lookup_pseudonym(s.pseudonym.lower())  # typed in lower case
    assert (ident.patient_id, ident.issuer, ident.name, ident.birth_date, ident.sex) == (
        patient.patient_id, patient.issuer, patient.name, patient.birth_date, patient.sex)
    assert ident.index_date == "20240115" and ident.date_offset_days == s.date_offset_days
    assert provider.lookup_pseudonym("TEST01-00000000") is None
    assert provider.lookup_pseudonym("not a pseudonym") is None
    assert provider.lookup_patient("SYN-UNKNOWN", "SYNTH-HOSPITAL") is None


def test_lookup_is_o1_no_decrypting_scan(provider: LinkageProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(300):
        provider.subject_for(fake_patient(1000 + i))
    target = fake_patient(1150)
    calls = {"n": 0}
    original = linkage_crypto.FieldCipher.decrypt

    def counting(self: linkage_crypto.FieldCipher, blob: bytes, ad: bytes) -> str:
        calls["n"] += 1
        return original(self, blob, ad)

    monkeypatch.setattr(linkage_crypto.FieldCipher, "decrypt", counting)
    found = provider.lookup_patient(target.patient_id, target.issuer, audit=False)
    assert found is not None
    assert calls["n"] == 2  # the date offset and index date of the one matching row, nothing else
    plan = " ".join(
        str(r) for r in provider.store.db().execute("EXPLAIN QUERY PLAN " + provider.store._LINKED_SQL, [b"x"]).fetchall()
    )
    assert "USING INDEX" in plan and "SCAN" not in plan


def test_pseudonym_prefix_from_config(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", extra='pseudonym_prefix = "REG7"\npseudonym_length = 10\nmax_date_offset_days = 5\n')
    with site.open() as p:
        s = p.subject_for(fake_patient())
    assert re.fullmatch(r"REG7-[0-9A-HJKMNP-TV-Z]{10}", s.pseudonym)
    assert -5 <= s.date_offset_days <= -1
