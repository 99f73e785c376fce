"""A damaged or swapped value is detected, reported by row, and nothing else is lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from connector.linkage import CorruptRowError
from connector.linkage.export import export_master_list
from connector.linkage.rotation import rotate_key
from tests.linkage.conftest import Site, fake_patient


def _raw(site: Site) -> sqlite3.Connection:
    return sqlite3.connect(str(site.db), isolation_level=None)


def _flip_byte(site: Site, column: str, pseudonym: str) -> None:
    conn = _raw(site)
    blob = bytearray(conn.execute(f"SELECT {column} FROM subjects WHERE pseudonym = ?", [pseudonym]).fetchone()[0])
    blob[-5] ^= 0x40
    conn.execute(f"UPDATE subjects SET {column} = ? WHERE pseudonym = ?", [bytes(blob), pseudonym])
    conn.close()


def test_flipped_byte_reported_other_rows_intact(site: Site, tmp_path: Path) -> None:
    with site.open() as p:
        subjects = [p.subject_for(fake_patient(i)) for i in range(5)]
    victim = subjects[2].pseudonym
    _flip_byte(site, "name", victim)
    with site.open(create=False) as p:
        with pytest.raises(CorruptRowError) as exc:
            p.lookup_pseudonym(victim)
        assert exc.value.row_ref == victim and exc.value.column == "name"
        for i, s in enumerate(subjects):
            if s.pseudonym != victim:
                assert p.lookup_pseudonym(s.pseudonym).patient_id == fake_patient(i).patient_id
                assert p.subject_for(fake_patient(i)) == s
        # the damaged name does not stop the pipeline from using the subject's offset
        assert p.subject_for(fake_patient(2)) == subjects[2]
        report = p.store.check()
        assert [(e.table, e.column, e.row_ref) for e in report.corrupt] == [("subjects", "name", victim)]
        result = export_master_list(p, tmp_path / "out" / "master.csv")
        assert result.rows == 4 and [e.row_ref for e in result.corrupt] == [victim]
        assert victim not in (tmp_path / "out" / "master.csv").read_text()


def test_swapped_values_between_rows_fail(site: Site) -> None:
    with site.open() as p:
        a, b = p.subject_for(fake_patient(1)), p.subject_for(fake_patient(2))
    conn = _raw(site)
    offsets = {r[0]: r[1] for r in conn.execute("SELECT pseudonym, date_offset FROM subjects")}
    conn.execute("UPDATE subjects SET date_offset = ? WHERE pseudonym = ?", [offsets[b.pseudonym], a.pseudonym])
    conn.close()
    with site.open(create=False) as p:
        with pytest.raises(CorruptRowError) as exc:
            p.subject_for(fake_patient(1))  # must not silently hand patient 1 patient 2's offset
        assert exc.value.row_ref == a.pseudonym and exc.value.column == "date_offset"
        assert p.subject_for(fake_patient(2)) == b


def test_swapped_blind_index_is_detected(site: Site) -> None:
    """Pointing patient 1's index at patient 2's row would mis-link; the AD binding refuses it."""
    with site.open() as p:
        a, b = p.subject_for(fake_patient(1)), p.subject_for(fake_patient(2))
    conn = _raw(site)
    idx = {r[0]: r[1] for r in conn.execute("SELECT pseudonym, blind_index FROM subjects")}
    conn.execute("UPDATE subjects SET blind_index = ? WHERE pseudonym = ?", [b"\0" * 32, a.pseudonym])
    conn.execute("UPDATE subjects SET blind_index = ? WHERE pseudonym = ?", [idx[a.pseudonym], b.pseudonym])
    conn.execute("UPDATE subjects SET blind_index = ? WHERE pseudonym = ?", [idx[b.pseudonym], a.pseudonym])
    conn.close()
    with site.open(create=False) as p:
        with pytest.raises(CorruptRowError):
            p.subject_for(fake_patient(1))
        assert len(p.store.check().corrupt) >= 2


def test_rotation_refuses_with_a_corrupt_row_and_changes_nothing(site: Site) -> None:
    with site.open() as p:
        s = [p.subject_for(fake_patient(i)) for i in range(3)]
    _flip_byte(site, "birth_date", s[0].pseudonym)
    key_before = site.key_file.read_bytes()
    with site.open(create=False) as p:
        with pytest.raises(Exception, match="nothing was changed"):
            rotate_key(p)
        assert p.keyring().generation == 1
        assert p.subject_for(fake_patient(1)) == s[1]
    assert site.key_file.read_bytes() == key_before
    assert not site.key_file.with_name("site.key.next").exists()


def test_corrupt_study_row(site: Site) -> None:
    with site.open() as p:
        s = p.subject_for(fake_patient(1))
        p.record_study(s.pseudonym, "1.2.826.0.1.3680043.10.5.1", "2.25.5", "ACC5")
    conn = _raw(site)
    conn.execute("UPDATE studies SET accession_number = zeroblob(64)")
    conn.close()
    with site.open(create=False) as p:
        with pytest.raises(CorruptRowError) as exc:
            p.lookup_pseudonym(s.pseudonym)
        assert exc.value.table == "studies" and exc.value.row_ref == "2.25.5"
        assert [e.row_ref for e in p.store.check().corrupt] == ["2.25.5"]
