"""STOW-RS end to end: a real Orthanc (DICOMweb plugin) sends to the real daemon, which de-identifies
and pushes to the real dev registry.

Orthanc is configured with the connector as a DICOMweb server (bearer token in its HttpHeaders)
and sends with its own ``POST /dicom-web/servers/<name>/stow`` call, as a site's Orthanc would.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import pydicom
import pytest

from connector.synthetic import SyntheticStudy, write_pet_ct_study
from tests.faults.support import RegistryProcess, push_settings, storescu, token_file
from tests.support.daemon import ConnectorProcess
from tests.support.net import free_port, wait_port
from tests.support.orthanc import OrthancServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

STOW_TOKEN = "stow-" + "c" * 40


def stow_token_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stow.tokens"
    path.write_text("# senders\n" + STOW_TOKEN + "\n")
    os.chmod(path, 0o600)
    return path


def stow_daemon(folder: Path, registry: RegistryProcess, registry_token: Path, port: int, **extra: Any
                ) -> ConnectorProcess:
    settings = push_settings(registry.url, registry_token, stow__enabled=True, stow__host="127.0.0.1",
                             stow__port=port, stow__token_file=str(stow_token_file(folder / "etc")),
                             cac__enabled=False, **extra)
    return ConnectorProcess(folder / "site", **settings)


def orthanc_with_connector(workdir: Path, stow_port: int, token: str = STOW_TOKEN) -> OrthancServer:
    return OrthancServer(workdir, dicomweb=True, extra_config={"DicomWeb": {
        "Enable": True, "Root": "/dicom-web/",
        "Servers": {"connector": {"Url": f"http://127.0.0.1:{stow_port}/dicomweb/",
                                  "HttpHeaders": {"Authorization": f"Bearer {token}"}}}}})


def upload_study(orthanc: OrthancServer, files: list[Path]) -> str:
    """Put the study into Orthanc; returns Orthanc's study id."""
    ids = {orthanc.upload(f)["ParentStudy"] for f in files}
    assert len(ids) == 1
    return ids.pop()


def stow_from_orthanc(orthanc: OrthancServer, study_id: str, timeout: float = 300) -> Any:
    return orthanc.request("POST", "/dicom-web/servers/connector/stow", {"Resources": [study_id]}, timeout=timeout)


def instances_by_source(daemon: ConnectorProcess) -> dict[str, int]:
    db = sqlite3.connect(daemon.data_dir / "state" / "state.db", timeout=30)
    try:
        return dict(db.execute("SELECT source, COUNT(*) FROM instances GROUP BY source").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()


def test_orthanc_stow_reaches_the_registry_deidentified_and_joins_cstore(tmp_path: Path) -> None:
    study, files = write_pet_ct_study(tmp_path / "study", SyntheticStudy(), ct_count=10, pet_count=4, ct_rows=128)
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    reg_token = token_file(tmp_path / "reg")
    stow_port = free_port()
    with RegistryProcess(tmp_path / "registry", reg_token) as registry, \
            stow_daemon(tmp_path, registry, reg_token, stow_port) as daemon:
        wait_port(stow_port, timeout=30)
        with orthanc_with_connector(tmp_path / "orthanc", stow_port) as orthanc:
            study_id = upload_study(orthanc, files)
            stow_from_orthanc(orthanc, study_id)
            assert instances_by_source(daemon) == {"stow": len(files)}
            # the same instances by C-STORE too: they join the same study, nothing is doubled
            assert storescu(daemon.port, files[:5]).returncode == 0
            wait_for(lambda: registry.stats()["manifests"] == 1 and registry.stats()["instances"] == len(files),
                     timeout=180, interval=0.5, what="the study at the registry")
        stats = registry.stats()
        db = sqlite3.connect(daemon.data_dir / "state" / "state.db")
        studies = db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        db.close()
        logs = daemon.logs()
    assert studies == 1
    assert stats["instances"] == stats["files"] == len(files) and stats["studies"] == 1
    held = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "registry").rglob("*.dcm")]
    assert len(held) == len(files)
    for ds in held:  # de-identified on the way, as C-STORE studies are
        assert ds.StudyInstanceUID != original.StudyInstanceUID
        assert str(ds.get("PatientName", "")) != str(original.PatientName)
        assert ds.get("PatientID", "") != original.PatientID
    # nothing identifying in the daemon's logs: no UID, no name
    assert original.StudyInstanceUID not in logs and str(original.PatientName) not in logs
    assert '"event": "stow_request"' in logs or '"stow_request"' in logs


def test_kill_9_during_a_large_stow_then_resend_gives_each_instance_once(tmp_path: Path) -> None:
    _, files = write_pet_ct_study(tmp_path / "study", SyntheticStudy(), ct_count=120, pet_count=0, ct_rows=512)
    reg_token = token_file(tmp_path / "reg")
    stow_port = free_port()
    with RegistryProcess(tmp_path / "registry", reg_token) as registry:
        daemon = stow_daemon(tmp_path, registry, reg_token, stow_port)
        with orthanc_with_connector(tmp_path / "orthanc", stow_port) as orthanc:
            study_id = upload_study(orthanc, files)
            daemon.start()
            wait_port(stow_port, timeout=30)
            outcome: dict[str, Any] = {}

            def send() -> None:
                try:
                    outcome["answer"] = stow_from_orthanc(orthanc, study_id)
                except (urllib.error.URLError, OSError) as exc:
                    outcome["error"] = exc

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            wait_for(lambda: instances_by_source(daemon).get("stow", 0) >= 10, timeout=120, interval=0.02,
                     what="part of the study received")
            daemon.kill()
            received_before = instances_by_source(daemon).get("stow", 0)
            sender.join(timeout=120)
            assert "error" in outcome, "Orthanc was told the whole study was stored, though the daemon was killed"
            assert received_before < len(files)
            daemon.start()
            wait_port(stow_port, timeout=60)
            stow_from_orthanc(orthanc, study_id)  # the sender's resend
            # a part renamed into the spool but not yet committed when the kill came is registered
            # by start-up recovery (source "recovery"); the resend then finds it stored
            sources = instances_by_source(daemon)
            assert set(sources) <= {"stow", "recovery"} and sum(sources.values()) == len(files), sources
            wait_for(lambda: registry.stats()["manifests"] == 1 and registry.stats()["instances"] == len(files),
                     timeout=300, interval=0.5, what="the study at the registry")
            time.sleep(2)  # anything sent twice would show up now
            stats = registry.stats()
            daemon.stop()
    assert stats["instances"] == stats["files"] == len(files)
    sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in (tmp_path / "registry").rglob("*.dcm")]
    assert len(sops) == len(set(sops)) == len(files)


def test_orthanc_with_a_wrong_token_is_refused_with_401(tmp_path: Path) -> None:
    _, files = write_pet_ct_study(tmp_path / "study", SyntheticStudy(), ct_count=2, pet_count=0, ct_rows=64)
    reg_token = token_file(tmp_path / "reg")
    stow_port = free_port()
    with RegistryProcess(tmp_path / "registry", reg_token) as registry, \
            stow_daemon(tmp_path, registry, reg_token, stow_port) as daemon:
        wait_port(stow_port, timeout=30)
        with orthanc_with_connector(tmp_path / "orthanc", stow_port, token="not-the-token") as orthanc:
            study_id = upload_study(orthanc, files)
            with pytest.raises(urllib.error.HTTPError):
                stow_from_orthanc(orthanc, study_id)
            log_text = (tmp_path / "orthanc" / "orthanc.log").read_text(errors="replace")
        assert instances_by_source(daemon) == {}
        logs = daemon.wait_for_log('"status": 401')
    assert '"status": 401' in logs, logs[-2000:]
    assert "401" in log_text
