"""Through the daemon: storescu -> site-connector run -> dev registry, including an outage and a kill -9."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from connector.outbox import outbox_counts
from devregistry import RegistryServer
from connector.site_db import open_state
from connector.synthetic import SyntheticPatient, SyntheticStudy, write_pet_ct_study
from tests.support.waiting import wait_for
from tests.support.daemon import ConnectorProcess
from tests.support.net import free_port
from tests.support.tools import dcmtk

pytestmark = pytest.mark.slow


def identifiers(study: SyntheticStudy) -> list[bytes]:
    p = study.patient
    return [v.encode() for v in (p.patient_id, p.family, p.given, p.birth_date, study.accession, study.institution,
                                 study.study_uid)]


def storescu(port: int, files: list[Path]) -> None:
    subprocess.run([dcmtk("storescu"), "-aec", "SITECONN", "127.0.0.1", str(port), *map(str, files)],
                   check=True, capture_output=True, timeout=120)


def token_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "registry.token"
    path.write_text(os.urandom(16).hex() + "\n")
    os.chmod(path, 0o600)
    return path


def push_settings(registry_url: str, token: Path, **extra: object) -> dict[str, object]:
    return {"registry__url": registry_url, "registry__token_file": str(token), "registry__poll_seconds": 0.2,
            "registry__backoff_min_seconds": 0.2, "registry__backoff_max_seconds": 2, "cac__enabled": False,
            **extra}


def registry_has(registry: RegistryServer, instances: int) -> bool:
    stats = registry.store.stats()
    return stats["instances"] == instances and stats["manifests"] == 1 and stats["subjects"] == 1


def test_a_study_travels_from_c_store_to_the_dev_registry(tmp_path: Path) -> None:
    study = SyntheticStudy(patient=SyntheticPatient(family="QUIXOTEZ", given="WILHELMINA"))
    _, files = write_pet_ct_study(tmp_path / "pacs", study, ct_count=8, pet_count=4, ct_rows=64)
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    try:
        with ConnectorProcess(tmp_path / "site", **push_settings(registry.url, token)) as daemon:
            storescu(daemon.port, files)
            wait_for(lambda: registry_has(registry, len(files)), timeout=120)
            status = json.loads(daemon.cli("status", "--json", check=True).stdout)
            wait_for(lambda: not list(daemon.spool.glob("outgoing/*/*.dcm")), timeout=30)  # removed once acked
            # the study's lifecycle ends when every job it produced is acknowledged (issue 14)
            wait_for(lambda: json.loads(daemon.cli("status", "--json", check=True).stdout)["studies"]
                     .get("pushed") == 1, timeout=30)
            final = json.loads(daemon.cli("status", "--json", check=True).stdout)
            assert final["studies"].get("queued", 0) == 0
        reg = registry.store
        [held] = reg.studies()
        pseudonym = held["patient_id"]
        assert pseudonym.startswith("TEST01-") and held["study_instance_uid"] != study.study_uid
        assert held["instance_count"] == len(files) and sorted(held["modalities"].split(",")) == ["CT", "PT"]
        needles = identifiers(study)
        for row in reg.instances_of(held["study_instance_uid"]):
            path = reg.instance_file(row)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.PatientIdentityRemoved == "YES" and ds.PatientID == pseudonym == str(ds.PatientName)
            data = path.read_bytes()
            assert not [n for n in needles if n in data]
        [subject] = reg.subjects()
        assert subject["pseudonym"] == pseudonym and subject["site"] == "TEST01" and subject["sex"] == "F"
        [manifest] = reg.manifests()
        assert manifest["complete"] and manifest["manifest"]["pseudonym"] == pseudonym
        assert set(manifest["manifest"]["sop_instance_uids"]) == {
            r["sop_instance_uid"] for r in reg.instances_of(held["study_instance_uid"])}
        assert status["pushed"] >= 3 and status["failed"] == 0
        assert reg.stats()["instances_stored"] == len(files) and reg.stats()["rejected_identity"] == 0
    finally:
        registry.stop()


def test_outage_then_kill_9_mid_upload(tmp_path: Path) -> None:
    study = SyntheticStudy()
    _, files = write_pet_ct_study(tmp_path / "pacs", study, ct_count=24, pet_count=6, ct_rows=256)
    total_bytes = sum(p.stat().st_size for p in files)
    token = token_file(tmp_path / "secrets")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    site = tmp_path / "site"
    slow = push_settings(url, token, registry__bandwidth_limit=total_bytes // 8, registry__batch_max_instances=4)
    daemon = ConnectorProcess(site, **slow).start()
    registry = None
    try:
        # The registry is down while the study arrives: everything is received and queued, nothing lost.
        storescu(daemon.port, files)
        state_db = site / "data" / "state" / "state.db"
        wait_for(lambda: state_db.exists() and _counts(state_db)["instances_pending"] == len(files), timeout=120)
        time.sleep(1.0)
        assert _counts(state_db)["pushed"] == 0 and _counts(state_db)["failed"] == 0
        # It comes back; the daemon is killed (whole process group, -9) while batches are uploading.
        registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=port).start()
        wait_for(lambda: registry.store.stats()["instances"] >= 4, timeout=60)
        daemon.kill()
        held_at_kill = registry.store.stats()["instances"]
        assert 0 < held_at_kill < len(files)
        # Restarted (no cap): it resumes, and every instance ends up stored exactly once.
        daemon = ConnectorProcess(site, **push_settings(url, token)).start()
        wait_for(lambda: registry_has(registry, len(files)), timeout=120)
        wait_for(lambda: _counts(state_db)["outbox_pending"] == 0, timeout=30)
        stats = registry.store.stats()
        assert stats["instances"] == stats["files"] == stats["instances_stored"] == len(files)
        assert registry.store.manifests()[0]["complete"]
        counts = _counts(state_db)
        assert counts["instances_pushed"] == len(files) and counts["failed"] == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
        if registry is not None:
            registry.stop()


def _counts(state_db: Path) -> dict:
    store = open_state(state_db)
    try:
        return outbox_counts(store)
    finally:
        store.close()
