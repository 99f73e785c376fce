"""Issue 12, "what it must show", through the daemon: dcmtk's storescu sends the synthetic PHI corpus
(tests/deid/phi_corpus.py) to the real daemon, which pushes to the real dev registry; then a byte scan
of the registry's WHOLE data folder (instances, JSON records, its SQLite database and WAL) finds no
canary and no original UID, and the registry holds exactly the objects the corpus expects written."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from devregistry import RegistryServer
from tests.deid.phi_corpus import Corpus, locate, scan, write_corpus
from tests.push.test_push_daemon import push_settings, token_file
from tests.support.daemon import ConnectorProcess
from tests.support.tools import dcmtk

pytestmark = pytest.mark.slow

BUSY = ("receiving", "stable", "processing", "deidentified")  # study states the pipeline still moves on from


def _status(daemon: ConnectorProcess) -> dict[str, Any]:
    return json.loads(daemon.cli("status", "--json", check=True).stdout)


def wait_until_settled(daemon: ConnectorProcess, instances: int, studies: int, timeout: float = 180) -> dict[str, Any]:
    """The status once every instance arrived, every study left the busy states (queued, pushed,
    quarantined, failed) and the outbox is empty: all the registry will get, it has."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = _status(daemon)
        counts = status["studies"]
        if (status["instances_received"] >= instances and sum(counts.values()) >= studies
                and not any(counts.get(s) for s in BUSY)
                and status["outbox_pending"] == 0 and status.get("outbox_in_flight", 0) == 0):
            return status
        time.sleep(0.5)
    raise AssertionError(f"the daemon did not settle within {timeout} s: {status}")


def test_corpus_through_daemon_leaves_nothing_in_the_registry(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "pacs")
    files = sorted(corpus.folder.iterdir())
    studies = len({name.split("_", 1)[0] for name in corpus.files})  # s1_, s2_, s3_: one study each
    token = token_file(tmp_path / "secrets")
    registry_dir = tmp_path / "registry"
    registry = RegistryServer(registry_dir, token=token.read_text().strip(), port=0).start()
    try:
        with ConnectorProcess(tmp_path / "site", **push_settings(registry.url, token)) as daemon:
            # -R: propose exactly the SOP classes and transfer syntaxes of the files, so the PDF, SR,
            # ultrasound and secondary capture get a presentation context like the CT and PET.
            sent = subprocess.run([dcmtk("storescu"), "-R", "-aec", "SITECONN", "127.0.0.1", str(daemon.port),
                                   *map(str, files)], capture_output=True, text=True, timeout=120)
            assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]
            status = wait_until_settled(daemon, len(files), studies)
            assert status["instances_received"] == len(files), status
            time.sleep(1.0)  # let a last registry commit land before reading its folder
            stats = registry.store.stats()
            # scanned while both still run: the registry's SQLite WAL is live, as in production
            live_leaks, scanned = scan_folder(registry_dir, corpus)
    finally:
        registry.stop()
    # and once more at rest (the WAL checkpointed into the database, temporary files gone)
    rest_leaks, rest_scanned = scan_folder(registry_dir, corpus)
    registry_files = [p for p in registry_dir.rglob("*") if p.is_file()]
    problems = []
    # the registry really holds data (JSON records and instances): an empty folder scans clean too
    if not any(p.suffix == ".dcm" for p in registry_files):
        held = sorted(str(p.relative_to(registry_dir)) for p in registry_files)
        problems.append(f"no instance in the registry: {held}")
    leaks = list(dict.fromkeys(live_leaks + rest_leaks))
    if leaks:
        problems.append(f"{len(leaks)} registry files leak (of {scanned} scanned live, {rest_scanned} at rest):\n"
                        + "\n".join(leaks))
    # the right objects: as many of each SOP class as the corpus expects written (no PDF, US, SC)
    expected_classes = Counter(str(dcmread(corpus.folder / n, stop_before_pixels=True).SOPClassUID)
                               for n in corpus.written)
    held_classes = Counter(str(dcmread(p, stop_before_pixels=True).SOPClassUID)
                           for p in registry_files if p.suffix == ".dcm")
    if held_classes != expected_classes:
        problems.append(f"registry holds SOP classes {dict(held_classes)}, expected {dict(expected_classes)}")
    if stats["instances"] != len(corpus.written):
        problems.append(f"registry holds {stats['instances']} instances, the corpus expects {len(corpus.written)} "
                        f"written ({', '.join(corpus.written)}); site status: studies {status['studies']}, "
                        f"quarantined {status['quarantined']}, failed push jobs {status['failed']}; "
                        f"registry stats {stats}")
    assert problems == [], "\n".join(problems)
    # the pipeline recorded a privacy report per study: counts and tags a privacy officer can audit
    with sqlite3.connect(next((tmp_path / "site").rglob("state.db"))) as db:
        reports = [json.loads(r) for (r,) in db.execute("SELECT report FROM privacy_reports")]
    assert len(reports) == studies
    assert sum(r["tokens_replaced"] + r["spans_replaced"] for r in reports) > 0
    assert any("(0020,4000)" in r["removed_tags"] for r in reports)  # Image Comments removed
    assert not any(canary in json.dumps(reports) for canary in corpus.canaries)


def scan_folder(folder: Path, corpus: Corpus) -> tuple[list[str], int]:
    """Leak reports for every file under ``folder`` (any name, any depth), and how many were read."""
    leaks = []
    scanned = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a temporary file gone meanwhile
            continue
        scanned += 1
        if scan(data, corpus):
            leaks.append(f"{path.relative_to(folder)}:\n    " + "\n    ".join(locate(data, corpus)))
    return leaks, scanned
