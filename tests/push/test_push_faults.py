"""Faults: registry down then back, 500, 429 + Retry-After, 409, partial STOW-RS failure, 4xx, 401, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from connector.outbox import outbox_counts
from connector.push.worker import PushWorker
from connector.push.stow import MultipartBody
from devregistry import Faults, RegistryServer
from tests.push.conftest import DeidStudy, Site, push_all, queue_site_study
from tests.support.waiting import wait_for
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


class Recorder(Faults):
    """Records every request (time, method, path) and the instances each STOW-RS request carried."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str, str]] = []
        self.stow_batches: list[list[str]] = []

    def before_request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        with self.lock:
            self.requests.append((time.monotonic(), method, path))
            if method == "POST" and path.startswith("/dicomweb/studies"):
                self.stow_batches.append([])
        return self.answer(method, path)

    def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        return None

    def instance_failure(self, sop_instance_uid: str) -> int | None:
        with self.lock:
            self.stow_batches[-1].append(sop_instance_uid)
        return self.fail(sop_instance_uid)

    def fail(self, sop_instance_uid: str) -> int | None:
        return None


def _assert_delivered(registry: RegistryServer, *studies: DeidStudy) -> None:
    for study in studies:
        held = {r["sop_instance_uid"] for r in registry.store.instances_of(study.study_uid)}
        assert held == study.sop_uids
        [manifest] = registry.store.manifests(study.study_uid)
        assert manifest["complete"]
    stats = registry.store.stats()
    total = sum(len(s.files) for s in studies)
    assert stats["instances"] == stats["files"] == stats["instances_stored"] == total  # none stored twice


def _quarantine_records(site: Site) -> list[dict]:
    return [json.loads(p.read_text()) for p in (site.layout.quarantine / "push").glob("*.json")]


def test_registry_down_while_studies_arrive(site: Site) -> None:
    port = free_port()
    config = site.config(f"http://127.0.0.1:{port}")
    first = site.deid_study(ct=4, pet=2)
    queue_site_study(site, first, max_instances=3)
    worker = PushWorker(config, site.store, site.layout)
    worker.start()
    try:
        time.sleep(1.0)
        second = site.deid_study(ct=3, pet=1)  # arrives while the registry is down
        queue_site_study(site, second)
        time.sleep(1.0)
        counts = outbox_counts(site.store)
        assert counts["pushed"] == 0 and counts["outbox_pending"] == 7 and counts["failed"] == 0
        errors = {r[0] for r in site.store.conn.execute("SELECT last_error FROM outbox_jobs WHERE last_error IS NOT NULL")}
        assert errors == {"network:ConnectError"}
        # A refused connection pauses the destination; it does not use up the jobs' attempts.
        assert site.store.conn.execute("SELECT MAX(attempts) FROM outbox_jobs").fetchone()[0] == 0
        registry = RegistryServer(site.root / "registry", token=site.token_file.read_text().strip(), port=port,
                                  fsync=False).start()
        try:
            assert worker.drain(30), outbox_counts(site.store)
            _assert_delivered(registry, first, second)
            assert len(registry.store.subjects()) == 2
        finally:
            registry.stop()
    finally:
        worker.stop()


def test_500_is_retried(site: Site, registry: RegistryServer) -> None:
    class Fail500(Recorder):
        def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
            stows = [r for r in self.requests if r[2] == "/dicomweb/studies"]
            if path == "/dicomweb/studies" and len(stows) <= 2:
                return 500, {}, b'{"error": "database is locked"}'
            return None

    registry.faults = faults = Fail500()
    study = site.deid_study(ct=3, pet=1)
    queue_site_study(site, study)
    push_all(site, site.config(registry.url))
    _assert_delivered(registry, study)
    assert len([r for r in faults.requests if r[2] == "/dicomweb/studies"]) == 3
    row = site.store.conn.execute("SELECT attempts, last_status FROM outbox_jobs WHERE kind='stow'").fetchone()
    assert row == (2, 200)
    assert _quarantine_records(site) == []


def test_429_retry_after_pauses_the_destination(site: Site, registry: RegistryServer) -> None:
    class Slow429(Recorder):
        def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
            if path == "/dicomweb/studies" and not any(r[2] == "/dicomweb/studies" for r in self.requests[:-1]):
                return 429, {"Retry-After": "2"}, b'{"error": "slow down"}'
            return None

    registry.faults = faults = Slow429()
    studies = [site.deid_study(ct=2, pet=0) for _ in range(2)]
    for study in studies:
        queue_site_study(site, study)
    push_all(site, site.config(registry.url, concurrency=1))
    _assert_delivered(registry, *studies)
    first_429 = next(t for t, _m, p in faults.requests if p == "/dicomweb/studies")
    after = [t - first_429 for t, _m, _p in faults.requests if t > first_429]
    assert after and min(after) >= 1.9  # nothing at all was sent until Retry-After had passed (min backoff 0.2 s)


def test_409_with_the_same_content_counts_as_delivered(site: Site, tmp_path: Path) -> None:
    registry = RegistryServer(site.root / "registry", token=site.token_file.read_text().strip(), port=0, fsync=False,
                              on_duplicate="conflict").start()
    try:
        whole, partial = site.deid_study(ct=3, pet=1), site.deid_study(ct=3, pet=1)
        with httpx.Client(base_url=registry.url, headers={
                "Authorization": f"Bearer {site.token_file.read_text().strip()}"}) as client:
            for files in (whole.files, partial.files[:1]):  # the registry already holds these bytes
                body = MultipartBody(files)
                assert client.post("/dicomweb/studies", content=b"".join(body.stream()), headers={
                    "Content-Type": body.content_type, "Idempotency-Key": os.urandom(8).hex()}).status_code == 200
        queue_site_study(site, whole, max_instances=2)  # every batch: 409, nothing new stored
        queue_site_study(site, partial)  # one batch: 202, one instance refused as a duplicate
        push_all(site, site.config(registry.url))
        _assert_delivered(registry, whole, partial)
        stats = registry.store.stats()
        assert stats["conflicts"] == 5 and stats["duplicates"] == 0
        counts = outbox_counts(site.store)
        assert counts["failed"] == 0 and counts["instances_pushed"] == 8
    finally:
        registry.stop()


def test_409_with_different_content_is_quarantined(site: Site, registry: RegistryServer, tmp_path: Path) -> None:
    study = site.deid_study(ct=3, pet=1)
    victim = study.files[0]
    altered = tmp_path / "altered.dcm"
    ds = pydicom.dcmread(victim)
    ds.SeriesDescription = "ALTERED"
    ds.save_as(altered)
    with httpx.Client(base_url=registry.url, headers={
            "Authorization": f"Bearer {site.token_file.read_text().strip()}"}) as client:
        body = MultipartBody([altered])
        client.post("/dicomweb/studies", content=b"".join(body.stream()),
                    headers={"Content-Type": body.content_type, "Idempotency-Key": "seed"})
    queue_site_study(site, study)
    worker = PushWorker(site.config(registry.url), site.store, site.layout)
    worker.start()
    try:
        wait_for(lambda: outbox_counts(site.store)["failed"] == 1)
        wait_for(lambda: outbox_counts(site.store)["blocked"] == 1)  # the manifest waits for an operator
    finally:
        worker.stop()
    counts = outbox_counts(site.store)
    assert (counts["instances_pushed"], counts["instances_failed"], counts["pushed"]) == (3, 1, 1)
    assert victim.exists() and not any(p.exists() for p in study.files[1:])  # the refused copy is kept
    [record] = _quarantine_records(site)
    assert record["reason"] == "stow-refused" and record["details"]["status"] == 202
    data = json.loads((site.layout.quarantine / "push" / f"{record['id']}.bin").read_text())
    assert list(data["refused_items"].values()) == ["conflict-different-content"]
    assert data["response"]["status"] == 202 and "00081198" in data["response"]["body"]
    assert registry.store.manifests() == []
    # An operator decides: retrying does not overwrite what the registry holds.
    assert site.outbox.retry_failed("registry") == 1
    assert outbox_counts(site.store)["failed"] == 0


def test_partial_stow_failure_resends_only_what_failed(site: Site, registry: RegistryServer) -> None:
    study = site.deid_study(ct=5, pet=2)
    flaky = sorted(study.sop_uids)[:2]

    class OutOfResources(Recorder):
        def fail(self, sop_instance_uid: str) -> int | None:
            if sop_instance_uid in flaky and len(self.stow_batches) == 1:
                return 0xA700  # out of resources: transient
            return None

    registry.faults = faults = OutOfResources()
    queue_site_study(site, study)
    push_all(site, site.config(registry.url))
    _assert_delivered(registry, study)
    assert len(faults.stow_batches) == 2
    assert sorted(faults.stow_batches[0]) == sorted(study.sop_uids)
    assert sorted(faults.stow_batches[1]) == flaky  # only the failed instances went again
    assert registry.store.stats()["duplicates"] == 0


def test_permanent_instance_failure_and_4xx_are_quarantined_with_the_response(site: Site,
                                                                             registry: RegistryServer) -> None:
    study = site.deid_study(ct=3, pet=0)
    refused = sorted(study.sop_uids)[0]

    class Refuse(Recorder):
        def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
            if method == "PUT" and path.startswith("/api/v1/subjects/"):
                return 400, {}, b'{"error": "age_at_index_years must be an integer"}'
            return None

        def fail(self, sop_instance_uid: str) -> int | None:
            return 0xC000 if sop_instance_uid == refused else None

    registry.faults = Refuse()
    queue_site_study(site, study)
    worker = PushWorker(site.config(registry.url), site.store, site.layout)
    worker.start()
    try:
        wait_for(lambda: outbox_counts(site.store)["failed"] == 2)
        time.sleep(0.5)
    finally:
        worker.stop()
    counts = outbox_counts(site.store)
    assert (counts["failed"], counts["blocked"], counts["instances_pushed"]) == (2, 1, 2)
    records = {r["details"]["kind"]: r for r in _quarantine_records(site)}
    assert set(records) == {"subject", "stow"}
    subject = json.loads((site.layout.quarantine / "push" / f"{records['subject']['id']}.bin").read_text())
    assert subject["response"]["status"] == 400
    assert subject["response"]["body"] == {"error": "age_at_index_years must be an integer"}
    stow = json.loads((site.layout.quarantine / "push" / f"{records['stow']['id']}.bin").read_text())
    assert list(stow["refused_items"].values()) == ["stow-failure:0xC000"]
    # Neither was retried after being refused.
    assert site.store.conn.execute("SELECT MAX(attempts) FROM outbox_jobs WHERE state='failed'").fetchone()[0] == 1


def test_401_pauses_instead_of_quarantining_and_a_fixed_token_resumes(site: Site, registry: RegistryServer) -> None:
    good = site.token_file.read_text()
    site.token_file.write_text("expired-token\n")
    study = site.deid_study(ct=2, pet=0)
    queue_site_study(site, study)
    worker = PushWorker(site.config(registry.url), site.store, site.layout)
    worker.start()
    try:
        wait_for(lambda: site.store.conn.execute(
            "SELECT COUNT(*) FROM outbox_jobs WHERE last_status=401").fetchone()[0] >= 1)
        counts = outbox_counts(site.store)
        assert counts["failed"] == 0 and counts["pushed"] == 0
        site.token_file.write_text(good)  # the operator rotates the token file; no restart
        assert worker.drain(30)
    finally:
        worker.stop()
    _assert_delivered(registry, study)
    assert _quarantine_records(site) == []


@pytest.mark.slow
def test_kill_9_mid_upload_resumes_without_loss_or_double_storage(site: Site, registry: RegistryServer) -> None:
    study = site.deid_study(ct=30, pet=6, rows=256)
    total = len(study.files)
    queue_site_study(site, study, max_instances=4)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "tests.push.pusher", "--data", str(site.layout.data_dir), "--url", registry.url,
           "--token-file", str(site.token_file)]
    victim = subprocess.Popen([*cmd, "--bandwidth", "1000000"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: registry.store.stats()["instances"] >= total // 3, timeout=60)
        leased = site.store.conn.execute("SELECT COUNT(*) FROM outbox_jobs WHERE state='leased'").fetchone()[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
    at_kill = registry.store.stats()["instances"]
    assert victim.returncode == -signal.SIGKILL
    assert leased >= 1 and 0 < at_kill < total  # killed with uploads in flight
    survivor = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120, check=False)
    assert survivor.returncode == 0, survivor.stderr[-2000:]
    _assert_delivered(registry, study)
    counts = outbox_counts(site.store)
    assert (counts["outbox_pending"], counts["instances_pushed"], counts["failed"]) == (0, total, 0)
    assert not [p for p in registry.store.tmp_dir.iterdir() if p.stat().st_size > 0]  # no partial data left
    assert not any(p.exists() for p in study.files)
