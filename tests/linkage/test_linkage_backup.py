"""Encrypted backups: consistent while writers run, restorable, tamper- and wrong-key-proof."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from connector.linkage import LinkageStateError, WrongKeyError
from connector.linkage.backup import BackupError, create_backup, restore_backup
from connector.linkage.provider import kek_source_for
from connector.linkage.rotation import rotate_key
from tests.linkage.conftest import Site, fake_patient, make_site


def test_backup_restore_roundtrip_while_writing(site: Site, tmp_path: Path) -> None:
    bak = tmp_path / "backups" / "linkage.bak"
    with site.open() as p:
        for i in range(200):
            p.subject_for(fake_patient(i))
        stop = threading.Event()
        made: list[int] = []

        def writer() -> None:  # the daemon keeps going during the backup
            i = 1000
            while not stop.is_set():
                p.subject_for(fake_patient(i))
                made.append(i)
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            result = create_backup(p, bak)
        finally:
            stop.set()
            t.join()
        expected = {fake_patient(i).patient_id: p.subject_for(fake_patient(i)) for i in range(200)}
    assert result.subjects >= 200 and bak.stat().st_mode & 0o777 == 0o600
    data = bak.read_bytes()
    assert b"SQLite format" not in data and b"SYN0000001" not in data
    # restore onto a machine that lost its data folder (same key file)
    shutil.rmtree(site.data_dir / "linkage")
    restored = restore_backup(bak, site.db, kek_source_for(site.config))
    assert restored.subjects == result.subjects
    with site.open(create=False) as p:
        for i in range(200):
            assert p.subject_for(fake_patient(i)) == expected[fake_patient(i).patient_id]
        assert p.store.check().corrupt == ()
        assert p.store.counts()["subjects"] == result.subjects  # a consistent snapshot, not a torn copy


def test_restore_refuses_to_overwrite_without_force(site: Site, tmp_path: Path) -> None:
    with site.open() as p:
        a = p.subject_for(fake_patient(1))
        create_backup(p, tmp_path / "b.bak")
        with pytest.raises(LinkageStateError):
            create_backup(p, tmp_path / "b.bak")  # no silent overwrite of a backup either
        p.subject_for(fake_patient(2))
    with pytest.raises(LinkageStateError, match="--force"):
        restore_backup(tmp_path / "b.bak", site.db, kek_source_for(site.config))
    restore_backup(tmp_path / "b.bak", site.db, kek_source_for(site.config), force=True)
    with site.open(create=False) as p:
        assert p.store.counts()["subjects"] == 1 and p.subject_for(fake_patient(1)) == a


@pytest.mark.parametrize("where", ["header", "middle", "truncate"])
def test_tampered_backup_is_rejected_before_touching_the_table(site: Site, tmp_path: Path, where: str) -> None:
    with site.open() as p:
        for i in range(30):
            p.subject_for(fake_patient(i))
        create_backup(p, tmp_path / "b.bak")
    data = bytearray((tmp_path / "b.bak").read_bytes())
    if where == "header":
        i = data.index(b'"generation": 1')
        data[i + 14] = ord("2")
    elif where == "middle":
        data[len(data) // 2] ^= 1
    else:
        data = data[: len(data) - 100]
    (tmp_path / "b.bak").write_bytes(bytes(data))
    before = site.db.read_bytes()
    with pytest.raises((BackupError, WrongKeyError)):
        restore_backup(tmp_path / "b.bak", site.db, kek_source_for(site.config), force=True)
    assert site.db.read_bytes() == before


def test_backup_needs_its_key_and_restore_with_a_retired_key_rewraps(site: Site, tmp_path: Path) -> None:
    with site.open() as p:
        a = p.subject_for(fake_patient(1))
        create_backup(p, tmp_path / "old.bak")
    retired = tmp_path / "retired.key"
    shutil.copy2(site.key_file, retired)
    with site.open(create=False) as p:
        rotate_key(p)
    with pytest.raises(WrongKeyError, match="--key-file"):
        restore_backup(tmp_path / "old.bak", site.db, kek_source_for(site.config), force=True)
    other = make_site(tmp_path / "other")  # a different site's key
    with pytest.raises(WrongKeyError):
        restore_backup(tmp_path / "old.bak", site.db, kek_source_for(other.config), key_file=other.key_file, force=True)
    result = restore_backup(tmp_path / "old.bak", site.db, kek_source_for(site.config), key_file=retired, force=True)
    assert result.rewrapped
    with site.open(create=False) as p:  # opens with the *current* key file
        assert p.subject_for(fake_patient(1)) == a


def test_passphrase_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_site(tmp_path / "pp", extra='key_source = "passphrase"\n', key=False)
    monkeypatch.setenv("SITE_CONNECTOR_PASSPHRASE", "a long enough passphrase")
    with site.open() as p:
        a = p.subject_for(fake_patient(3))
        create_backup(p, tmp_path / "pp.bak")
    site.db.unlink()
    monkeypatch.setenv("SITE_CONNECTOR_PASSPHRASE", "the wrong passphrase!!")
    with pytest.raises(WrongKeyError):
        restore_backup(tmp_path / "pp.bak", site.db, kek_source_for(site.config))
    monkeypatch.setenv("SITE_CONNECTOR_PASSPHRASE", "a long enough passphrase")
    restore_backup(tmp_path / "pp.bak", site.db, kek_source_for(site.config))
    with site.open(create=False) as p:
        assert p.subject_for(fake_patient(3)) == a


def test_restored_file_is_a_valid_private_database(site: Site, tmp_path: Path) -> None:
    with site.open() as p:
        p.subject_for(fake_patient(1))
        create_backup(p, tmp_path / "b.bak")
    site.db.unlink()
    restore_backup(tmp_path / "b.bak", site.db, kek_source_for(site.config))
    assert site.db.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(str(site.db))
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert not list(site.db.parent.glob("*.part"))
