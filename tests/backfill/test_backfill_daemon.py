"""Backfill through the running daemon, with a real Orthanc as the PACS: C-MOVE to our receiver and on
to the dev registry de-identified; the window; kill -9 halfway through a backfill of 20 studies."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from devregistry import RegistryServer
from tests.backfill.conftest import (
    PacsStudy,
    load,
    make_study,
    pacs_settings,
    register_connector,
)
from tests.support.daemon import ConnectorProcess
from tests.support.dicomfiles import dataset_bytes, stored_by_sop
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow



def backfill_rows(data_dir: Path) -> list[tuple[str, str, int]]:
    """(study_key, state, requests) of every worklist row, read straight from the state DB."""
    db = data_dir / "state" / "state.db"
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        try:
            return list(conn.execute("SELECT study_key, state, requests FROM backfill_studies ORDER BY position"))
        except sqlite3.OperationalError:
            return []


def status(daemon: ConnectorProcess) -> dict[str, Any]:
    out = daemon.cli("backfill", "status", "--json", check=True)
    return json.loads(out.stdout)


def identifiers(s: PacsStudy) -> list[bytes]:
    p = s.study.patient
    return [v.encode() for v in (p.patient_id, p.family, p.given, s.study.accession, s.study.study_uid)]


def test_date_range_and_modality_by_c_move_reach_the_registry_deidentified(tmp_path: Path, orthanc,
                                                                           catalogue) -> None:
    load(orthanc, list(catalogue.values()))
    token = tmp_path / "registry.token"
    token.write_text(os.urandom(16).hex() + "\n")
    os.chmod(token, 0o600)
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0, fsync=False).start()
    push = {"registry__url": registry.url, "registry__token_file": str(token), "registry__poll_seconds": 0.2,
            "registry__backoff_min_seconds": 0.2, "registry__backoff_max_seconds": 2, "cac__enabled": False}
    daemon = ConnectorProcess(tmp_path / "site", **pacs_settings(orthanc, backfill__window=""), **push)
    register_connector(orthanc, daemon.port)
    wanted = [catalogue["petct1"], catalogue["petct3"]]
    try:
        with daemon:
            out = daemon.cli("backfill", "add", "--from", "2024-03-01", "--to", "2024-03-03", "--modality", "PT",
                             "--json")
            assert out.returncode == 0, out.stderr
            added = json.loads(out.stdout)
            assert (added["studies_found"], added["job"], added["queued"], added["instances"]) == (2, 1, 2, 4)
            wait_for(lambda: status(daemon)["jobs"][0]["state"] == "done", timeout=60)
            [job] = status(daemon)["jobs"]
            assert (job["found"], job["retrieved"], job["failed"], job["already_present"]) == (2, 2, 0, 0)
            stored = stored_by_sop(daemon.spool)
            originals = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for s in wanted for f in s.files}
            assert set(stored) == set(originals)  # exactly the matching studies' instances
            for uid, path in originals.items():
                assert dataset_bytes(stored[uid]) == dataset_bytes(path)
            wait_for(lambda: registry.store.stats()["instances"] == 4 and registry.store.stats()["manifests"] == 2,
                     timeout=120)
            # the same query again: both are here already, nothing is queued
            again = json.loads(daemon.cli("backfill", "add", "--from", "2024-03-01", "--to", "2024-03-03",
                                          "--modality", "PT", "--json", check=True).stdout)
            assert (again["studies_found"], again["queued"], again["already_present"]) == (2, 0, 2)
            text = daemon.cli("backfill", "status", check=True).stdout
            assert "job 1 (manual, done)" in text and "retrieved 2" in text
            logs = daemon.logs()
        held = registry.store.studies()
        assert len(held) == 2 and all(h["study_instance_uid"] not in {s.study.study_uid for s in wanted} for h in held)
        for h in held:
            for row in registry.store.instances_of(h["study_instance_uid"]):
                data = Path(registry.store.instance_file(row)).read_bytes()
                assert not [n for s in wanted for n in identifiers(s) if n in data]
        assert not [n for s in wanted for n in identifiers(s) if n.decode() in logs]
    finally:
        registry.stop()


def _window_not_now() -> str:
    now = dt.datetime.now()
    start, end = now + dt.timedelta(hours=2), now + dt.timedelta(hours=3)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_outside_the_window_nothing_is_retrieved_and_run_ignores_it(tmp_path: Path, orthanc, catalogue) -> None:
    studies = [catalogue["ct2"], catalogue["mr2"]]
    load(orthanc, studies)
    daemon = ConnectorProcess(tmp_path / "site", **pacs_settings(orthanc, backfill__window=_window_not_now()))
    register_connector(orthanc, daemon.port)
    with daemon:
        added = json.loads(daemon.cli("backfill", "add", "--from", "2024-03-02", "--to", "2024-03-02", "--json",
                                      check=True).stdout)
        assert added["queued"] == 2
        time.sleep(3)  # ten ticks of the daemon's backfill poll
        [job] = status(daemon)["jobs"]
        assert job["retrieved"] == 0 and job["queued"] == 2 and job["requests"] == 0
        assert stored_by_sop(daemon.spool) == {}
        out = daemon.cli("backfill", "run", "1")  # progress bar on stderr, summary on stdout
        assert out.returncode == 0, out.stderr
        assert "retrieved 2 studies (2 instances" in out.stdout and "inst" in out.stderr
        [job] = status(daemon)["jobs"]
        assert (job["retrieved"], job["state"]) == (2, "done")
        assert len(stored_by_sop(daemon.spool)) == 2


def test_kill_9_halfway_then_every_study_once(tmp_path: Path, orthanc) -> None:
    n = 20
    studies = [make_study(tmp_path / "pacs", f"s{i:02d}", f"202404{i + 1:02d}", ("CT",), "CT CALCIUM SCORE")
               for i in range(n)]
    load(orthanc, studies)
    site = tmp_path / "site"
    settings = pacs_settings(orthanc, backfill__window="", backfill__max_concurrent=1,
                             backfill__instances_per_minute=240, assemble__stable_seconds=3600)
    daemon = ConnectorProcess(site, **settings)
    register_connector(orthanc, daemon.port)
    daemon.start()
    try:
        added = json.loads(daemon.cli("backfill", "add", "--from", "2024-04-01", "--to", "2024-04-30", "--json",
                                      check=True).stdout)
        assert added["studies_found"] == n and added["queued"] == n
        wait_for(lambda: sum(r[1] == "retrieved" for r in backfill_rows(daemon.data_dir)) >= 6, timeout=60,
                 interval=0.05)
        daemon.kill()
        at_kill = backfill_rows(daemon.data_dir)
        done_before = {k for k, state, _ in at_kill if state == "retrieved"}
        assert 6 <= len(done_before) < n, "the backfill must be killed halfway"
        daemon = ConnectorProcess(site, **settings).start()
        wait_for(lambda: all(r[1] == "retrieved" for r in backfill_rows(daemon.data_dir)), timeout=90)
        rows = backfill_rows(daemon.data_dir)
        assert len(rows) == n
        # no study asked for again once retrieved; at most the one in flight at the kill was asked twice
        assert all(req == 1 for k, _, req in rows if k in done_before)
        assert sum(req for _, _, req in rows) <= n + 1
        with sqlite3.connect(f"file:{daemon.data_dir / 'state' / 'state.db'}?mode=ro", uri=True) as conn:
            per_study = dict(conn.execute("SELECT study_key, COUNT(*) FROM instances GROUP BY study_key"))
            replaced = conn.execute("SELECT COUNT(*) FROM instance_events").fetchone()[0]
        assert set(per_study) == {k for k, _, _ in rows} and set(per_study.values()) == {1}  # none missing
        assert replaced == 0
        stored = stored_by_sop(daemon.spool)
        assert len(stored) == n
        for s in studies:
            [f] = s.files
            assert dataset_bytes(stored[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID]) == dataset_bytes(f)
        assert status(daemon)["jobs"][0]["state"] == "done"
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
