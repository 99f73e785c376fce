"""Key file and passphrase handling, wrong keys, loose permissions, rotation (incl. crash recovery)."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import pytest

from connector.linkage import (
    KeyFileError,
    KeyFileExistsError,
    KeyFilePermissionError,
    LinkageStateError,
    PassphraseMissingError,
    WrongKeyError,
    create_key_file,
    open_identity_provider,
)
from connector.linkage.keyring import keyring_values
from connector.linkage.keys import next_key_path, read_key_file, write_next_key_file
from connector.linkage.rotation import rotate_key
from tests.linkage.conftest import Site, fake_patient, make_site

PASS = "correct horse battery staple"


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.exists() else b"<absent>")
    return h.hexdigest()


def test_create_key_file_modes_and_no_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "keys" / "site.key"
    create_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    before = path.read_bytes()
    with pytest.raises(KeyFileExistsError):
        create_key_file(path)
    with pytest.raises(FileExistsError):  # also catchable as the builtin
        create_key_file(path)
    assert path.read_bytes() == before and len(read_key_file(path)) == 32


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_daemon_refuses_loose_key_file(site: Site, mode: int) -> None:
    os.chmod(site.key_file, mode)
    with pytest.raises(KeyFilePermissionError) as exc:
        open_identity_provider(site.config)
    assert str(site.key_file) in str(exc.value) and "chmod 600" in str(exc.value)
    assert not site.db.exists()  # nothing created


def test_daemon_refuses_key_folder_writable_by_others(site: Site) -> None:
    os.chmod(site.key_file.parent, 0o777)
    with pytest.raises(KeyFilePermissionError):
        open_identity_provider(site.config)


def test_missing_or_damaged_key_file(site: Site) -> None:
    site.key_file.unlink()
    with pytest.raises(KeyFileError, match="not found"):
        open_identity_provider(site.config)
    site.key_file.write_text("not a key\n")
    os.chmod(site.key_file, 0o600)
    with pytest.raises(KeyFileError, match="not a site-connector"):
        open_identity_provider(site.config)


def test_wrong_key_file_clear_error_changes_nothing(site: Site) -> None:
    with open_identity_provider(site.config) as p:
        s = p.subject_for(fake_patient(1))
    snapshot = _digest(site.db, site.audit_log)
    site.key_file.unlink()
    create_key_file(site.key_file)  # someone "re-initialised" the key
    with pytest.raises(WrongKeyError) as exc:
        open_identity_provider(site.config)
    assert "does not unlock" in str(exc.value) and "nothing was changed" in str(exc.value)
    assert _digest(site.db, site.audit_log) == snapshot
    assert not Path(f"{site.db}-wal").exists() or Path(f"{site.db}-wal").stat().st_size == 0
    assert s.pseudonym not in str(exc.value)


def test_passphrase_locked_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_site(tmp_path / "pp", extra='key_source = "passphrase"\npassphrase_env = "TEST_LINKAGE_PASS"\n', key=False)
    monkeypatch.delenv("TEST_LINKAGE_PASS", raising=False)
    with pytest.raises(PassphraseMissingError, match="TEST_LINKAGE_PASS"):
        open_identity_provider(site.config)
    assert not site.db.exists()
    monkeypatch.setenv("TEST_LINKAGE_PASS", "short")
    with pytest.raises(Exception, match="at least 12"):
        open_identity_provider(site.config)
    monkeypatch.setenv("TEST_LINKAGE_PASS", PASS)
    with open_identity_provider(site.config) as p:
        s = p.subject_for(fake_patient(1))
        assert p.keyring().kek_kind == "passphrase"
    snapshot = _digest(site.db)
    monkeypatch.setenv("TEST_LINKAGE_PASS", PASS + "!")
    with pytest.raises(WrongKeyError, match="passphrase does not unlock"):
        open_identity_provider(site.config)
    assert _digest(site.db) == snapshot
    monkeypatch.delenv("TEST_LINKAGE_PASS")
    with open_identity_provider(site.config, passphrase=PASS) as p:  # explicit passphrase
        assert p.subject_for(fake_patient(1)) == s


def test_missing_table_with_existing_audit_log_is_not_silently_recreated(site: Site) -> None:
    open_identity_provider(site.config).close()
    site.db.unlink()
    with pytest.raises(LinkageStateError, match="restore"):
        open_identity_provider(site.config)
    assert not site.db.exists()
    with pytest.raises(LinkageStateError, match="no linkage table"):
        site.open(create=False)


def _populate(p: object, n: int = 20) -> dict[str, tuple[str, int]]:
    out = {}
    for i in range(n):
        patient = fake_patient(i)
        s = p.subject_for(patient, study_date="20240115")  # type: ignore[attr-defined]
        p.record_study(s.pseudonym, f"1.2.826.0.1.3680043.10.7.{i}", f"2.25.{1000 + i}", f"ACC{i:05d}")  # type: ignore[attr-defined]
        out[patient.patient_id] = (s.pseudonym, s.date_offset_days)
    return out


def test_rotate_file_key_keeps_every_row(site: Site) -> None:
    with open_identity_provider(site.config) as p:
        before = _populate(p)
        secret = p.uid_secret()
        old_keys = p.store.keys
        old_kek = read_key_file(site.key_file)
        result = rotate_key(p, scrypt_log_n=14)
        assert result.subjects == 20 and result.studies == 20 and result.generation == 2
        assert p.store.keys.data_key != old_keys.data_key and p.store.keys.index_key != old_keys.index_key
    assert read_key_file(site.key_file) != old_kek
    assert site.key_file.stat().st_mode & 0o777 == 0o600
    assert not next_key_path(site.key_file).exists()
    with open_identity_provider(site.config) as p:
        assert p.uid_secret() == secret
        for i in range(20):
            patient = fake_patient(i)
            assert (lambda s: (s.pseudonym, s.date_offset_days))(p.subject_for(patient)) == before[patient.patient_id]
            ident = p.lookup_pseudonym(before[patient.patient_id][0])
            assert ident.studies[0].accession_number == f"ACC{i:05d}"
        assert p.store.check().corrupt == ()
        assert p.verify_audit().ok


def test_rotate_between_file_and_passphrase(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_identity_provider(site.config) as p:
        before = _populate(p, 5)
        rotate_key(p, to_kind="passphrase", new_passphrase=PASS, scrypt_log_n=14)
    assert not site.key_file.exists()  # retired key destroyed
    monkeypatch.delenv("SITE_CONNECTOR_PASSPHRASE", raising=False)
    with pytest.raises(PassphraseMissingError):
        open_identity_provider(site.config)
    monkeypatch.setenv("SITE_CONNECTOR_PASSPHRASE", PASS)
    with open_identity_provider(site.config) as p:
        assert p.keyring().kek_kind == "passphrase"
        assert p.subject_for(fake_patient(0)).pseudonym == before[fake_patient(0).patient_id][0]
        with pytest.raises(Exception, match="at least 12"):
            rotate_key(p, to_kind="passphrase", new_passphrase="short")
        rotate_key(p, to_kind="file")
    monkeypatch.delenv("SITE_CONNECTOR_PASSPHRASE")
    with open_identity_provider(site.config) as p:
        assert p.keyring().kek_kind == "file" and p.keyring().generation == 3
        assert p.subject_for(fake_patient(4)).pseudonym == before[fake_patient(4).patient_id][0]


def test_crash_after_commit_before_key_rename_recovers(site: Site) -> None:
    """Simulate dying between the database commit and the rename of site.key.next."""
    with open_identity_provider(site.config) as p:
        before = _populate(p, 3)
        new_kek = secrets.token_bytes(32)
        write_next_key_file(site.key_file, new_kek)
        p.store.rotate(lambda keys: keyring_values(keys, new_kek, "file", None))
        # (crash here: no promote)
    assert next_key_path(site.key_file).exists()
    with open_identity_provider(site.config) as p:
        assert p.subject_for(fake_patient(2)).pseudonym == before[fake_patient(2).patient_id][0]
    assert read_key_file(site.key_file) == new_kek and not next_key_path(site.key_file).exists()


def test_crash_before_commit_leaves_old_key_working(site: Site) -> None:
    with open_identity_provider(site.config) as p:
        before = _populate(p, 2)
    write_next_key_file(site.key_file, secrets.token_bytes(32))  # rotation died before its commit
    with open_identity_provider(site.config) as p:
        assert p.subject_for(fake_patient(1)).pseudonym == before[fake_patient(1).patient_id][0]
        rotate_key(p)  # a later rotation replaces the stale .next
    with open_identity_provider(site.config) as p:
        assert p.subject_for(fake_patient(0)).pseudonym == before[fake_patient(0).patient_id][0]


def test_running_daemon_follows_a_rotation_by_another_process(site: Site) -> None:
    daemon = open_identity_provider(site.config)
    try:
        before = _populate(daemon, 3)
        with site.open(create=False, role="cli") as cli:
            rotate_key(cli)
        # the daemon's keys are stale; it must notice and reload rather than write with the old key
        assert daemon.subject_for(fake_patient(1)).pseudonym == before[fake_patient(1).patient_id][0]
        new = daemon.subject_for(fake_patient(99))
        assert daemon.store.keys.generation == 2
    finally:
        daemon.close()
    with site.open(create=False) as p:
        assert p.lookup_pseudonym(new.pseudonym).patient_id == fake_patient(99).patient_id
        assert p.store.check().corrupt == ()
