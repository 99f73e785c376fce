"""A throw-away site with a real state DB, spool, quarantine, outbox, linkage table and a running
web server on 127.0.0.1 (any free port), plus an HTTP client that logs in like a browser does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.config import Config, load_config
from connector.deid.provider import PatientIdentity
from connector.ingest.intake import Intake
from connector.linkage import OpenOptions, create_key_file, open_linkage
from connector.linkage.paths import default_key_path
from connector.store.layout import SiteLayout
from connector.store.quarantine import quarantine
from connector.store.state import StateStore
from connector.site_db import open_state
from connector.synthetic import SyntheticStudy, write_pet_ct_study
from connector.web.users import UserFile, users_path
from connector.web.server import WebServer
from connector.web.site_context import SiteContext
from tests.web.browser import artefacts, browser  # noqa: F401  (fixtures for the browser tests)

USER, PASSWORD = "coordinator", "correct horse battery staple"  # role "it" (the default), despite the name
COORD, COORD_PASSWORD = "coord.one", "coordinator password 1"  # role "coordinator": may search by identifiers


@dataclass
class WebSite:
    root: Path
    config: Config
    layout: SiteLayout
    store: StateStore
    intake: Intake
    provider: Any
    server: WebServer
    probe_results: dict[str, str | None] = field(default_factory=dict)
    woken: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=10)

    def login(self, user: str = USER, password: str = PASSWORD) -> httpx.Client:
        c = self.client()
        r = c.get("/login")
        r2 = c.post("/login", data={"csrf": csrf_of(r.text), "username": user, "password": password})
        assert r2.status_code == 303 and r2.headers["location"] == "/", r2.status_code
        return c

    def receive(self, folder: Path, ct: int = 3, pet: int = 2, study: SyntheticStudy | None = None
                ) -> tuple[SyntheticStudy, list[Path]]:
        """A synthetic study taken in through the real intake (as the drop folder would)."""
        study, paths = write_pet_ct_study(folder, study=study, ct_count=ct, pet_count=pet, ct_rows=32)
        for p in paths:
            self.intake.ingest_external(p)
        return study, paths

    def quarantine_bytes(self, stage: str, reason: str, data: bytes) -> str:
        return quarantine(self.layout.quarantine, stage, reason, data=data).id

    def quarantine_file(self, stage: str, reason: str, path: Path) -> str:
        return quarantine(self.layout.quarantine, stage, reason, source_path=path).id


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "page has no CSRF field"
    return m.group(1)


def make_config(root: Path, **env: str) -> Config:
    base = {
        "SITE_CONNECTOR__SITE__ID": "WEBTEST",
        "SITE_CONNECTOR__STORAGE__DATA_DIR": str(root / "data"),
        "SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES": "0",
        "SITE_CONNECTOR__STORAGE__FSYNC": "false",
        "SITE_CONNECTOR__HTTP__PORT": "0",
        "SITE_CONNECTOR__LINKAGE__SCRYPT_LOG_N": "14",
    }
    base.update(env)
    return load_config(None, environ=base)


@pytest.fixture
def web_site(tmp_path: Path) -> Iterator[WebSite]:
    config = make_config(tmp_path)
    layout = SiteLayout.from_config(config)
    layout.ensure()
    create_key_file(default_key_path(config))
    provider = open_linkage(config, OpenOptions(role="test"))
    store = open_state(layout.state_db)
    intake = Intake(layout, store, min_free_bytes=0, fsync=False)
    UserFile(users_path(config)).add(USER, PASSWORD)
    UserFile(users_path(config)).add(COORD, COORD_PASSWORD, role="coordinator")
    probe_results: dict[str, str | None] = {"registry": None, "scp": None}
    woken: list[str] = []
    probes = {name: (lambda name=name: probe_results[name]) for name in probe_results}
    server = WebServer(SiteContext(config, store, layout, probes, intake=intake, provider=provider, wake=woken.append))
    server.start()
    site = WebSite(tmp_path, config, layout, store, intake, provider, server, probe_results, woken)
    try:
        yield site
    finally:
        server.stop()
        store.close()
        provider.close()


def add_patient(provider: Any, patient_id: str, issuer: str, study_date: str) -> str:
    """A patient as the de-identification pipeline records it on the index scan; returns the pseudonym."""
    subject = provider.subject_for(PatientIdentity(patient_id, issuer, "SYNTHFAMILY^GIVEN", "19470312", "F"),
                                   study_date=study_date)
    return str(subject.pseudonym)
