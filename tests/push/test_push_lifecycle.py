"""A study's lifecycle ends at ``pushed`` only when every registry job it produced is acknowledged."""

from __future__ import annotations

import time
from pathlib import Path

from connector.outbox import Outbox
from connector.store.state import StateStore
from connector.site_db import open_state
from connector.outbox.delivery import delivery, promote_delivered, record_study_outputs, waiting_for_registry


def _queued_study(store: StateStore, key: str) -> None:
    with store.write() as conn:
        conn.execute("INSERT INTO studies (study_key, study_uid, state, last_received_at) VALUES (?, ?, 'queued', ?)",
                     (key, "1.2.3", time.time()))


def _finish(outbox: Outbox, fail_kind: str | None = None) -> None:
    """Lease and settle every ready job in dependency order; ``fail_kind`` jobs fail for good."""
    while True:
        jobs = outbox.lease("t", "registry", limit=10)
        if not jobs:
            return
        for job in jobs:
            if job.kind == fail_kind:
                outbox.give_up(job.id, "t", error="rejected", status=422)
            else:
                outbox.complete(job.id, "t", 200)


def test_pushed_only_when_every_job_is_done(tmp_path: Path) -> None:
    store = open_state(tmp_path / "state.db")
    outbox = Outbox(store)
    _queued_study(store, "study-a")
    record_study_outputs(store, "study-a", ["2.25.1"])
    outbox.enqueue("subject", "P1#x", "registry", group="P1")
    outbox.enqueue("stow", "2.25.1#a", "registry", group="2.25.1")
    outbox.enqueue("stow", "2.25.1#b", "registry", group="2.25.1")
    outbox.enqueue("manifest", "2.25.1#m", "registry", after=[("subject", "P1#x"), ("stow", "2.25.1#a"),
                                                               ("stow", "2.25.1#b")], group="2.25.1")
    outbox.enqueue("result", "r1", "registry", group="2.25.1")
    assert promote_delivered(store) == []  # nothing delivered yet
    _finish(outbox, fail_kind="result")  # the CAC result is refused: images are there, the study is not done
    assert promote_delivered(store) == []
    assert store.study("study-a")["state"] == "queued"
    assert delivery(store, "study-a") == {"stow": {"done": 2}, "manifest": {"done": 1}, "result": {"failed": 1}}
    assert waiting_for_registry(store) == [{"study": "study-a", "waiting": {"result": {"failed": 1}},
                                             "last_error": "rejected"}]
    outbox.retry_failed()
    _finish(outbox)
    assert promote_delivered(store) == ["study-a"]
    assert store.study("study-a")["state"] == "pushed"
    assert promote_delivered(store) == []  # once


def test_a_study_without_a_manifest_is_not_pushed(tmp_path: Path) -> None:
    store = open_state(tmp_path / "state.db")
    outbox = Outbox(store)
    _queued_study(store, "study-b")
    record_study_outputs(store, "study-b", ["2.25.2"])
    outbox.enqueue("stow", "2.25.2#a", "registry", group="2.25.2")
    _finish(outbox)
    assert promote_delivered(store) == []  # batches alone are not a delivered study
    _queued_study(store, "study-c")  # queued before the registry step recorded its outputs
    assert promote_delivered(store) == []
