"""A throw-away site with a real linkage table, state DB and outbox, and synthetic coordinator files."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from connector.cli.main import main as cli_main
from connector.config import Config, load_config
from connector.deid.provider import PatientIdentity
from connector.followup.importer import FollowupImporter
from connector.followup.outcomes import ImportSummary
from connector.linkage import LinkageProvider, LinkedSubject, OpenOptions, create_key_file, open_linkage
from connector.linkage.paths import default_key_path
from connector.outbox import Outbox
from connector.store.layout import SiteLayout
from connector.store.state import StateStore
from connector.site_db import open_state

TODAY = date(2025, 6, 30)
HEADER = ["patient_id", "issuer", "event", "event_date", "cause", "source"]


@dataclass
class FollowupSite:
    root: Path
    config_path: Path
    _open: list[Any] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return load_config(self.config_path, environ={})

    @property
    def layout(self) -> SiteLayout:
        return SiteLayout.from_config(self.config)

    def provider(self) -> LinkageProvider:
        p = open_linkage(self.config, OpenOptions(role="test"))
        self._open.append(p)
        return p

    def store(self) -> StateStore:
        s = open_state(self.layout.state_db)
        self._open.append(s)
        return s

    def add_patient(self, patient_id: str, issuer: str = "HOSP-A", study_date: str = "20200115",
                    name: str = "SYNTHFAMILY^GIVEN") -> LinkedSubject:
        """A patient as the de-identification pipeline would have created it on the index scan."""
        p = self.provider()
        p.subject_for(PatientIdentity(patient_id, issuer, name, "19470312", "F"), study_date=study_date)
        found = p.lookup_patient(patient_id, issuer, audit=False)
        assert found is not None
        return found

    def importer(self, today: date = TODAY, config: Config | None = None) -> FollowupImporter:
        store = self.store()
        return FollowupImporter(config or self.config, self.provider(), store, Outbox(store), today=today)

    def run(self, path: Path, *, dry_run: bool = False, today: date = TODAY) -> ImportSummary:
        return self.importer(today).import_file(path, dry_run=dry_run)

    def outbox_events(self) -> list[tuple[str, dict[str, Any]]]:
        """(idempotency key, body) of every event job in the outbox, in queue order."""
        conn = self.store().conn
        return [(k, json.loads(p)) for k, p in
                conn.execute("SELECT key, payload FROM outbox_jobs WHERE kind='event' ORDER BY id")]

    def cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli_main(["-c", str(self.config_path), "followup", *args])
            except SystemExit as exc:
                rc = int(exc.code or 0)
        return rc, out.getvalue(), err.getvalue()

    def close(self) -> None:
        for obj in reversed(self._open):
            obj.close()
        self._open.clear()


def make_site(root: Path, extra: str = "") -> FollowupSite:
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "connector.toml"
    config_path.write_text('[site]\nid = "TEST01"\n[storage]\ndata_dir = "data"\nfsync = false\n'
                           '[linkage]\nscrypt_log_n = 14\n' + extra)
    site = FollowupSite(root, config_path)
    create_key_file(default_key_path(site.config))
    return site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[FollowupSite]:
    s = make_site(tmp_path / "site")
    yield s
    s.close()


def write_csv(path: Path, rows: list[dict[str, str]], header: list[str] | None = None, delimiter: str = ",",
              encoding: str = "utf-8") -> Path:
    header = header or HEADER
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, delimiter=delimiter, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in header})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def days_between(a: str, b: str) -> int:
    """b - a in days, for ISO or YYYYMMDD dates."""
    def parse(v: str) -> date:
        v = v.replace("-", "")
        return date(int(v[:4]), int(v[4:6]), int(v[6:]))
    return (parse(b) - parse(a)).days
