"""Fixtures for the push tests: a site (layout + state DB), de-identified studies, a live dev registry."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connector.config import Config, load_config
from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider
from connector.deid.study import deidentify_study
from connector.outbox import Outbox
from devregistry import RegistryServer
from connector.store.layout import SiteLayout
from connector.store.state import StateStore
from connector.site_db import open_state
from connector.synthetic import SyntheticStudy, write_pet_ct_study

SECRET = bytes(range(32))


@dataclass
class DeidStudy:
    study_uid: str  # de-identified
    pseudonym: str
    files: list[Path]
    original: SyntheticStudy

    @property
    def sop_uids(self) -> set[str]:
        return {p.stem for p in self.files}


@dataclass
class Site:
    root: Path
    layout: SiteLayout
    store: StateStore
    outbox: Outbox
    token_file: Path
    provider: EphemeralIdentityProvider

    def config(self, url: str = "", **registry: Any) -> Config:
        env = {"SITE_CONNECTOR__STORAGE__DATA_DIR": str(self.layout.data_dir),
               "SITE_CONNECTOR__SITE__ID": "TEST01",
               "SITE_CONNECTOR__REGISTRY__TOKEN_FILE": str(self.token_file),
               "SITE_CONNECTOR__REGISTRY__BACKOFF_MIN_SECONDS": "0.2",
               "SITE_CONNECTOR__REGISTRY__BACKOFF_MAX_SECONDS": "2",
               "SITE_CONNECTOR__REGISTRY__POLL_SECONDS": "0.1"}
        if url:
            env["SITE_CONNECTOR__REGISTRY__URL"] = url
        for key, value in registry.items():
            env[f"SITE_CONNECTOR__REGISTRY__{key.upper()}"] = str(value)
        return load_config(None, env)

    def deid_study(self, ct: int = 6, pet: int = 3, rows: int = 64, name: str | None = None) -> DeidStudy:
        """A synthetic PET/CT study run through the real de-identification into spool/outgoing."""
        original = SyntheticStudy()
        name = name or secrets.token_hex(4)
        _s, paths = write_pet_ct_study(self.root / "pacs" / name, original, ct_count=ct, pet_count=pet, ct_rows=rows)
        engine = DeidEngine.from_rules(None, self.provider, site_id="TEST01", fsync=False)
        outcome = deidentify_study(paths, self.layout.outgoing / name, self.layout.quarantine, engine)
        assert len(outcome.written) == ct + pet and len(outcome.study_uids) == 1
        return DeidStudy(outcome.study_uids[0], outcome.pseudonyms[0], [w.path for w in outcome.written], original)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    layout = SiteLayout(tmp_path / "data", tmp_path / "data" / "keys")
    layout.ensure()
    token_file = tmp_path / "registry.token"
    token_file.write_text(secrets.token_urlsafe(24) + "\n")
    os.chmod(token_file, 0o600)
    store = open_state(layout.state_db)
    yield Site(tmp_path, layout, store, Outbox(store), token_file,
               EphemeralIdentityProvider(site_id="TEST01", secret=SECRET))
    store.close()


@pytest.fixture
def registry(site: Site) -> Iterator[RegistryServer]:
    server = RegistryServer(site.root / "registry", token=site.token_file.read_text().strip(), port=0,
                            fsync=False).start()
    yield server
    server.stop()


def subject_for(study: DeidStudy) -> dict[str, Any]:
    return {"sex": "F", "age_at_index_years": 77, "index_study_instance_uid": study.study_uid}


def queue_site_study(site: Site, study: DeidStudy, **kw: int) -> int:
    """Queue one de-identified study of ``site`` for the registry (the daemon's registry step)."""
    from connector.push.queueing import queue_study

    return queue_study(site.outbox, study_uid=study.study_uid, pseudonym=study.pseudonym,
                       subject=subject_for(study), files=study.files, layout=site.layout, **kw)


def push_all(site: Site, config, timeout: float = 60):
    """Run a PushWorker until the outbox is drained; returns the stopped worker."""
    from connector.outbox import outbox_counts
    from connector.push.worker import PushWorker

    worker = PushWorker(config, site.store, site.layout)
    worker.start()
    try:
        assert worker.drain(timeout), outbox_counts(site.store)
    finally:
        worker.stop()
    return worker
