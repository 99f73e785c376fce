"""End to end through the daemon: a study reaches the dev registry, then a coordinator drops a death in
the inbox, and the registry receives one death event for that pseudonym with the right interval."""

from __future__ import annotations

import csv
import os
import secrets
import shutil
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devregistry import RegistryServer
from connector.synthetic import SyntheticPatient, SyntheticStudy, write_pet_ct_study
from tests.support.daemon import ConnectorProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _da(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def test_study_then_inbox_death_reaches_the_registry_with_the_right_interval(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "registry.token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    study = SyntheticStudy(patient=SyntheticPatient(family="QUIMBLEWORTH", given="ODALYS"), study_date="20210317")
    _, files = write_pet_ct_study(tmp_path / "pacs", study, ct_count=6, pet_count=3, ct_rows=64)
    drop, inbox = tmp_path / "drop", tmp_path / "inbox"
    drop.mkdir()
    inbox.mkdir()
    auth = {"Authorization": f"Bearer {token}"}

    with RegistryServer(tmp_path / "registry", token=token, port=0, fsync=False) as registry, \
            ConnectorProcess(tmp_path / "site", registry__url=registry.url, registry__token_file=str(token_file),
                             registry__poll_seconds=0.2, dropfolder__path=str(drop),
                             dropfolder__settle_seconds=0.5, dropfolder__poll_seconds=0.2,
                             followup__inbox=str(inbox), followup__poll_seconds=0.5,
                             followup__settle_seconds=0.5) as daemon:
        for f in files:
            shutil.copy(f, drop / f.name)

        def registry_study() -> dict[str, Any] | None:
            r = httpx.get(f"{registry.url}/dicomweb/studies", headers=auth)
            docs = r.json() if r.status_code == 200 and r.content else []
            return docs[0] if docs else None

        qido = wait_for(registry_study, 120, 0.25, "the study at the registry")
        pseudonym = qido["00100020"]["Value"][0]
        registry_study_date = _da(qido["00080020"]["Value"][0])
        assert pseudonym.startswith("TEST01-") and registry_study_date != _da(study.study_date)

        death_real = _da(study.study_date) + timedelta(days=1234)
        with open(inbox / "deaths.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patient_id", "issuer", "event", "event_date", "cause"])
            w.writerow([study.patient.patient_id, study.patient.issuer, "death", death_real.isoformat(),
                        "QUIMBLEWORTH, at home"])
            w.writerow(["SOMEONE-ELSE", study.patient.issuer, "death", death_real.isoformat(), ""])

        def events() -> list[dict[str, Any]]:
            return list(httpx.get(f"{registry.url}/api/v1/events", headers=auth).json()["events"])

        (event,) = wait_for(events, 120, 0.25, "the death event at the registry")
        wait_for(lambda: list((inbox / "done").glob("*-deaths.csv")), 120, 0.25, "the file filed under done/")
        time.sleep(2)  # a further scheduler run must not send anything again
        assert len(events()) == 1
        logs = daemon.logs()

    assert event["pseudonym"] == pseudonym and event["event"] == "death"
    assert event["days_from_index"] == 1234
    assert (date.fromisoformat(event["event_date"]) - registry_study_date).days == 1234
    assert event["version"] == 1 and event["retracted"] is False and "cause" not in event
    assert study.patient.patient_id not in str(event) and "QUIMBLEWORTH" not in str(event)
    report = next((inbox / "done").glob("*-deaths.csv.report.csv")).read_text(encoding="utf-8-sig")
    assert "2,queued,,death,1" in report and "3,rejected,unknown_patient" in report
    assert study.patient.patient_id not in logs and "deaths.csv" not in logs
