"""queue_study + PushWorker against the dev registry on 127.0.0.1: the happy path and its settings."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from pathlib import Path

import pydicom
import pytest

from connector.outbox import outbox_counts
from connector.push.worker import PushWorker
from connector.push.queueing import queue_event, queue_result, queue_study
from connector.push.queueing import NotReadyForRegistry, make_batches, read_outgoing
from devregistry import RegistryServer
from tests.push.conftest import DeidStudy, Site, push_all, queue_site_study




def test_a_study_reaches_the_registry_with_subject_and_manifest(site: Site, registry: RegistryServer,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    study = site.deid_study(ct=12, pet=5)
    hashes = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in study.files}
    created = queue_site_study(site, study, max_instances=5)
    assert created == 1 + 4 + 1  # subject, ceil(17 / 5) batches, manifest
    with caplog.at_level(logging.DEBUG):
        push_all(site, site.config(registry.url))

    reg = registry.store
    held = {r["sop_instance_uid"] for r in reg.instances_of(study.study_uid)}
    assert {sop: reg.instance_sha256(sop) for sop in held} == hashes
    assert {r["patient_id"] for r in reg.instances_of(study.study_uid)} == {study.pseudonym}
    stats = reg.stats()
    assert (stats["instances"], stats["stow_requests"], stats["duplicates"]) == (17, 4, 0)
    [subject] = reg.subjects()
    assert subject["pseudonym"] == study.pseudonym and subject["site"] == "TEST01" and subject["sex"] == "F"
    [manifest] = reg.manifests()
    assert manifest["complete"] is True and manifest["manifest"]["instance_count"] == 17
    assert set(manifest["manifest"]["sop_instance_uids"]) == study.sop_uids
    # Acknowledged copies are removed (retention 0), with their study folder.
    assert not any(p.exists() for p in study.files) and not study.files[0].parent.exists()
    counts = outbox_counts(site.store)
    assert (counts["pushed"], counts["outbox_pending"], counts["instances_pushed"]) == (6, 0, 17)
    assert counts["bytes_pushed"] == stats["bytes"]
    # Logs carry counts and job ids, never the pseudonym or UIDs.
    text = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "push_done" in text
    assert study.pseudonym not in text and study.study_uid not in text
    assert not any(uid in text for uid in study.sop_uids)


def test_requeueing_adds_only_what_is_new(site: Site, registry: RegistryServer) -> None:
    study = site.deid_study(ct=4, pet=2)
    assert queue_site_study(site, study) == 3
    assert queue_site_study(site, study) == 0  # same study again (restart, re-run): nothing new
    push_all(site, site.config(registry.url, retention_hours=-1))
    late = site.deid_study(ct=1, pet=0)
    extra = study.files[0].parent / "late.dcm"
    ds = pydicom.dcmread(late.files[0])
    ds.StudyInstanceUID, ds.PatientID, ds.PatientName = study.study_uid, study.pseudonym, study.pseudonym
    ds.save_as(extra)
    grown = DeidStudy(study.study_uid, study.pseudonym, [*study.files, extra], study.original)
    assert queue_site_study(site, grown) == 2  # one batch with the late instance, and a new manifest
    push_all(site, site.config(registry.url, retention_hours=-1))
    stats = registry.store.stats()
    assert (stats["instances"], stats["duplicates"], stats["stow_requests"]) == (7, 0, 2)
    [manifest] = registry.store.manifests()
    assert manifest["posts"] == 2 and manifest["manifest"]["instance_count"] == 7 and manifest["complete"]
    assert all(p.exists() for p in grown.files)  # retention -1 keeps the local copies


def test_batches_respect_instance_and_byte_limits(site: Site) -> None:
    study = site.deid_study(ct=7, pet=0, rows=64)
    instances = [read_outgoing(p, site.layout) for p in study.files]
    assert [len(b) for b in make_batches(instances, 3, 10**9)] == [3, 3, 1]
    cap = 2 * max(i.size for i in instances)
    batches = make_batches(instances, 50, cap)
    assert [i for b in batches for i in b] == instances  # order kept, nothing lost or doubled
    assert all(sum(i.size for i in b) <= cap for b in batches)
    assert all(sum(i.size for i in b) + nxt[0].size > cap for b, nxt in itertools.pairwise(batches))  # greedy
    assert len(batches) >= 4
    assert [len(b) for b in make_batches(instances, 50, 1)] == [1] * 7  # bigger than the cap: alone
    assert all(not Path(i.relpath).is_absolute() for i in instances)


def test_queue_study_refuses_what_must_not_leave(site: Site, tmp_path: Path) -> None:
    study = site.deid_study(ct=2, pet=0)
    with pytest.raises(NotReadyForRegistry):
        queue_study(site.outbox, study_uid="2.25.999", pseudonym=study.pseudonym, subject={}, files=study.files,
                    layout=site.layout)
    identified = tmp_path / "identified.dcm"
    ds = pydicom.dcmread(study.files[0])
    ds.PatientIdentityRemoved = "NO"
    ds.save_as(identified)
    with pytest.raises(NotReadyForRegistry) as err:
        queue_study(site.outbox, study_uid=study.study_uid, pseudonym=study.pseudonym, subject={},
                    files=[study.files[1], identified], layout=site.layout)
    assert study.study_uid not in str(err.value)
    assert outbox_counts(site.store)["outbox_pending"] == 0  # nothing half-queued


def test_gzip_on_the_wire_is_lossless(site: Site, registry: RegistryServer) -> None:
    study = site.deid_study(ct=4, pet=2, rows=128)
    hashes = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in study.files}
    queue_site_study(site, study)
    push_all(site, site.config(registry.url, compression="gzip"))
    assert {r["sop_instance_uid"]: registry.store.instance_sha256(r["sop_instance_uid"])
            for r in registry.store.instances_of(study.study_uid)} == hashes


def test_bandwidth_cap_slows_the_upload(site: Site, registry: RegistryServer) -> None:
    study = site.deid_study(ct=8, pet=0, rows=256)  # ~1 MB
    total = sum(p.stat().st_size for p in study.files)
    queue_site_study(site, study, max_instances=2)
    cap = 400_000
    started = time.monotonic()
    push_all(site, site.config(registry.url, bandwidth_limit=cap, concurrency=3))
    elapsed = time.monotonic() - started
    assert registry.store.stats()["instances"] == 8
    # The bucket starts empty and holds at most one second of allowance across all requests.
    assert elapsed >= total / cap - 1.0, (elapsed, total / cap)
    assert elapsed < 3 * total / cap + 2, (elapsed, total / cap)  # throttled, not stalled


def test_upload_window_holds_jobs_until_it_opens(site: Site, registry: RegistryServer) -> None:
    now = time.localtime()
    start = (now.tm_hour * 60 + now.tm_min + 120) % 1440
    closed = f"{start // 60:02d}:{start % 60:02d}-{(start + 60) // 60 % 24:02d}:{(start + 60) % 60:02d}"
    study = site.deid_study(ct=2, pet=1)
    queue_site_study(site, study)
    worker = PushWorker(site.config(registry.url, upload_window=closed), site.store, site.layout)
    worker.start()
    time.sleep(1.5)
    worker.stop()
    assert registry.store.stats()["stow_requests"] == 0 and registry.store.subjects() == []
    assert outbox_counts(site.store)["outbox_pending"] == 3
    start = (now.tm_hour * 60 + now.tm_min - 1) % 1440
    open_now = f"{start // 60:02d}:{start % 60:02d}-{(start + 180) // 60 % 24:02d}:{(start + 180) % 60:02d}"
    push_all(site, site.config(registry.url, upload_window=open_now))
    assert registry.store.stats()["instances"] == 3


def test_results_and_events(site: Site, registry: RegistryServer) -> None:
    result = {"study_instance_uid": "2.25.1", "series_instance_uid": "2.25.2", "agatston": 101.5,
              "model": {"name": "cacnet", "version": "1.0", "sha256": "ab" * 32}, "timings": {"total": 1.2}}
    assert queue_result(site.outbox, result) is True
    assert queue_result(site.outbox, {**result, "timings": {"total": 9.9}}) is False  # same series and model
    assert queue_result(site.outbox, {**result, "model": {**result["model"], "sha256": "cd" * 32}}) is True
    assert queue_event(site.outbox, {"pseudonym": "TEST01-AAAA", "type": "mi", "days": 400}, "ev-1") is True
    assert queue_event(site.outbox, {"pseudonym": "TEST01-AAAA", "type": "mi", "days": 400}, "ev-1") is False
    with pytest.raises(ValueError):
        queue_event(site.outbox, {}, "")
    push_all(site, site.config(registry.url))
    assert sorted(r["model"]["sha256"][:2] for r in registry.store.records("results")) == ["ab", "cd"]
    [event] = registry.store.records("events")
    assert event["type"] == "mi" and event["days"] == 400
    key = registry.store.query("SELECT idempotency_key FROM events")[0]["idempotency_key"]
    assert key == "ev-1"  # the caller's key is the one the registry sees


def test_status_counts_are_exported(site: Site, registry: RegistryServer) -> None:
    study = site.deid_study(ct=2, pet=0)
    queue_site_study(site, study)
    before = outbox_counts(site.store)
    assert before["outbox_pending"] == 3 and before["pushed"] == 0 and before["instances_pending"] == 2
    push_all(site, site.config(registry.url))
    after = outbox_counts(site.store)
    assert after["outbox_pending"] == 0 and after["pushed"] == 3 and after["failed"] == 0
    assert after["oldest_pending_age_s"] == 0.0
