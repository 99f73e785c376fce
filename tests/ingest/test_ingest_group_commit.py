"""Group commit of received instance rows: every row committed once, in shared transactions, and a
row that cannot be committed fails alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from connector.store.group_commit import GroupCommitter
from connector.store.state import InstanceRecord
from connector.site_db import open_state

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _record(i: int, study: str = "1.2.3") -> InstanceRecord:
    return InstanceRecord(sop_instance_uid=f"1.2.3.4.{i}", sop_class_uid=CT, study_uid=study, series_uid="1.2.3.5",
                          modality="CT", transfer_syntax=EXPLICIT_LE, path=f"incoming/aa/{i}.dcm", sha256=f"{i:064x}",
                          size=100, source="scp", calling_aet="PACS")


def test_group_commit_from_many_threads_commits_every_row_once_in_fewer_transactions(tmp_path: Path) -> None:
    store = open_state(tmp_path / "state.db")
    transactions = []
    original = store.record_instances
    store.record_instances = lambda recs, now=None: (transactions.append(len(recs)), original(recs, now))[1]
    committer = GroupCommitter(store)
    outcomes = []
    barrier = threading.Barrier(16)

    def send(base: int) -> None:
        barrier.wait()
        for k in range(25):
            outcomes.append(committer.record(_record(base * 100 + k)).action)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert committer.record(_record(0)).action == "duplicate"  # same bytes again: a no-op
    committer.close()
    assert outcomes.count("stored") == 400
    count, studies = store.conn.execute("SELECT COUNT(*), COUNT(DISTINCT study_key) FROM instances").fetchone()
    assert (count, studies) == (400, 1)
    assert store.conn.execute("SELECT instance_count FROM studies").fetchone()[0] == 400
    assert sum(transactions) == 401 and len(transactions) < 401, "concurrent rows must share transactions"
    store.close()


def test_group_commit_failure_fails_only_the_bad_row(tmp_path: Path) -> None:
    store = open_state(tmp_path / "state.db")
    committer = GroupCommitter(store)
    gate = threading.Event()
    original = store.record_instances

    def slow_first(recs, now=None):  # type: ignore[no-untyped-def]
        gate.wait(5)  # hold the first commit so the others queue up behind it
        return original(recs, now)

    store.record_instances = slow_first
    bad = _record(99)
    object.__setattr__(bad, "size", None)  # NOT NULL in the schema: this row cannot be committed
    results: dict[int, object] = {}

    def send(i: int, rec: object) -> None:
        try:
            results[i] = committer.record(rec).action  # type: ignore[arg-type]
        except Exception as exc:
            results[i] = type(exc).__name__

    threads = [threading.Thread(target=send, args=(i, bad if i == 3 else _record(i))) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    committer.close()
    assert results.pop(3) == "IntegrityError"
    assert set(results.values()) == {"stored"}
    assert store.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 5
    store.close()


def _commit_from_process(db: str, base: int) -> None:
    store = open_state(Path(db))
    committer = GroupCommitter(store)
    threads = [threading.Thread(target=lambda t=t: [committer.record(_record(base + t * 1000 + k))
                                                    for k in range(100)]) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    committer.close()
    store.close()


def test_two_receiver_processes_commit_concurrently_without_losing_a_row(tmp_path: Path) -> None:
    import multiprocessing

    db = tmp_path / "state.db"
    open_state(db).close()  # schema in place before the race
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_commit_from_process, args=(str(db), base)) for base in (0, 100_000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = open_state(db)
    assert store.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 800
    assert store.conn.execute("SELECT instance_count FROM studies").fetchone()[0] == 800
    store.close()
