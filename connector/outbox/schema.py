"""Outbox tables in the state database (migration step listed in ``connector.site_db.SCHEMA_STEPS``).

    outbox_jobs   one row per (kind, key, destination): what to send, its state, lease and retry timer
    outbox_items  the files of a job (STOW-RS instances), each acknowledged on its own, so a partial
                  failure re-sends only what failed and acknowledged copies can be removed
    outbox_deps   "send this job only after those are done" (a study's manifest after its instances)

Job states: ``pending`` (waiting, maybe until ``next_attempt_at``), ``leased`` (a worker holds it
until ``lease_until``), ``done`` and ``failed`` (given up: quarantined with the response).
Item states: ``pending``, ``done``, ``failed``.
"""

from __future__ import annotations

import sqlite_utils

PENDING, LEASED, DONE, FAILED = "pending", "leased", "done", "failed"
JOB_STATES = (PENDING, LEASED, DONE, FAILED)


def create_schema(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS outbox_jobs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            destination TEXT NOT NULL,
            grp TEXT NOT NULL DEFAULT '',
            payload TEXT,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            lease_owner TEXT,
            lease_until REAL,
            done_at REAL,
            last_status INTEGER,
            last_error TEXT,
            quarantine_id TEXT,
            UNIQUE (kind, key, destination)
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS outbox_jobs_ready ON outbox_jobs (destination, state, next_attempt_at)")
    db.execute("CREATE INDEX IF NOT EXISTS outbox_jobs_grp ON outbox_jobs (destination, grp)")
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS outbox_items (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES outbox_jobs (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            path TEXT NOT NULL,
            ref TEXT NOT NULL DEFAULT '',
            size INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL DEFAULT 'pending',
            failure TEXT,
            acked_at REAL,
            removed_at REAL,
            UNIQUE (job_id, position)
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS outbox_items_ref ON outbox_items (ref)")
    db.execute("CREATE INDEX IF NOT EXISTS outbox_items_acked ON outbox_items (state, removed_at, acked_at)")
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS outbox_deps (
            job_id INTEGER NOT NULL REFERENCES outbox_jobs (id) ON DELETE CASCADE,
            needs_id INTEGER NOT NULL REFERENCES outbox_jobs (id) ON DELETE CASCADE,
            PRIMARY KEY (job_id, needs_id)
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS outbox_deps_needs ON outbox_deps (needs_id)")
