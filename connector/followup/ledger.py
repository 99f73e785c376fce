"""Reading and writing the ``followup_events`` ledger (see :mod:`connector.followup.schema`)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from connector.followup.events import EventContent

_CHUNK = 500  # ids per SELECT ... IN (...): well below SQLite's variable limit


@dataclass(frozen=True)
class LedgerEntry:
    event_id: str
    version: int
    content: EventContent


def read_entries(conn: sqlite3.Connection, event_ids: Iterable[str]) -> dict[str, LedgerEntry]:
    """The last queued version of each of ``event_ids`` that has one."""
    ids = list(dict.fromkeys(event_ids))
    out: dict[str, LedgerEntry] = {}
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        rows = conn.execute(
            f"SELECT event_id, version, payload FROM followup_events WHERE event_id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for event_id, version, payload in rows:
            out[event_id] = LedgerEntry(event_id, int(version), EventContent.from_json(json.loads(payload)))
    return out


def record(conn: sqlite3.Connection, event: dict[str, Any], now: float | None = None) -> None:
    """Remember that ``event`` (with its version) was queued. Call inside the enqueueing transaction."""
    now = time.time() if now is None else now
    conn.execute(
        "INSERT INTO followup_events (event_id, pseudonym, event, version, retracted, payload, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET version=excluded.version, "
        "retracted=excluded.retracted, payload=excluded.payload, updated_at=excluded.updated_at "
        "WHERE excluded.version > followup_events.version",
        (event["event_id"], event["pseudonym"], event["event"], int(event["version"]), int(bool(event["retracted"])),
         json.dumps(event, sort_keys=True), now, now),
    )


def ledger_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Events known and how many are withdrawn, for ``status``."""
    total, retracted = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(retracted), 0) FROM followup_events"
    ).fetchone()
    return {"events": int(total), "retracted": int(retracted)}
