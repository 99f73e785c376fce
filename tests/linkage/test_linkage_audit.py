"""The audit log: what is recorded, and that edits, deletions, reordering and truncation are caught."""

from __future__ import annotations

import json
from pathlib import Path

from connector.linkage.export import export_master_list
from connector.linkage.rotation import rotate_key
from tests.linkage.conftest import Site, fake_patient


def _populate_log(site: Site, tmp_path: Path) -> str:
    with site.open() as p:
        s = p.subject_for(fake_patient(1))
        p.lookup_patient(fake_patient(1).patient_id, fake_patient(1).issuer)
        p.lookup_pseudonym(s.pseudonym)
        export_master_list(p, tmp_path / "export.csv")
        rotate_key(p)
        p.lookup_patient("SYN-NOBODY")
    return s.pseudonym


def test_reads_and_key_operations_are_recorded_without_identifiers(site: Site, tmp_path: Path) -> None:
    pseudonym = _populate_log(site, tmp_path)
    entries = [json.loads(line) for line in site.audit_log.read_text().splitlines()]
    actions = [e["action"] for e in entries]
    assert actions == ["keyring.create", "keyring.unlock", "lookup.patient_id", "lookup.pseudonym", "export",
                       "key.rotate", "lookup.patient_id"]
    for e in entries:
        assert e["user"] and isinstance(e["uid"], int) and e["time"].endswith("+00:00")
    assert entries[2]["details"]["pseudonym"] == pseudonym and entries[2]["details"]["found"] is True
    assert entries[6]["details"]["found"] is False
    assert entries[4]["details"]["rows"] == 1
    text = site.audit_log.read_text()
    assert fake_patient(1).patient_id not in text and "SYN-NOBODY" not in text and "SYNTHFAMILY" not in text
    assert site.audit_log.stat().st_mode & 0o777 == 0o600
    with site.open(create=False) as p:
        report = p.verify_audit()
    assert report.ok and report.entries == 8  # + this open's unlock


def _lines(site: Site) -> list[str]:
    return site.audit_log.read_text().splitlines()


def _write(site: Site, lines: list[str]) -> None:
    site.audit_log.write_text("".join(line + "\n" for line in lines))


def test_edited_entry_is_named(site: Site, tmp_path: Path) -> None:
    pseudonym = _populate_log(site, tmp_path)
    lines = _lines(site)
    assert pseudonym in lines[3]
    lines[3] = lines[3].replace(pseudonym, "TEST01-00000000")  # hide which subject was looked up
    _write(site, lines)
    with site.open(create=False) as p:
        report = p.verify_audit()
    assert not report.ok and report.first_bad_seq == 4 and report.first_bad_line == 4
    assert "modified" in report.reason


def test_edited_action_or_user_is_named(site: Site, tmp_path: Path) -> None:
    _populate_log(site, tmp_path)
    lines = _lines(site)
    entry = json.loads(lines[4])
    entry["user"] = "somebody-else"
    lines[4] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    _write(site, lines)
    with site.open(create=False) as p:
        report = p.verify_audit()
    assert not report.ok and report.first_bad_seq == 5


def test_deleted_and_reordered_entries_are_caught(site: Site, tmp_path: Path) -> None:
    _populate_log(site, tmp_path)
    original = _lines(site)
    _write(site, original[:2] + original[3:])
    with site.open(create=False) as p:
        assert p.verify_audit().first_bad_seq == 3
    swapped = original[:]
    swapped[4], swapped[5] = swapped[5], swapped[4]
    _write(site, swapped)
    with site.open(create=False) as p:
        assert p.verify_audit().first_bad_seq == 5


def test_truncated_tail_is_caught_by_the_database_anchor(site: Site, tmp_path: Path) -> None:
    _populate_log(site, tmp_path)
    _write(site, _lines(site)[:-2])
    from connector.linkage.audit import AuditLog

    with site.open(create=False, role="cli") as p:
        # opening appended an entry; re-truncate so the tail is missing relative to the anchor
        _write(site, _lines(site)[:5])
        report = AuditLog(site.audit_log, p.store.keys.audit_key, anchor_get=p.store.audit_anchor).verify()
    assert not report.ok and "missing" in report.reason


def test_forged_chain_without_the_key_fails(site: Site, tmp_path: Path) -> None:
    """Recomputing prev-hashes after an edit is not enough: each entry is MACed with the audit key."""
    import hashlib

    _populate_log(site, tmp_path)
    entries = [json.loads(line) for line in _lines(site)]
    entries[2]["details"]["pseudonym"] = "TEST01-00000000"
    prev = "0" * 64
    out = []
    for e in entries:
        e["prev"] = prev
        line = json.dumps(e, sort_keys=True, separators=(",", ":"))
        prev = hashlib.sha256(line.encode()).hexdigest()
        out.append(line)
    _write(site, out)
    with site.open(create=False) as p:
        report = p.verify_audit()
    assert not report.ok and report.first_bad_seq == 3


def test_cli_verify_exit_codes(site: Site, tmp_path: Path) -> None:
    _populate_log(site, tmp_path)
    rc, out, _err = site.cli("audit", "--verify")
    assert rc == 0 and "OK" in out
    rc, out, _ = site.cli("audit", "--tail", "3", "--json")
    assert rc == 0 and len(json.loads(out)) == 3
    lines = _lines(site)
    lines[1] = lines[1].replace('"generation":1', '"generation":7')
    _write(site, lines)
    rc, _out, err = site.cli("audit", "--verify")
    assert rc == 1 and "entry 2" in err
    rc, out, _ = site.cli("audit", "--verify", "--json")
    assert rc == 1 and json.loads(out)["first_bad_seq"] == 2
