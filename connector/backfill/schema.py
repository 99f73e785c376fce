"""Backfill tables in the state database (migration step listed in ``connector.site_db.SCHEMA_STEPS``).

    backfill_jobs     one row per ``backfill add`` (or per night in daily mode): its filters and state
    backfill_studies  the worklist: one row per (job, study) found by the C-FIND

Job states: ``active`` (its queued studies are retrieved), ``paused``, ``cancelled`` (final; its
queued studies become ``cancelled``), ``done`` (nothing left queued or in flight).
Study states: ``queued`` (maybe until ``next_attempt_at``), ``retrieving`` (held by the process in
``lease_owner``; handed back when that process is gone), ``retrieved``, ``present`` (already on
the spool before the backfill asked, or queued in another job: not retrieved again), ``failed``
(given up after ``[backfill] max_attempts``, with the reason) and ``cancelled``.

Only the Study Instance UID is kept per study (as in ``studies``), never the accession number, the
description or any patient attribute; filters keep the operator's dates, modalities and regex, of
an accession list only its length, and under ``"query"`` the record of the C-FINDs that built the
job (mode, number of queries, the date/time ranges split because the PACS cut them short, and why).
"""

from __future__ import annotations

import sqlite_utils

JOB_STATES = ("active", "paused", "cancelled", "done")
QUEUED, RETRIEVING, RETRIEVED, PRESENT, FAILED, CANCELLED = (
    "queued", "retrieving", "retrieved", "present", "failed", "cancelled")
STUDY_STATES = (QUEUED, RETRIEVING, RETRIEVED, PRESENT, FAILED, CANCELLED)


def create_schema(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS backfill_jobs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            label TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            filters TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS backfill_jobs_kind ON backfill_jobs (kind, label)")
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS backfill_studies (
            job_id INTEGER NOT NULL REFERENCES backfill_jobs (id) ON DELETE CASCADE,
            study_key TEXT NOT NULL,
            study_uid TEXT NOT NULL,
            expected_instances INTEGER,
            modalities TEXT NOT NULL DEFAULT '',
            sop_classes TEXT NOT NULL DEFAULT '',
            position INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            reason TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            lease_owner TEXT,
            retrieved_instances INTEGER NOT NULL DEFAULT 0,
            retrieved_bytes INTEGER NOT NULL DEFAULT 0,
            seconds REAL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (job_id, study_key)
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS backfill_studies_ready ON backfill_studies (state, next_attempt_at)")
    db.execute("CREATE INDEX IF NOT EXISTS backfill_studies_key ON backfill_studies (study_key)")
