"""``site-connector linkage ...`` end to end (in-process): output, exit codes, confirmations."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connector.linkage import open_identity_provider
from tests.linkage.conftest import Site, fake_patient


@pytest.fixture
def populated(site: Site) -> tuple[Site, list[str]]:
    with open_identity_provider(site.config) as p:
        pseudonyms = []
        for i in range(3):
            s = p.subject_for(fake_patient(i), study_date=f"2024011{i}")
            p.record_study(s.pseudonym, f"1.2.826.0.1.3680043.10.3.{i}", f"2.25.{300 + i}", f"ACC{i:04d}")
            pseudonyms.append(s.pseudonym)
    return site, pseudonyms


def test_lookup_by_patient_id(populated: tuple[Site, list[str]]) -> None:
    site, pseudonyms = populated
    patient = fake_patient(1)
    rc, out, _ = site.cli("lookup", "--patient-id", patient.patient_id, "--issuer", patient.issuer)
    assert rc == 0 and out.strip() == pseudonyms[1]
    rc, out, _ = site.cli("lookup", "--patient-id", patient.patient_id.lower(), "--issuer", patient.issuer, "--json")
    data = json.loads(out)
    assert rc == 0 and data["pseudonym"] == pseudonyms[1] and data["index_date"] == "20240111"
    assert -3650 <= data["date_offset_days"] <= -1
    rc, out, _ = site.cli("lookup", "--patient-id", "-", "--issuer", patient.issuer, stdin=patient.patient_id + "\n")
    assert rc == 0 and out.strip() == pseudonyms[1]
    rc, out, err = site.cli("lookup", "--patient-id", patient.patient_id)  # wrong (missing) issuer
    assert rc == 1 and out == "" and patient.patient_id not in err


def test_lookup_by_pseudonym(populated: tuple[Site, list[str]]) -> None:
    site, pseudonyms = populated
    rc, out, _ = site.cli("lookup", "--pseudonym", pseudonyms[2], "--json")
    data = json.loads(out)
    assert rc == 0
    assert (data["patient_id"], data["name"], data["birth_date"]) == (
        fake_patient(2).patient_id, fake_patient(2).name, "19470312")
    assert data["studies"][0]["accession_number"] == "ACC0002"
    rc, out, _ = site.cli("lookup", "--pseudonym", pseudonyms[0])
    assert rc == 0 and f"patient_id: {fake_patient(0).patient_id}" in out
    rc, _, err = site.cli("lookup", "--pseudonym", "TEST01-00000000")
    assert rc == 1 and "no subject" in err
    rc, _, _ = site.cli("lookup")  # one of the two is required
    assert rc == 2


def test_export_needs_confirmation_and_stays_out_of_the_data_folder(populated: tuple[Site, list[str]], tmp_path: Path) -> None:
    site, pseudonyms = populated
    out_file = tmp_path / "coordinator" / "master.csv"
    rc, _, err = site.cli("export", "--out", str(out_file))
    assert rc == 2 and "--confirm-identifiers" in err and not out_file.exists()
    rc, _, err = site.cli("export", "--out", str(site.data_dir / "master.csv"), "--confirm-identifiers")
    assert rc == 1 and "outside" in err and not (site.data_dir / "master.csv").exists()
    rc, out, _ = site.cli("export", "--out", str(out_file), "--confirm-identifiers", "--json")
    assert rc == 0 and json.loads(out)["rows"] == 3
    assert out_file.stat().st_mode & 0o777 == 0o600
    rows = list(csv.DictReader(out_file.open()))
    assert [r["pseudonym"] for r in rows] == pseudonyms
    assert rows[0]["patient_id"] == fake_patient(0).patient_id and rows[0]["index_date"] == "20240110"
    assert list(rows[0]) == ["pseudonym", "patient_id", "issuer", "name", "birth_date", "sex", "index_date"]
    rc, _, err = site.cli("export", "--out", str(out_file), "--confirm-identifiers")
    assert rc == 1 and "exists" in err


def test_rotate_check_info_backup_restore(populated: tuple[Site, list[str]], tmp_path: Path) -> None:
    site, pseudonyms = populated
    rc, out, _ = site.cli("rotate-key", "--json")
    assert rc == 0 and json.loads(out)["generation"] == 2 and json.loads(out)["subjects"] == 3
    rc, out, _ = site.cli("check")
    assert rc == 0 and "0 damaged" in out
    rc, out, _ = site.cli("info", "--json")
    info = json.loads(out)
    assert rc == 0 and info["subjects"] == 3 and info["studies"] == 3 and info["kek_kind"] == "file"
    bak = tmp_path / "b.bak"
    rc, out, _ = site.cli("backup", "--out", str(bak))
    assert rc == 0 and bak.exists()
    site.db.unlink()
    rc, _, err = site.cli("info")
    assert rc == 1 and "no linkage table" in err
    rc, out, _ = site.cli("restore", "--from", str(bak), "--json")
    assert rc == 0 and json.loads(out)["subjects"] == 3
    rc, out, _ = site.cli("lookup", "--patient-id", fake_patient(0).patient_id, "--issuer", fake_patient(0).issuer)
    assert out.strip() == pseudonyms[0]
    rc, out, _ = site.cli("audit", "--verify")
    assert rc == 0


def test_key_problems_exit_2_and_change_nothing(populated: tuple[Site, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    site, _ = populated
    os.chmod(site.key_file, 0o644)
    before = site.db.read_bytes()
    rc, _, err = site.cli("rotate-key")
    assert rc == 2 and "chmod 600" in err
    os.chmod(site.key_file, 0o600)
    rc, out, err = site.cli("rotate-key", "--to", "passphrase")  # no terminal, no --new-passphrase-env
    assert rc == 2 and "--new-passphrase-env" in err
    monkeypatch.setenv("NEW_LINKAGE_PASS", "a brand new passphrase")
    rc, _, _ = site.cli("rotate-key", "--to", "passphrase", "--new-passphrase-env", "NEW_LINKAGE_PASS")
    assert rc == 0 and site.db.read_bytes() != before
    monkeypatch.setenv("SITE_CONNECTOR_PASSPHRASE", "not the passphrase")
    snapshot = site.db.read_bytes()
    rc, _, err = site.cli("rotate-key", "--to", "file")
    assert rc == 2 and "passphrase does not unlock" in err and site.db.read_bytes() == snapshot
    monkeypatch.setenv("SITE_CONNECTOR_PASSPHRASE", "a brand new passphrase")
    rc, out, _ = site.cli("info", "--json")
    assert rc == 0 and json.loads(out)["kek_kind"] == "passphrase"


def test_console_entry_point_help() -> None:
    result = subprocess.run([sys.executable, "-m", "connector", "linkage", "rotate-key", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0 and "--to" in result.stdout
