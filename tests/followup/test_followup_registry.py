"""Follow-up events all the way to the dev registry: through the outbox and the real push worker."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.push.worker import PushWorker
from devregistry import RegistryServer
from tests.followup.conftest import FollowupSite, days_between, make_site, write_csv


class Harness:
    def __init__(self, site: FollowupSite, registry: RegistryServer, token: str) -> None:
        self.site, self.registry, self.token = site, registry, token
        self.store = site.store()
        self.worker = PushWorker(site.config, self.store, site.layout)

    def events(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.registry.url}/api/v1/events", headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return list(r.json()["events"])

    def push(self, path: Path) -> Any:
        """Import ``path``, then wait until the push worker has delivered everything queued."""
        summary = self.site.run(path)
        self.worker.wake()
        assert self.worker.drain(30), "the push worker did not drain the outbox"
        return summary


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "registry.token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    registry = RegistryServer(tmp_path / "registry", token=token, port=0, fsync=False).start()
    site = make_site(tmp_path / "site", f'[registry]\nurl = "{registry.url}"\ntoken_file = "{token_file}"\n'
                                        "poll_seconds = 0.1\nbackoff_min_seconds = 0.2\nbackoff_max_seconds = 2\n")
    site.layout.ensure()
    harness = Harness(site, registry, token)
    harness.worker.start()
    yield harness
    harness.worker.stop()
    site.close()
    registry.stop()


def _shift(yyyymmdd_or_iso: str, offset: int) -> str:
    v = yyyymmdd_or_iso.replace("-", "")
    return (date(int(v[:4]), int(v[4:6]), int(v[6:])) + timedelta(days=offset)).isoformat()


def test_registry_gets_pseudonymous_events_with_the_real_interval(h: Harness, tmp_path: Path) -> None:
    a = h.site.add_patient("REG-1", issuer="HOSP-A", study_date="20180301")
    b = h.site.add_patient("REG-1", issuer="HOSP-B", study_date="20220115")  # same ID, other hospital
    f = write_csv(tmp_path / "f.csv", [
        {"patient_id": "REG-1", "issuer": "HOSP-A", "event": "death", "event_date": "2024-02-29",
         "cause": "REG-1 at home", "source": "death index"},
        {"patient_id": "REG-1", "issuer": "HOSP-B", "event": "hf_admission", "event_date": "2023-11-30"},
        {"patient_id": "REG-2", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01"},  # unknown
        {"patient_id": "REG-1", "issuer": "HOSP-A", "event": "mi", "event_date": "2017-01-01"},  # before index
        {"patient_id": "REG-1", "issuer": "HOSP-B", "event": "cabg", "event_date": "2999-01-01"},  # future
    ])
    summary = h.push(f)
    assert summary.queued == 2 and summary.rejected_total == 3
    events = h.events()
    assert len(events) == 2
    by_pseudonym = {e["pseudonym"]: e for e in events}
    death, hf = by_pseudonym[a.pseudonym], by_pseudonym[b.pseudonym]
    assert (death["event"], hf["event"]) == ("death", "hf_admission")
    assert death["days_from_index"] == days_between("20180301", "2024-02-29")
    assert hf["days_from_index"] == days_between("20220115", "2023-11-30")
    for e, s in ((death, a), (hf, b)):
        shifted_index = _shift(s.index_date, s.date_offset_days)  # the study date the registry's images carry
        assert days_between(shifted_index, e["event_date"]) == e["days_from_index"]
        assert (e["version"], e["retracted"]) == (1, False)
    assert death["source"] == "death_index" and "cause" not in death
    text = str(events)
    for leaked in ("REG-1", "REG-2", "HOSP-A", "HOSP-B", "2024-02-29", "2023-11-30", "2017-01-01", "2999-01-01"):
        assert leaked not in text


def test_reimport_correction_and_retraction_at_the_registry(h: Harness, tmp_path: Path) -> None:
    s = h.site.add_patient("VER-1", study_date="20200601")
    h.site.add_patient("VER-2", study_date="20200601")
    rows = [{"patient_id": "VER-1", "issuer": "HOSP-A", "event": "death", "event_date": "2024-03-01"},
            {"patient_id": "VER-2", "issuer": "HOSP-A", "event": "pci", "event_date": "2021-06-01"}]
    h.push(write_csv(tmp_path / "a.csv", rows))
    assert len(h.events()) == 2
    again = h.push(write_csv(tmp_path / "a-again.csv", rows))
    assert again.unchanged == 2 and len(h.events()) == 2  # nothing new reached the registry

    h.push(write_csv(tmp_path / "b.csv", [dict(rows[0], event_date="2024-03-11")]))
    h.push(write_csv(tmp_path / "c.csv", [dict(rows[0], retract="yes")],
                     header=["patient_id", "issuer", "event", "event_date", "retract"]))
    deaths = [e for e in h.events() if e["pseudonym"] == s.pseudonym]
    assert [(e["version"], e["retracted"], e["event_date"], e["days_from_index"]) for e in deaths] == [
        (1, False, _shift("2024-03-01", s.date_offset_days), days_between("20200601", "2024-03-01")),
        (2, False, _shift("2024-03-11", s.date_offset_days), days_between("20200601", "2024-03-11")),
        (3, True, _shift("2024-03-11", s.date_offset_days), days_between("20200601", "2024-03-11")),
    ]
    assert len({e["event_id"] for e in deaths}) == 1  # the registry can tell these are one event
    latest = max(deaths, key=lambda e: e["version"])
    assert latest["retracted"] is True
