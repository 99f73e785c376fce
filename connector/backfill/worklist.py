"""The backfill worklist in the state database: jobs, their studies, leases and outcomes.

Why in the state DB: a backfill of ten years runs for weeks, across restarts and crashes. Each
study's state is committed before and after its retrieval, so a killed daemon resumes where it
stopped: a study held by a process that is gone goes back to ``queued``, and one whose instances
all arrived before the crash is counted as retrieved without asking the PACS again.

Owner of ``backfill_jobs`` and ``backfill_studies``; reads ``instances`` and ``studies`` (ingest's)
to tell which studies are already here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from connector.backfill.schema import (
    CANCELLED,
    FAILED,
    PRESENT,
    QUEUED,
    RETRIEVED,
    RETRIEVING,
    STUDY_STATES,
)
from connector.store.state import StateStore, study_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundStudy:
    """One study-level C-FIND match: what the worklist keeps (no patient attribute)."""

    study_uid: str
    expected_instances: int | None  # NumberOfStudyRelatedInstances, when the PACS gives it
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()  # SOPClassesInStudy, when the PACS gives it (C-GET contexts)

    @property
    def key(self) -> str:
        return study_key(self.study_uid)


@dataclass(frozen=True)
class LeasedStudy:
    job_id: int
    study_key: str
    study_uid: str
    expected_instances: int | None
    sop_classes: tuple[str, ...]
    attempts: int


class JobNotFound(Exception):
    pass


def process_owner(pid: int | None = None) -> str:
    """``pid:start-time``: identifies a process even after its pid is reused."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot
    except (OSError, IndexError):
        return "?"


def owner_alive(owner: str) -> bool:
    pid_text, _, started = owner.partition(":")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return started in ("", "?") or _start_time(pid) == started


class Worklist:
    """Backfill jobs and studies over a :class:`StateStore` (thread-safe, as the store is)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # -- jobs ------------------------------------------------------------------------------------

    def create_job(self, studies: Iterable[FoundStudy], filters: dict[str, Any], *, kind: str = "manual",
                   label: str = "", query: dict[str, Any] | None = None,
                   now: float | None = None) -> dict[str, int]:
        """A new active job holding ``studies``; returns ``{"job": id, "queued": n, "present": n}``.

        ``query``: the record of the C-FINDs that found them (counts and split decisions, no
        identifier), kept with the filters under ``"query"`` and logged with the job's number.

        A study already on the spool (at least as many instances as the PACS reports, or any when it
        reports no count) or already queued, in flight or retrieved in another job is recorded as
        ``present`` and never retrieved again.
        """
        now = time.time() if now is None else now
        counts = {QUEUED: 0, PRESENT: 0}
        kept = dict(filters, query=query) if query is not None else filters
        with self.store.write() as conn:
            job = conn.execute(
                "INSERT INTO backfill_jobs (kind, label, state, filters, created_at, updated_at) "
                "VALUES (?, ?, 'active', ?, ?, ?)", (kind, label, json.dumps(kept, sort_keys=True), now, now),
            ).lastrowid
            assert job is not None
            for position, s in enumerate(studies):
                state, reason = QUEUED, None
                have = _held(conn, s.key)
                other = conn.execute(
                    "SELECT job_id FROM backfill_studies WHERE study_key=? AND state IN (?, ?, ?) LIMIT 1",
                    (s.key, QUEUED, RETRIEVING, RETRIEVED)).fetchone()
                if have is not None and (s.expected_instances is None or have >= s.expected_instances):
                    state, reason = PRESENT, "already received"
                elif other is not None:
                    state, reason = PRESENT, f"in job {other[0]}"
                conn.execute(
                    "INSERT OR IGNORE INTO backfill_studies (job_id, study_key, study_uid, expected_instances, "
                    "modalities, sop_classes, position, state, reason, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (job, s.key, s.study_uid, s.expected_instances, "\\".join(s.modalities),
                     "\\".join(s.sop_classes), position, state, reason, now))
                counts[state] += 1
            if counts[QUEUED] == 0:
                conn.execute("UPDATE backfill_jobs SET state='done', finished_at=? WHERE id=?", (now, job))
        if query is not None:
            log.info("backfill job created", extra={
                "event": "backfill_job", "job": int(job), "kind": kind, "queued": counts[QUEUED],
                "present": counts[PRESENT], **{k: v for k, v in query.items() if k != "split_decisions"}})
            for decision in query.get("split_decisions", []):
                log.info("backfill job query split", extra={"event": "backfill_job_split", "job": int(job),
                                                             **decision})
        return {"job": int(job), "queued": counts[QUEUED], "present": counts[PRESENT]}

    def job(self, job_id: int) -> dict[str, Any]:
        cur = self.store.conn.execute("SELECT * FROM backfill_jobs WHERE id=?", (job_id,))
        row = cur.fetchone()
        if row is None:
            raise JobNotFound(job_id)
        out = dict(zip([d[0] for d in cur.description], row))
        out["filters"] = json.loads(out["filters"])
        return out

    def jobs(self) -> list[dict[str, Any]]:
        ids = [r[0] for r in self.store.conn.execute("SELECT id FROM backfill_jobs ORDER BY id")]
        return [self.job(i) for i in ids]

    def daily_job(self, label: str) -> int | None:
        row = self.store.conn.execute("SELECT id FROM backfill_jobs WHERE kind='daily' AND label=?",
                                      (label,)).fetchone()
        return int(row[0]) if row else None

    def set_job_state(self, job_id: int, action: str) -> str:
        """``pause``, ``resume`` or ``cancel``; returns the new state. Raises JobNotFound or ValueError."""
        job = self.job(job_id)
        now = time.time()
        if job["state"] in ("cancelled", "done") and action != "cancel":
            raise ValueError(f"job {job_id} is {job['state']}")
        new = {"pause": "paused", "resume": "active", "cancel": "cancelled"}[action]
        with self.store.write() as conn:
            if action == "cancel":
                if job["state"] == "done":
                    raise ValueError(f"job {job_id} is done")
                conn.execute("UPDATE backfill_studies SET state=?, reason='cancelled by operator', updated_at=? "
                             "WHERE job_id=? AND state=?", (CANCELLED, now, job_id, QUEUED))
            conn.execute("UPDATE backfill_jobs SET state=?, updated_at=?, finished_at=? WHERE id=?",
                         (new, now, now if new == "cancelled" else None, job_id))
        return new

    def finish_jobs(self, now: float | None = None) -> list[int]:
        """Mark active jobs with nothing queued or in flight ``done``; returns their ids."""
        now = time.time() if now is None else now
        with self.store.write() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM backfill_jobs j WHERE state='active' AND NOT EXISTS (SELECT 1 FROM "
                "backfill_studies s WHERE s.job_id=j.id AND s.state IN (?, ?))", (QUEUED, RETRIEVING))]
            conn.executemany("UPDATE backfill_jobs SET state='done', finished_at=?, updated_at=? WHERE id=?",
                             [(now, now, i) for i in ids])
        return ids

    # -- studies ---------------------------------------------------------------------------------

    def release_orphans(self) -> int:
        """Studies held by a process that is gone (killed daemon, closed ``backfill run``) go back to queued."""
        rows = self.store.conn.execute("SELECT DISTINCT lease_owner FROM backfill_studies WHERE state=?",
                                       (RETRIEVING,)).fetchall()
        dead = [r[0] for r in rows if not r[0] or not owner_alive(r[0])]
        if not dead:
            return 0
        with self.store.write() as conn:
            return sum(conn.execute("UPDATE backfill_studies SET state=?, lease_owner=NULL, updated_at=? "
                                    "WHERE state=? AND lease_owner IS ?", (QUEUED, time.time(), RETRIEVING, o)
                                    ).rowcount for o in dead)

    def lease(self, owner: str, *, job_id: int | None = None, now: float | None = None) -> LeasedStudy | None:
        """Take the next due study of an active job (or of ``job_id``, whatever its window).

        A study whose instances are all here already is settled on the way without asking the
        PACS: ``retrieved`` if an earlier attempt of ours brought them (e.g. before a crash),
        ``present`` otherwise.
        """
        now = time.time() if now is None else now
        with self.store.write() as conn:
            while True:
                sql = ("SELECT s.job_id, s.study_key, s.study_uid, s.expected_instances, s.sop_classes, s.attempts, "
                       "s.requests FROM backfill_studies s JOIN backfill_jobs j ON j.id = s.job_id "
                       "WHERE s.state=? AND s.next_attempt_at<=? AND j.state='active'")
                args: list[Any] = [QUEUED, now]
                if job_id is not None:
                    sql += " AND s.job_id=?"
                    args.append(job_id)
                row = conn.execute(sql + " ORDER BY s.job_id, s.position LIMIT 1", args).fetchone()
                if row is None:
                    return None
                job, key, uid, expected, classes, attempts, requests = row
                have = _held(conn, key)
                if have is not None and (have >= expected if expected is not None else requests == 0):
                    size = conn.execute("SELECT COALESCE(SUM(size), 0) FROM instances WHERE study_key=?",
                                        (key,)).fetchone()[0]
                    conn.execute(
                        "UPDATE backfill_studies SET state=?, reason=?, retrieved_instances=?, retrieved_bytes=?, "
                        "updated_at=? WHERE job_id=? AND study_key=?",
                        (RETRIEVED if requests else PRESENT, None if requests else "already received",
                         have if requests else 0, size if requests else 0, now, job, key))
                    continue
                conn.execute("UPDATE backfill_studies SET state=?, lease_owner=?, requests=requests+1, updated_at=? "
                             "WHERE job_id=? AND study_key=?", (RETRIEVING, owner, now, job, key))
                return LeasedStudy(job, key, uid, expected, tuple(c for c in classes.split("\\") if c), attempts)

    def held(self, key: str) -> tuple[int, int]:
        """(instances, bytes) of a study on the spool."""
        row = self.store.conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances WHERE study_key=?",
                                      (key,)).fetchone()
        return int(row[0]), int(row[1])

    def succeed(self, study: LeasedStudy, instances: int, size: int, seconds: float) -> None:
        with self.store.write() as conn:
            conn.execute("UPDATE backfill_studies SET state=?, reason=NULL, lease_owner=NULL, retrieved_instances=?, "
                         "retrieved_bytes=?, seconds=?, updated_at=? WHERE job_id=? AND study_key=?",
                         (RETRIEVED, instances, size, seconds, time.time(), study.job_id, study.study_key))

    def fail(self, study: LeasedStudy, reason: str, *, max_attempts: int, backoff_seconds: float,
             instances: int = 0, size: int = 0) -> str:
        """Record a failed or incomplete attempt: queued again after a doubling backoff, or ``failed``
        once ``max_attempts`` were made. Returns the new state."""
        attempts = study.attempts + 1
        now = time.time()
        final = attempts >= max_attempts
        state = FAILED if final else QUEUED
        wait = 0.0 if final else backoff_seconds * (2 ** (attempts - 1))
        with self.store.write() as conn:
            conn.execute("UPDATE backfill_studies SET state=?, reason=?, attempts=?, next_attempt_at=?, "
                         "lease_owner=NULL, retrieved_instances=?, retrieved_bytes=?, updated_at=? "
                         "WHERE job_id=? AND study_key=?",
                         (state, reason, attempts, now + wait, instances, size, now, study.job_id, study.study_key))
        return state

    def give_back(self, study: LeasedStudy) -> None:
        """Return a study unfinished (stopping): it is taken again later, no attempt counted."""
        with self.store.write() as conn:
            conn.execute("UPDATE backfill_studies SET state=?, lease_owner=NULL, updated_at=? "
                         "WHERE job_id=? AND study_key=? AND state=?",
                         (QUEUED, time.time(), study.job_id, study.study_key, RETRIEVING))

    def pending(self, job_id: int | None = None) -> tuple[int, int, float | None]:
        """(studies queued or in flight, their expected instances, earliest next attempt among queued)."""
        sql = ("SELECT COUNT(*), COALESCE(SUM(expected_instances), 0), MIN(CASE WHEN s.state=? THEN next_attempt_at "
               "END) FROM backfill_studies s JOIN backfill_jobs j ON j.id=s.job_id WHERE s.state IN (?, ?)")
        args: list[Any] = [QUEUED, QUEUED, RETRIEVING]
        if job_id is not None:
            sql += " AND s.job_id=?"
            args.append(job_id)
        else:
            sql += " AND j.state='active'"
        n, inst, nxt = self.store.conn.execute(sql, args).fetchone()
        return int(n), int(inst), nxt

    def counts(self, job_id: int) -> dict[str, int]:
        out = {s: 0 for s in STUDY_STATES}
        for state, n in self.store.conn.execute("SELECT state, COUNT(*) FROM backfill_studies WHERE job_id=? "
                                                "GROUP BY state", (job_id,)):
            out[state] = n
        return out

    def studies(self, job_id: int) -> list[dict[str, Any]]:
        cur = self.store.conn.execute(
            "SELECT study_key, state, reason, attempts, requests, expected_instances, retrieved_instances, "
            "retrieved_bytes, seconds, modalities FROM backfill_studies WHERE job_id=? ORDER BY position", (job_id,))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur]


def _held(conn: Any, key: str) -> int | None:
    """Instances of a study on the spool, or None when the study was never received."""
    if conn.execute("SELECT 1 FROM studies WHERE study_key=?", (key,)).fetchone() is None:
        return None
    return int(conn.execute("SELECT COUNT(*) FROM instances WHERE study_key=?", (key,)).fetchone()[0])


__all__ = [
    "CANCELLED",
    "FAILED",
    "PRESENT",
    "QUEUED",
    "RETRIEVED",
    "RETRIEVING",
    "FoundStudy",
    "JobNotFound",
    "LeasedStudy",
    "Worklist",
    "owner_alive",
    "process_owner",
]
