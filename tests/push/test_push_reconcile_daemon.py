"""Reconciliation end to end (issue 14 item 2): storescu -> daemon -> registry, then ``reconcile``.

The registry loses one instance; the next reconciliation re-sends exactly that one (de-identified
again from the original on the spool, byte for byte what was sent first), and the study is verified
again. Against the dev registry (instances and manifest) and a real Orthanc with DICOMweb (QIDO-RS).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from devregistry import RegistryServer
from connector.synthetic import SyntheticPatient, SyntheticStudy, write_pet_ct_study
from tests.support.waiting import wait_for
from tests.push.test_push_daemon import identifiers, push_settings, storescu, token_file
from tests.support.daemon import ConnectorProcess
from tests.support.orthanc import OrthancServer

pytestmark = pytest.mark.slow


def _status(daemon: ConnectorProcess) -> dict[str, Any]:
    return json.loads(daemon.cli("status", "--json", check=True).stdout)


def _studies_in(daemon: ConnectorProcess, state: str) -> int:
    return int(_status(daemon)["studies"].get(state, 0))


def _reconcile(daemon: ConnectorProcess, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    if env:
        saved = dict(daemon.env)
        daemon.env.update(env)
    try:
        proc = daemon.cli("reconcile", "--json", *args)
    finally:
        if env:
            daemon.env = saved
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _no_identifiers(study: SyntheticStudy, *texts: str) -> None:
    for needle in identifiers(study):
        for text in texts:
            assert needle.decode() not in text


def test_reconcile_against_the_dev_registry_resends_exactly_the_lost_instance(tmp_path: Path) -> None:
    study = SyntheticStudy(patient=SyntheticPatient(family="QUILLFEATHER", given="ROSALIND"))
    _, files = write_pet_ct_study(tmp_path / "pacs", study, ct_count=6, pet_count=3, ct_rows=64)
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    try:
        settings = push_settings(registry.url, token, registry__reconcile_interval_minutes=0)
        with ConnectorProcess(tmp_path / "site", **settings) as daemon:
            storescu(daemon.port, files)
            wait_for(lambda: _studies_in(daemon, "pushed") == 1, timeout=120, interval=0.3)
            first = _reconcile(daemon)
            assert (first["checked"], first["verified"], first["requeued"]) == (1, 1, 0)
            assert first["manifest_checked"] is True and first["studies"] == []  # only mismatches are listed
            status = _status(daemon)
            assert status["studies"].get("verified") == 1 and status["studies"].get("pushed", 0) == 0
            again = _reconcile(daemon)
            assert again["checked"] == 0  # verified studies are left alone unless asked

            # The registry loses one instance (its file and its index row).
            [held] = registry.store.studies()
            rows = registry.store.instances_of(held["study_instance_uid"])
            victim = rows[len(rows) // 2]
            lost_sha = hashlib.sha256(registry.store.instance_file(victim).read_bytes()).hexdigest()
            assert registry.store.delete_instance(victim["sop_instance_uid"])
            before = registry.store.stats()

            report = _reconcile(daemon, "--all")
            assert (report["checked"], report["verified"], report["requeued"]) == (1, 0, 1)
            assert (report["instances_missing"], report["instances_requeued"], report["manifests_requeued"]) == \
                (1, 1, 0)
            [entry] = report["studies"]
            assert entry["outcome"] == "requeued" and entry["missing"] == 1 and entry["series_short"] == 1
            assert entry["study"] in _study_keys(daemon)  # the study key, never a UID
            wait_for(lambda: registry.store.instance(victim["sop_instance_uid"]) is not None, timeout=60)
            wait_for(lambda: _studies_in(daemon, "pushed") == 1, timeout=60, interval=0.3)
            after = registry.store.stats()
            assert after["instances"] == len(files)
            assert after["instances_stored"] - before["instances_stored"] == 1  # exactly that one was sent
            assert after["duplicates"] == before["duplicates"] and after["conflicts"] == before["conflicts"]
            resent = registry.store.instance(victim["sop_instance_uid"])
            assert resent is not None
            assert hashlib.sha256(registry.store.instance_file(resent).read_bytes()).hexdigest() == lost_sha

            final = _reconcile(daemon)
            assert (final["checked"], final["verified"]) == (1, 1)
            assert _studies_in(daemon, "verified") == 1
            wait_for(lambda: not list(daemon.spool.glob("outgoing/*/*.dcm")), timeout=30)  # re-sent copy removed
            _no_identifiers(study, json.dumps(report), daemon.logs())
            metrics = _metrics(daemon)
            assert 'site_connector_studies{state="verified"} 1' in metrics
            assert 'site_connector_last_reconcile_studies{outcome="verified"} 1' in metrics
            assert not re.search(r"^site_connector_last_reconcile_timestamp_seconds 0(\.0)?$", metrics, re.M)
    finally:
        registry.stop()


def test_the_daemon_reconciles_on_its_schedule(tmp_path: Path) -> None:
    study = SyntheticStudy()
    _, files = write_pet_ct_study(tmp_path / "pacs", study, ct_count=4, pet_count=2, ct_rows=64)
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    try:  # every 3 s, and verified studies again 1 s after their verification
        settings = push_settings(registry.url, token, registry__reconcile_interval_minutes=0.05,
                                 registry__reconcile_recheck_days=1 / 86400)
        with ConnectorProcess(tmp_path / "site", **settings) as daemon:
            storescu(daemon.port, files)
            wait_for(lambda: _studies_in(daemon, "verified") == 1, timeout=120, interval=0.3)
            logs = daemon.wait_for_log('"reconcile_done"')
            assert '"reconcile_done"' in logs
            # the registry loses an instance: the daemon finds it out and re-sends it by itself
            [held] = registry.store.studies()
            victim = registry.store.instances_of(held["study_instance_uid"])[0]["sop_instance_uid"]
            before = registry.store.stats()["instances_stored"]
            assert registry.store.delete_instance(victim)
            wait_for(lambda: registry.store.instance(victim) is not None, timeout=60)
            assert registry.store.stats()["instances_stored"] == before + 1
            wait_for(lambda: _studies_in(daemon, "verified") == 1, timeout=60, interval=0.3)
            assert '"reconcile_mismatch"' in daemon.wait_for_log('"reconcile_mismatch"')
            _no_identifiers(study, daemon.logs())
    finally:
        registry.stop()


def test_reconcile_against_orthanc_dicomweb(tmp_path: Path) -> None:
    study = SyntheticStudy()
    _, files = write_pet_ct_study(tmp_path / "pacs", study, ct_count=5, pet_count=3, ct_rows=64)
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    try:
        with OrthancServer(tmp_path / "orthanc", dicomweb=True) as orthanc:
            # images to Orthanc's DICOMweb, the JSON API (subject, manifest) to the dev registry
            settings = push_settings(registry.url, token, registry__dicomweb_url=f"{orthanc.url}/dicom-web",
                                     registry__api_url=registry.url, registry__reconcile_interval_minutes=0)
            qido_only = {"SITE_CONNECTOR__REGISTRY__API_URL": orthanc.url}  # a plain DICOMweb peer: no JSON API
            with ConnectorProcess(tmp_path / "site", **settings) as daemon:
                storescu(daemon.port, files)
                wait_for(lambda: _studies_in(daemon, "pushed") == 1, timeout=120, interval=0.3)
                assert len(orthanc.request("GET", "/instances")) == len(files)
                first = _reconcile(daemon, env=qido_only)
                assert (first["checked"], first["verified"], first["manifest_checked"]) == (1, 1, False)

                [manifest] = registry.store.manifests()
                victim = sorted(manifest["manifest"]["sop_instance_uids"])[2]
                [found] = orthanc.request("POST", "/tools/lookup", victim.encode())
                orthanc.request("DELETE", f"/instances/{found['ID']}")
                assert len(orthanc.request("GET", "/instances")) == len(files) - 1

                report = _reconcile(daemon, "--all", env=qido_only)
                assert (report["requeued"], report["instances_missing"], report["instances_requeued"]) == (1, 1, 1)
                wait_for(lambda: len(orthanc.request("GET", "/instances")) == len(files), timeout=60)
                wait_for(lambda: _studies_in(daemon, "pushed") == 1, timeout=60, interval=0.3)
                assert orthanc.request("POST", "/tools/lookup", victim.encode())  # that very instance is back

                final = _reconcile(daemon)  # with the dev registry's JSON API: instances and manifest
                assert (final["checked"], final["verified"], final["manifest_checked"]) == (1, 1, True)
                assert _studies_in(daemon, "verified") == 1
    finally:
        registry.stop()


def _study_keys(daemon: ConnectorProcess) -> list[str]:
    from connector.site_db import open_state

    store = open_state(daemon.data_dir / "state" / "state.db")
    try:
        return [r[0] for r in store.conn.execute("SELECT study_key FROM studies")]
    finally:
        store.close()


def _metrics(daemon: ConnectorProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=10) as resp:
        return resp.read().decode()
