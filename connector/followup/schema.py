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


def create_feed_schema(db: sqlite_utils.Database) -> None:
    """Tables of the machine feeds (HL7 v2 ADT, FHIR), a later step than the ledger.

        followup_source_counts   per source (file, hl7, fhir): received, matched, unmatched dropped,
                                 sent, errors: counts only, for the dashboard and ``status``
        followup_merges          A40 merges of a linked patient: a keyed hash of the surviving
                                 identifier -> the pseudonym, so a later death on the surviving MRN
                                 is matched. The hash is an HMAC under a key derived from the site's
                                 UID secret: it holds no MRN and cannot be reversed by guessing MRNs
                                 without the key.
    """
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS followup_source_counts (
            source TEXT NOT NULL,
            counter TEXT NOT NULL,
            value INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL,
            PRIMARY KEY (source, counter)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS followup_merges (
            surviving TEXT PRIMARY KEY,
            pseudonym TEXT NOT NULL,
            created_at REAL NOT NULL
        )
        """
    )
