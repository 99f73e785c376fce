"""The record of reconciliations with the registry: when, how long, and counts (no identifiers).

    reconcile_runs  one row per run: time, seconds, and the report's summary as JSON; the last
                    ``keep`` runs are kept (``status``, the dashboard and ``/metrics`` read the latest)
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlite_utils

from connector.store.state import StateStore


def create_schema(db: sqlite_utils.Database) -> None:
    """Schema step 7 (see :data:`connector.site_db.SCHEMA_STEPS`)."""
    db.execute("CREATE TABLE IF NOT EXISTS reconcile_runs (id INTEGER PRIMARY KEY, at REAL NOT NULL, "
               "seconds REAL, summary TEXT NOT NULL)")


def record_reconciliation(store: StateStore, summary: dict[str, Any], keep: int = 100) -> None:
    """Remember a reconciliation's counts (the last ``keep`` runs are kept)."""
    with store.write() as conn:
        conn.execute("INSERT INTO reconcile_runs (at, seconds, summary) VALUES (?, ?, ?)",
                     (time.time(), summary.get("seconds"), json.dumps(summary, sort_keys=True)))
        conn.execute("DELETE FROM reconcile_runs WHERE id <= (SELECT MAX(id) FROM reconcile_runs) - ?", (keep,))


def last_reconciliation(store: StateStore) -> dict[str, Any] | None:
    """The latest reconciliation: ``{"at": unix time, **its counts}``, or None if none ran yet."""
    row = store.conn.execute("SELECT at, summary FROM reconcile_runs ORDER BY id DESC LIMIT 1").fetchone()
    return {"at": row[0], **json.loads(row[1])} if row else None
