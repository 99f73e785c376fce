"""No identifier in clear anywhere the linkage table writes: DB, WAL, SHM, keys, audit log, backups,
log output, CLI output of pseudonym lookups, exception texts.

The site-wide scan after ingest + de-identification is the daemon's test; this is its linkage part.
A positive control (the deliberate export) proves the scanner finds identifiers where they are.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest

from connector.deid.provider import PatientIdentity
from connector.linkage import (
    LinkageError,
    StudyConflictError,
    UnknownPseudonymError,
    WrongKeyError,
    create_key_file,
    open_identity_provider,
)
from tests.linkage.conftest import Site

PATIENT = PatientIdentity(
    patient_id="PXQ20417ZK",
    issuer="EASTWOODISSUER77",
    name="ZEBULONOWSKI^OTTOLINE^MARGUERITE",
    birth_date="19470523",
    sex="F",
)
STUDY_UIDS = ("1.2.826.0.1.3680043.10.1432.20417.7", "1.2.826.0.1.3680043.10.1432.20417.8")
ACCESSIONS = ("ACC99304171", "ACC99304172")


def needles() -> dict[str, list[bytes]]:
    texts = {
        "patient_id": [PATIENT.patient_id, PATIENT.patient_id.lower()],
        "issuer": [PATIENT.issuer],
        "name": [PATIENT.name, PATIENT.name.replace("^", " "), "ZEBULONOWSKI", "OTTOLINE", "MARGUERITE",
                 "Zebulonowski", "zebulonowski"],
        "birth_date": ["19470523", "1947-05-23", "23.05.1947", "05/23/1947", "23/05/1947", "1947/05/23"],
        "study_uid": list(STUDY_UIDS),
        "accession": list(ACCESSIONS),
    }
    return {k: [t.encode(enc) for t in v for enc in ("utf-8", "utf-16-le", "utf-16-be")] for k, v in texts.items()}


def find_identifiers(data: bytes) -> list[str]:
    return sorted({kind for kind, pats in needles().items() for p in pats if p in data})


def scan_folder(root: Path, exclude: tuple[Path, ...] = ()) -> dict[str, list[str]]:
    hits = {}
    files = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(path.is_relative_to(e) for e in exclude):
            continue
        files += 1
        found = find_identifiers(path.read_bytes())
        if found:
            hits[str(path.relative_to(root))] = found
    assert files > 0
    return hits


def test_no_identifier_in_clear_anywhere(site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cli_output: list[str] = []
    errors: list[BaseException] = []
    export_file = tmp_path / "outside-site" / "master.csv"

    provider = open_identity_provider(site.config)
    try:
        first = provider.subject_for(PATIENT, study_date="20240115")
        again = provider.subject_for(PATIENT, study_date="20230301")
        assert first == again
        for uid, acc in zip(STUDY_UIDS, ACCESSIONS, strict=True):
            provider.record_study(first.pseudonym, uid, f"2.25.{abs(hash(uid)) % 10**30}", acc)
        assert provider.lookup_patient(PATIENT.patient_id, PATIENT.issuer).pseudonym == first.pseudonym
        assert provider.lookup_pseudonym(first.pseudonym).name == PATIENT.name  # in memory only

        # coordinator commands (in-process, so their logging is captured too)
        for args in (
            ("lookup", "--patient-id", PATIENT.patient_id, "--issuer", PATIENT.issuer),
            ("lookup", "--patient-id", PATIENT.patient_id, "--issuer", PATIENT.issuer, "--json"),
            ("lookup", "--patient-id", "NOTKNOWN" + PATIENT.patient_id),
            ("check",), ("info",), ("rotate-key",), ("audit", "--verify"), ("audit", "--tail", "50"),
            ("backup", "--out", str(site.data_dir / "backups" / "linkage.bak")),
        ):
            rc, out, err = site.cli(*args)
            assert rc in (0, 1), (args, err)
            cli_output += [out, err]
        rc, _out, _err = site.cli("export", "--out", str(export_file), "--confirm-identifiers")
        assert rc == 0

        # errors that involve the identifiers
        try:
            provider.record_study("TEST01-00000000", STUDY_UIDS[0], "2.25.1", ACCESSIONS[0])
        except UnknownPseudonymError as exc:
            errors.append(exc)
        other = provider.subject_for(PatientIdentity("OTHER-" + PATIENT.patient_id, PATIENT.issuer))
        try:
            provider.record_study(other.pseudonym, STUDY_UIDS[0], "2.25.99", ACCESSIONS[0])
        except StudyConflictError as exc:
            errors.append(exc)
        try:
            provider.subject_for(PatientIdentity("", PATIENT.issuer, PATIENT.name, PATIENT.birth_date))
        except LinkageError as exc:
            errors.append(exc)

        for i in range(50):  # make sure the WAL holds fresh frames while we scan
            provider.subject_for(PatientIdentity(f"FILLER{i}", "X", PATIENT.name, PATIENT.birth_date))
        wal = Path(f"{site.db}-wal")
        assert wal.exists() and wal.stat().st_size > 0
        assert Path(f"{site.db}-shm").exists()
        hits_open = scan_folder(site.root)
    finally:
        provider.close()

    # a wrong key afterwards: its message must not leak either
    site.key_file.rename(site.key_file.with_name("old.key"))
    create_key_file(site.key_file)
    with pytest.raises(WrongKeyError) as wrong:
        open_identity_provider(site.config)
    errors.append(wrong.value)

    hits_closed = scan_folder(site.root)
    assert hits_open == {}, f"identifiers in clear while running: {hits_open}"
    assert hits_closed == {}, f"identifiers in clear after shutdown: {hits_closed}"
    scanned = {p.name for p in site.root.rglob("*") if p.is_file()}
    assert {"linkage.db", "audit.log", "site.key", "linkage.bak", "connector.toml"} <= scanned

    log_text = caplog.text + "\n".join(
        str(r.args) + r.getMessage() + (r.exc_text or "") for r in caplog.records
    )
    assert find_identifiers(log_text.encode()) == []
    assert find_identifiers("\n".join(cli_output).encode()) == []
    assert first.pseudonym in "\n".join(cli_output)
    assert len(errors) == 4
    for exc in errors:
        text = "".join(traceback.format_exception(exc))
        assert find_identifiers(text.encode()) == [], text

    # positive control: the deliberate export, outside the site folder, does hold them
    assert {"patient_id", "name", "birth_date"} <= set(find_identifiers(export_file.read_bytes()))
    assert not export_file.is_relative_to(site.root)
