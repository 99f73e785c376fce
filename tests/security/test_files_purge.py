"""Purging a quarantine entry removes every copy of its object, so nothing brings it back (issue 24, row 9).

Before, purge deleted only the entry: de-identification quarantines a copy of the original, which
stayed in ``spool/incoming`` with its instances row, and releasing another entry of the same study
(which processes the study again) quarantined the purged object anew. Now the spool original, its
row, identical copies under ``results/<study>/`` (and a CT's scored-calcium maps) go too, recorded
in a log line with counts only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import httpx
import pydicom
import pytest

from connector.ingest.intake import Intake
from devregistry import RegistryServer
from connector.store.layout import SiteLayout
from connector.store.quarantine import PurgeReport, purge_entry, quarantine
from connector.store.state import StateStore, instance_key, study_key
from connector.site_db import open_state
from connector.synthetic import SyntheticStudy, ct_slices, write_pet_ct_study, write_series
from connector.web.users import UserFile
from tests.faults.support import study_states
from tests.support.waiting import wait_for
from tests.push.test_push_daemon import push_settings, storescu, token_file
from tests.security.purge_support import secondary_capture
from tests.support.daemon import ConnectorProcess
from tests.web.conftest import PASSWORD, USER, csrf_of, make_config


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digests_under(root: Path) -> dict[str, list[str]]:
    """SHA-256 -> files with those bytes, for every file under ``root``."""
    out: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            out.setdefault(_sha(path.read_bytes()), []).append(str(path.relative_to(root)))
    return out


def _deid_entries(data_dir: Path) -> dict[str, str]:
    """entry id -> SOP Instance UID of its object, for complete de-identification quarantine entries."""
    return {meta.stem: str(pydicom.dcmread(meta.with_suffix(".bin"), stop_before_pixels=True).SOPInstanceUID)
            for meta in (data_dir / "quarantine" / "deid").glob("*.json") if meta.with_suffix(".bin").exists()}


def _action(c: httpx.Client, action: str, **form: str) -> None:
    r = c.post(action, data={"csrf": csrf_of(c.get("/quarantine").text), **form})
    assert r.status_code == 303, r.status_code


@pytest.mark.slow
def test_a_purged_object_leaves_no_copy_and_a_release_does_not_bring_it_back(tmp_path: Path) -> None:
    study = SyntheticStudy()
    _, files = write_pet_ct_study(tmp_path / "pacs", study, ct_count=2, pet_count=1, ct_rows=64)
    purged = secondary_capture(study, tmp_path / "pacs" / "sc-purged.dcm", 1)
    kept = secondary_capture(study, tmp_path / "pacs" / "sc-kept.dcm", 2)
    purged_uid, kept_uid = (str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in (purged, kept))
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    try:
        with ConnectorProcess(tmp_path / "site", **push_settings(registry.url, token,
                                                                 registry__reconcile_interval_minutes=0)) as daemon:
            data = daemon.data_dir
            UserFile(data / "web" / "users.json").add(USER, PASSWORD)
            storescu(daemon.port, [*files, purged, kept])
            wait_for(lambda: len(_deid_entries(data)) == 2, timeout=90, what="both secondary captures quarantined")
            # a release only sends a study round again once it is out of the pipeline's hands
            wait_for(lambda: study_states(daemon).get("pushed") == 1, timeout=90, what="the study pushed")
            entries = _deid_entries(data)
            [purged_id] = [i for i, uid in entries.items() if uid == purged_uid]
            [kept_id] = [i for i, uid in entries.items() if uid == kept_uid]
            # de-identification quarantined a copy: the original is on the spool too
            purged_sha = _sha((data / "quarantine" / "deid" / f"{purged_id}.bin").read_bytes())
            assert len(_digests_under(data).get(purged_sha, [])) == 2

            c = httpx.Client(base_url=f"http://127.0.0.1:{daemon.http_port}", timeout=30)
            r = c.post("/login", data={"csrf": csrf_of(c.get("/login").text), "username": USER, "password": PASSWORD})
            assert r.status_code == 303
            _action(c, "/quarantine/purge", id=purged_id, confirm="yes")
            assert purged_sha not in _digests_under(data), _digests_under(data).get(purged_sha)
            db = sqlite3.connect(f"file:{data / 'state' / 'state.db'}?mode=ro", uri=True)
            try:
                assert db.execute("SELECT COUNT(*) FROM instances WHERE sop_instance_uid=?", (purged_uid,)
                                  ).fetchone()[0] == 0
            finally:
                db.close()

            # releasing the other entry sends the study round again: the kept SC is quarantined anew, the purged one not
            _action(c, "/quarantine/release", id=kept_id)
            wait_for(lambda: [i for i, uid in _deid_entries(data).items() if uid == kept_uid and i != kept_id],
                     timeout=90, what="the study processed again after the release")
            assert purged_uid not in _deid_entries(data).values(), "the purged object came back"
            assert purged_sha not in _digests_under(data)
            removed = json.loads(next(line for line in daemon.logs().splitlines()
                                      if '"quarantine_object_removed"' in line))
    finally:
        registry.stop()
    assert removed["entry"] == purged_id and removed["study"] == study_key(study.study_uid)
    assert (removed["entry_files"], removed["spool_originals"], removed["instance_rows"]) == (2, 1, 1)
    for needle in (purged_uid, study.study_uid, study.patient.patient_id, study.patient.family):
        assert needle not in json.dumps(removed)


@pytest.fixture
def site(tmp_path: Path) -> tuple[SiteLayout, StateStore, Intake]:
    config = make_config(tmp_path)
    layout = SiteLayout.from_config(config)
    layout.ensure()
    store = open_state(layout.state_db)
    return layout, store, Intake(layout, store, min_free_bytes=0, fsync=False)


def _ingest(site: tuple[SiteLayout, StateStore, Intake], path: Path) -> tuple[str, Path]:
    layout, _, intake = site
    intake.ingest_external(path)
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return uid, layout.spool / layout.incoming_relpath(instance_key(uid))


def _rows(store: StateStore, uid: str) -> int:
    return int(store.conn.execute("SELECT COUNT(*) FROM instances WHERE sop_instance_uid=?", (uid,)).fetchone()[0])


def test_purge_removes_result_copies_and_a_ct_s_maps(site: tuple[SiteLayout, StateStore, Intake],
                                                      tmp_path: Path) -> None:
    layout, store, _ = site
    study = SyntheticStudy()
    key = study_key(study.study_uid)
    sc_uid, sc_original = _ingest(site, secondary_capture(study, tmp_path / "in" / "sc.dcm"))
    [ct_file] = write_series(ct_slices(study, 1, rows=32, cols=32), tmp_path / "in")
    ct_uid, ct_original = _ingest(site, ct_file)
    results = layout.results / key
    results.mkdir(parents=True)
    (results / "cac-0-sr.dcm").write_bytes(sc_original.read_bytes())  # an identical copy (as a CAC SR is parked)
    (results / "cac-1-sr.dcm").write_bytes(b"another object")
    (results / "cac-0.npz").write_bytes(b"map")

    entry = quarantine(layout.quarantine, "deid", "burned-in-risk:secondary-capture", source_path=sc_original)
    assert purge_entry(entry.data_path, entry.meta_path) == PurgeReport(2, 1, 1, 1, key)
    assert not sc_original.exists() and _rows(store, sc_uid) == 0
    assert sorted(p.name for p in results.iterdir()) == ["cac-0.npz", "cac-1-sr.dcm"]  # not a CT: maps stay

    entry = quarantine(layout.quarantine, "deid", "phi-guard:name", source_path=ct_original)
    assert purge_entry(entry.data_path, entry.meta_path) == PurgeReport(2, 1, 1, 1, key)
    assert not ct_original.exists() and _rows(store, ct_uid) == 0
    assert sorted(p.name for p in results.iterdir()) == ["cac-1-sr.dcm"]  # the map may hold its pixels
    assert store.conn.execute("SELECT instance_count FROM studies WHERE study_key=?", (key,)).fetchone()[0] == 0


def test_purge_leaves_another_version_and_non_dicom_entries_alone(site: tuple[SiteLayout, StateStore, Intake],
                                                                   tmp_path: Path) -> None:
    layout, store, _ = site
    study = SyntheticStudy()
    old = secondary_capture(study, tmp_path / "in" / "sc.dcm")
    old_bytes = old.read_bytes()
    ds = pydicom.dcmread(old)
    ds.ContentDate = "20240116"  # a corrected re-send: same SOP Instance UID, other bytes
    ds.save_as(old, enforce_file_format=True)
    uid, original = _ingest(site, old)
    entry = quarantine(layout.quarantine, "deid", "burned-in-risk:secondary-capture", data=old_bytes)
    assert purge_entry(entry.data_path, entry.meta_path) == PurgeReport(2, 0, 0, 0, study_key(study.study_uid))
    assert original.exists() and _rows(store, uid) == 1

    record = quarantine(layout.quarantine, "push", "http-422", data=b'{"job": 7, "response": {"status": 422}}')
    assert purge_entry(record.data_path, record.meta_path) == PurgeReport(2, 0, 0, 0, "")
    assert original.exists() and _rows(store, uid) == 1
