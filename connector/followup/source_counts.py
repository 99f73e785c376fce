"""Per-source follow-up counters (``file``, ``hl7``, ``fhir``): received, matched, unmatched dropped,
sent, errors.

Why counts and nothing else: the dashboard and ``status`` show IT and coordinators whether each feed
works (an ADT feed that receives thousands of messages and matches none has a wrong issuer map),
and a count is all that may be kept of patients the registry does not know.
"""

from __future__ import annotations

import sqlite3
import time

#: The counters kept per source.
COUNTERS = ("received", "matched", "unmatched_dropped", "sent", "errors")


def add_counts(conn: sqlite3.Connection, source: str, **deltas: int) -> None:
    """Add to the per-source counters (call inside a write transaction, or in autocommit)."""
    now = time.time()
    for counter, delta in deltas.items():
        if counter not in COUNTERS:
            raise ValueError(f"unknown counter {counter}")
        if delta:
            conn.execute(
                "INSERT INTO followup_source_counts (source, counter, value, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (source, counter) DO UPDATE SET value = value + excluded.value, "
                "updated_at = excluded.updated_at",
                (source, counter, int(delta), now),
            )


def read_counts(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """source -> counter -> value (every counter present, zero when never bumped)."""
    out: dict[str, dict[str, int]] = {}
    try:
        rows = conn.execute("SELECT source, counter, value FROM followup_source_counts").fetchall()
    except sqlite3.OperationalError:  # a database from before the feeds' schema step
        return out
    for source, counter, value in rows:
        out.setdefault(source, dict.fromkeys(COUNTERS, 0))[counter] = int(value)
    return out
