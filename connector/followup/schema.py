"""The follow-up ledger in the state database (a step in ``connector.site_db.SCHEMA_STEPS``).

    followup_events   one row per event (``event_id``): the version and JSON last queued for it

It is what makes a re-import send nothing new, and a corrected date or a retraction go out as the
next version of the same event. It holds only what the registry receives anyway (pseudonym,
shifted date, interval, source): no patient identifier and no real date is stored here.
"""

from __future__ import annotations

import sqlite_utils


def create_schema(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS followup_events (
            event_id TEXT PRIMARY KEY,
            pseudonym TEXT NOT NULL,
            event TEXT NOT NULL,
            version INTEGER NOT NULL,
            retracted INTEGER NOT NULL DEFAULT 0,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS followup_events_pseudonym ON followup_events (pseudonym)")
