"""Failures of a study's optional stages (CAC, its SR/SEG), kept apart from the study's state.

Why a table of its own: the images are the study's delivery; an optional analysis that fails must
not hold them back. The study goes on to the registry as usual, and this table says "delivered, CAC
failed: reason" to ``status``, the study page and ``/metrics``, and schedules the stage again with
a doubling backoff up to a limit. A retry re-processes the whole study (de-identification and
queuing are idempotent: the registry receives only what it lacks), so no second code path exists
for "just the analysis".

    stage_failures  one row per (study, stage): the last failure (exception type and a one-line
                    reason with identifiers scrubbed), attempts so far, when to try again, and the
                    version of the stage that failed (the model's SHA-256), so a site that installs
                    a fixed model gets every failed study retried at the next start.

A row is removed when the stage succeeds. ``next_attempt_at`` NULL = given up (attempts reached
the limit); an operator can still retry it (``site-connector study KEY --retry``) or fix the
model and restart.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from connector.store.state import StateStore

# Study states from which a failed optional stage may be run again (the study is not in hand).
RETRYABLE_STATES = ("queued", "pushed", "verified")


def create_schema(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS stage_failures (
            study_key TEXT NOT NULL,
            stage TEXT NOT NULL,
            error TEXT NOT NULL,
            reason TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 1,
            first_failed_at REAL NOT NULL,
            last_failed_at REAL NOT NULL,
            next_attempt_at REAL,
            version TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (study_key, stage)
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS stage_failures_due ON stage_failures (next_attempt_at)")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed optional stage is tried again: first after ``first_seconds``, then
    doubling, at most ``max_attempts`` runs in all (the first one included)."""

    max_attempts: int = 5
    first_seconds: float = 600.0
    max_seconds: float = 6 * 3600.0

    def delay(self, attempts: int) -> float | None:
        """Seconds until the next try after ``attempts`` failed runs; None = give up."""
        if attempts >= self.max_attempts:
            return None
        return min(self.max_seconds, self.first_seconds * 2 ** max(0, attempts - 1))


def record_failure(conn: sqlite3.Connection, key: str, stage: str, error: str, reason: str, version: str,
                   policy: RetryPolicy, now: float | None = None) -> int:
    """Count one more failed run of ``stage`` on ``key``; returns the attempts so far."""
    now = time.time() if now is None else now
    row = conn.execute("SELECT attempts, version FROM stage_failures WHERE study_key=? AND stage=?",
                       (key, stage)).fetchone()
    attempts = 1 if row is None or row[1] != version else int(row[0]) + 1  # a new model starts afresh
    delay = policy.delay(attempts)
    conn.execute(
        """INSERT INTO stage_failures (study_key, stage, error, reason, attempts, first_failed_at, last_failed_at,
                                       next_attempt_at, version)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (study_key, stage) DO UPDATE SET error=excluded.error, reason=excluded.reason,
               attempts=excluded.attempts, last_failed_at=excluded.last_failed_at,
               next_attempt_at=excluded.next_attempt_at, version=excluded.version""",
        (key, stage, error, reason, attempts, now, now, None if delay is None else now + delay, version))
    return attempts


def clear_failure(conn: sqlite3.Connection, key: str, stage: str) -> bool:
    """The stage succeeded on ``key``: forget its failure. True when there was one."""
    return conn.execute("DELETE FROM stage_failures WHERE study_key=? AND stage=?", (key, stage)).rowcount > 0


def failures_of(conn: sqlite3.Connection, key: str) -> list[dict[str, Any]]:
    """A study's failed optional stages (no identifiers: types, scrubbed reasons, times)."""
    cur = conn.execute("SELECT stage, error, reason, attempts, first_failed_at, last_failed_at, next_attempt_at "
                       "FROM stage_failures WHERE study_key=? ORDER BY stage", (key,))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur]


def failure_counts(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Per stage: studies with a failure still to be retried (``retrying``) and given up (``given_up``)."""
    out: dict[str, dict[str, int]] = {}
    for stage, retrying, given_up in conn.execute(
            "SELECT stage, SUM(next_attempt_at IS NOT NULL), SUM(next_attempt_at IS NULL) FROM stage_failures "
            "GROUP BY stage"):
        out[stage] = {"retrying": int(retrying or 0), "given_up": int(given_up or 0)}
    return out


def recent_failures(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The latest failures over all studies, newest first, for ``status``."""
    cur = conn.execute("SELECT f.study_key AS study, f.stage, f.error, f.reason, f.attempts, f.next_attempt_at, "
                       "s.state FROM stage_failures f LEFT JOIN studies s ON s.study_key = f.study_key "
                       "ORDER BY f.last_failed_at DESC LIMIT ?", (int(limit),))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur]


def reschedule_other_versions(conn: sqlite3.Connection, stage: str, version: str, now: float | None = None) -> int:
    """A new version of ``stage`` is installed (a fixed model): every study it failed on under another
    version is due again now, with its attempts counted afresh."""
    now = time.time() if now is None else now
    return conn.execute("UPDATE stage_failures SET next_attempt_at=?, attempts=0 WHERE stage=? AND version!=?",
                        (now, stage, version)).rowcount


def retry_now(conn: sqlite3.Connection, key: str, now: float | None = None) -> int:
    """An operator asked for the study's failed stages to be run again now (even after giving up)."""
    now = time.time() if now is None else now
    return conn.execute("UPDATE stage_failures SET next_attempt_at=?, attempts=0 "
                        "WHERE study_key=?", (now, key)).rowcount


def take_due(store: StateStore, now: float | None = None, limit: int = 50) -> list[str]:
    """Hand studies whose failed stage is due back to the worker (state ``stable``); returns their keys.

    Only studies at rest are taken (queued, pushed or verified): one being received or processed is
    handled by that run, and a study handed back is no longer at rest, so it is not taken twice.
    """
    now = time.time() if now is None else now
    placeholders = ",".join("?" * len(RETRYABLE_STATES))
    with store.writing() as conn:
        keys = [r[0] for r in conn.execute(
            f"""SELECT DISTINCT f.study_key FROM stage_failures f JOIN studies s ON s.study_key = f.study_key
                WHERE f.next_attempt_at IS NOT NULL AND f.next_attempt_at <= ? AND s.state IN ({placeholders})
                ORDER BY f.next_attempt_at LIMIT ?""", (now, *RETRYABLE_STATES, int(limit)))]
        store.hand_back(keys, RETRYABLE_STATES, now)
    return keys
