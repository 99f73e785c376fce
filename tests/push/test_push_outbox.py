"""The outbox queue on a real state DB: idempotent enqueue, prerequisites, leases, retries, counts."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from connector.outbox import Outbox, backoff_delay, outbox_counts, parse_retry_after
from connector.site_db import open_state


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(open_state(tmp_path / "state.db"))


def test_migration_creates_the_outbox_tables(tmp_path: Path) -> None:
    store = open_state(tmp_path / "state.db")
    version = store.conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert version >= 2
    assert {"outbox_jobs", "outbox_items", "outbox_deps"} <= tables
    store.close()
    assert open_state(tmp_path / "state.db").conn.execute("PRAGMA user_version").fetchone()[0] == version


def test_enqueue_is_idempotent_on_kind_key_destination(outbox: Outbox) -> None:
    assert outbox.enqueue("subject", "P1", "registry", {"sex": "F"}) is True
    assert outbox.enqueue("subject", "P1", "registry", {"sex": "M"}) is False
    assert outbox.enqueue("subject", "P1", "elsewhere", {"sex": "M"}) is True
    assert outbox.enqueue("result", "P1", "registry", {}) is True
    [job] = [j for j in outbox.lease("w", "registry", 10) if j.kind == "subject"]
    assert job.payload == {"sex": "F"}  # the second enqueue changed nothing


def test_items_and_their_acknowledgement(outbox: Outbox) -> None:
    outbox.enqueue("stow", "S#1", "registry", {}, files=["a.dcm", "b.dcm", "c.dcm"], refs=["1", "2", "3"],
                   sizes=[10, 20, 30], group="S")
    [job] = outbox.lease("w", "registry")
    assert [(i.path, i.ref, i.size) for i in job.items] == [("a.dcm", "1", 10), ("b.dcm", "2", 20), ("c.dcm", "3", 30)]
    outbox.ack_items([job.items[0].id, job.items[2].id])
    outbox.fail_items({job.items[1].id: "stow-failure:0xC000"})
    counts = outbox_counts(outbox.store)
    assert (counts["instances_pushed"], counts["instances_failed"], counts["bytes_pushed"]) == (2, 1, 40)
    assert outbox.group_items("registry", "S", "stow")["2"][2] == "failed"
    with pytest.raises(ValueError):
        outbox.enqueue("stow", "S#2", "registry", {}, files=["x"], refs=["1", "2"])


def test_prerequisites_hold_a_job_back_until_done(outbox: Outbox) -> None:
    outbox.enqueue("stow", "S#1", "registry", {})
    outbox.enqueue("stow", "S#2", "registry", {})
    outbox.enqueue("manifest", "S", "registry", {}, after=[("stow", "S#1"), ("stow", "S#2")])
    leased = outbox.lease("w", "registry", 10)
    assert sorted(j.key for j in leased) == ["S#1", "S#2"]
    first, second = sorted(leased, key=lambda j: j.key)
    assert outbox.complete(first.id, "w")
    assert outbox.lease("w", "registry", 10) == []  # one prerequisite still open
    assert outbox.give_up(second.id, "w", error="http-400", status=400)
    assert outbox.lease("w", "registry", 10) == []
    counts = outbox_counts(outbox.store)
    assert (counts["failed"], counts["blocked"], counts["outbox_pending"]) == (1, 1, 1)
    assert outbox.retry_failed("registry") == 1
    [again] = outbox.lease("w", "registry", 10)
    assert again.key == "S#2" and again.attempts == 0
    outbox.complete(again.id, "w")
    [manifest] = outbox.lease("w", "registry", 10)
    assert manifest.kind == "manifest"
    with pytest.raises(ValueError):
        outbox.enqueue("manifest", "T", "registry", {}, after=[("stow", "missing")])


def test_lease_expiry_hands_a_job_to_another_worker(outbox: Outbox) -> None:
    outbox.enqueue("event", "E1", "registry", {"type": "death"}, now=1000.0)
    [job] = outbox.lease("dead-worker", "registry", lease_seconds=60, now=1000.0)
    assert outbox.lease("other", "registry", now=1030.0) == []
    [again] = outbox.lease("other", "registry", lease_seconds=60, now=1061.0)
    assert again.id == job.id
    # The worker that lost its lease cannot overwrite the new holder's outcome.
    assert outbox.complete(job.id, "dead-worker") is False
    assert outbox.renew("dead-worker", [job.id], 60) == 0
    assert outbox.renew("other", [job.id], 60) == 1
    assert outbox.complete(job.id, "other") is True
    assert outbox_counts(outbox.store)["pushed"] == 1


def test_reset_leases_at_start_up(outbox: Outbox) -> None:
    outbox.enqueue("event", "E1", "registry", {})
    outbox.lease("crashed", "registry", lease_seconds=3600)
    assert outbox.lease("new", "registry") == []
    assert outbox.reset_leases("registry") == 1
    assert [j.key for j in outbox.lease("new", "registry")] == ["E1"]


def test_defer_sets_the_next_attempt(outbox: Outbox) -> None:
    outbox.enqueue("event", "E1", "registry", {}, now=0.0)
    [job] = outbox.lease("w", "registry", now=100.0)
    assert outbox.defer(job.id, "w", 30.0, error="http-503", status=503, now=100.0)
    assert outbox.lease("w", "registry", now=129.0) == []
    [again] = outbox.lease("w", "registry", now=130.0)
    assert again.attempts == 1
    outbox.defer(again.id, "w", 0.0, error="stopping", count_attempt=False, now=130.0)
    [third] = outbox.lease("w", "registry", now=130.0)
    assert third.attempts == 1
    row = outbox.store.conn.execute("SELECT last_status, last_error FROM outbox_jobs WHERE id=?", (job.id,)).fetchone()
    assert row == (None, "stopping")


def test_transaction_is_all_or_nothing(outbox: Outbox) -> None:
    with pytest.raises(RuntimeError), outbox.transaction():
        outbox.enqueue("subject", "P1", "registry", {})
        outbox.enqueue("stow", "S#1", "registry", {}, files=["a"], refs=["1"])
        raise RuntimeError("crash half-way")
    assert outbox_counts(outbox.store)["outbox_pending"] == 0
    assert outbox.store.conn.execute("SELECT COUNT(*) FROM outbox_items").fetchone()[0] == 0


def test_unique_constraint_guards_the_table_itself(outbox: Outbox) -> None:
    outbox.enqueue("subject", "P1", "registry", {})
    with pytest.raises(sqlite3.IntegrityError):
        with outbox.store.write() as conn:
            conn.execute("INSERT INTO outbox_jobs (kind, key, destination, created_at, updated_at, next_attempt_at) "
                         "VALUES ('subject', 'P1', 'registry', 0, 0, 0)")


def test_counts_report_age_of_oldest_pending(outbox: Outbox) -> None:
    assert outbox_counts(outbox.store, now=50.0)["oldest_pending_age_s"] == 0.0
    outbox.enqueue("event", "E1", "registry", {}, now=100.0)
    outbox.enqueue("event", "E2", "registry", {}, now=160.0)
    counts = outbox_counts(outbox.store, now=400.0)
    assert counts["oldest_pending_age_s"] == 300.0 and counts["outbox_pending"] == 2
    assert counts["outbox_by_kind"]["event"]["pending"] == 2


def test_backoff_grows_with_jitter_within_bounds() -> None:
    rng = random.Random(7)
    delays = [[backoff_delay(n, rng=rng) for _ in range(200)] for n in range(1, 16)]
    for series in delays:
        assert all(5.0 <= d <= 1800.0 for d in series)
    assert max(delays[0]) <= 5.0 + 1e-9  # the first step is the minimum
    assert min(delays[4]) >= 40.0 and max(delays[4]) <= 80.0  # step 80 s: between half and all of it
    assert len({round(d, 6) for d in delays[4]}) > 100  # jittered, not lock-step
    assert min(delays[14]) >= 900.0 and max(delays[14]) <= 1800.0  # capped at 30 min
    assert backoff_delay(3, minimum=0.2, maximum=2.0, rng=rng) <= 2.0


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_prune_forgets_old_finished_jobs_only(outbox: Outbox) -> None:
    outbox.enqueue("stow", "S#1", "registry", {}, files=["a", "b"], refs=["1", "2"], now=0.0)
    outbox.enqueue("manifest", "S", "registry", {}, after=[("stow", "S#1")], now=0.0)
    [stow] = outbox.lease("w", "registry", now=1.0)
    assert outbox.complete(stow.id, "w", 200, now=10.0, acked=[i.id for i in stow.items])
    assert outbox_counts(outbox.store)["instances_pushed"] == 2  # acknowledged with the job, one transaction
    assert outbox.prune(done_before=1000.0) == 0  # local copies not removed yet
    outbox.mark_removed([i.id for i in stow.items])
    assert outbox.prune(done_before=1000.0) == 0  # the manifest still waits for it
    [manifest] = outbox.lease("w", "registry", now=20.0)
    outbox.complete(manifest.id, "w", 200, now=500.0)
    assert outbox.prune(done_before=100.0) == 1  # the stow job
    assert outbox.prune(done_before=1000.0) == 0  # a manifest is kept: the record reconciliation compares
    counts = outbox_counts(outbox.store)
    assert counts["pushed"] == 1 and outbox.store.conn.execute("SELECT COUNT(*) FROM outbox_items").fetchone()[0] == 0
