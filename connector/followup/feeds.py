"""Deaths from machine feeds (HL7 v2 ADT, FHIR) into the one follow-up path.

Why through the importer and not beside it: the coordinators' importer already owns matching through
the blind index, the date shift, the keyed ``event_id``, the ledger's versions, the PHI check and
queueing in one transaction. A feed's death is turned into the same :class:`~connector.followup.reading.Row`
a CSV line becomes, so the same death from a CSV file and from the ADT feed has the same
``event_id`` and content, and the registry sees one event.

Also here: per-source counters (received, matched, unmatched dropped, sent, errors) for the dashboard
and ``status``, and the record of A40 merges (a keyed hash of the surviving identifier -> pseudonym).
Nothing in this module stores or logs an identifier.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from connector.followup.importer import FollowupImporter, FollowupLinkage
from connector.followup.outcomes import ImportSummary
from connector.followup.reading import Row
from connector.followup.source_counts import COUNTERS, add_counts, read_counts

if TYPE_CHECKING:
    from connector.config import Config
    from connector.linkage.store import LinkedSubject
    from connector.outbox import Outbox
    from connector.store.state import StateStore

__all__ = ["COUNTERS", "FeedDeath", "add_counts", "import_deaths", "merge_key", "read_counts", "record_merge",
           "resolve"]
_MERGE_LABEL = b"site-connector/followup/merge/v1"


@dataclass(frozen=True)
class FeedDeath:
    """One death (or its withdrawal) as a feed states it, identifiers still real (memory only)."""

    patient_id: str
    issuer: str
    event_date: date | None  # None only for a withdrawal
    retract: bool = False


def merge_key(uid_secret: bytes, patient_id: str, issuer: str) -> str:
    """Keyed, one-way name of an identifier for the merge record (normalised as the blind index is:
    case and surrounding blanks do not matter)."""
    key = hmac.new(uid_secret, _MERGE_LABEL, hashlib.sha256).digest()
    pid, iss = patient_id.strip().upper(), issuer.strip().upper()
    return hmac.digest(key, f"{len(pid)}:{pid}|{len(iss)}:{iss}".encode(), "sha256").hex()


def record_merge(conn: sqlite3.Connection, key: str, pseudonym: str) -> None:
    conn.execute("INSERT INTO followup_merges (surviving, pseudonym, created_at) VALUES (?, ?, ?) "
                 "ON CONFLICT (surviving) DO UPDATE SET pseudonym = excluded.pseudonym", (key, pseudonym, time.time()))


def merged_pseudonym(conn: sqlite3.Connection, key: str) -> str | None:
    try:
        row = conn.execute("SELECT pseudonym FROM followup_merges WHERE surviving = ?", (key,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None


class _MergedLinkage:
    """The linkage table as the importer sees it, plus recorded merges: an identifier that an A40
    made the survivor of a linked patient resolves to that patient."""

    def __init__(self, provider: Any, conn: sqlite3.Connection, aliases: dict[tuple[str, str], LinkedSubject]) -> None:
        self._provider = provider
        self._aliases = aliases

    def lookup_patient(self, patient_id: str, issuer: str = "", *, audit: bool = True) -> LinkedSubject | None:
        found = self._aliases.get((patient_id, issuer))
        return found if found is not None else self._provider.lookup_patient(patient_id, issuer, audit=audit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)


def resolve(provider: FollowupLinkage, conn: sqlite3.Connection | None, candidates: Iterable[tuple[str, str]]
            ) -> tuple[tuple[str, str], LinkedSubject] | None:
    """The first (patient ID, issuer) among ``candidates`` that names a linked patient, directly or
    through a recorded merge; None when none does (the caller drops the message)."""
    secret: bytes | None = None
    for patient_id, issuer in candidates:
        if not patient_id:
            continue
        found = provider.lookup_patient(patient_id, issuer, audit=False)
        if found is not None:
            return (patient_id, issuer), found
        if conn is not None:
            secret = secret or provider.uid_secret()
            pseudonym = merged_pseudonym(conn, merge_key(secret, patient_id, issuer))
            if pseudonym is not None:
                subject = _subject_of(provider, pseudonym)
                if subject is not None:
                    return (patient_id, issuer), subject
    return None


def _subject_of(provider: Any, pseudonym: str) -> LinkedSubject | None:
    store = getattr(provider, "store", None)
    finder = getattr(store, "find_linked_by_pseudonym", None)
    return finder(pseudonym) if finder is not None else None


def import_deaths(config: Config, provider: FollowupLinkage, store: StateStore, outbox: Outbox, source: str,
                  deaths: list[FeedDeath], *, received: int | None = None, today: date | None = None,
                  dry_run: bool = False) -> ImportSummary:
    """Queue ``deaths`` from ``source`` through the follow-up importer and count them.

    Each death's identifier must already have been resolved by :func:`resolve` when it came through a
    merge; unknown patients are rejected by the importer as ``unknown_patient`` and only counted.
    """
    aliases: dict[tuple[str, str], LinkedSubject] = {}
    rows = []
    source_code = getattr(getattr(config, source), "source", "unspecified")
    for number, d in enumerate(deaths, start=1):
        found = resolve(provider, store.conn, [(d.patient_id, d.issuer)])
        if found is not None:
            aliases[found[0]] = found[1]
        rows.append(Row(number, {
            "patient_id": d.patient_id, "issuer": d.issuer, "event": "death", "event_date": d.event_date,
            "cause": None, "source": source_code, "retract": "yes" if d.retract else "", "event_id": None,
        }))
    importer = FollowupImporter(config, _MergedLinkage(provider, store.conn, aliases), store, outbox,
                                today=today, feed=source)
    summary = importer.import_rows(rows, ImportSummary(file=source, dry_run=dry_run), dry_run=dry_run)
    if not dry_run:
        unknown = summary.rejected.get("unknown_patient", 0)
        with store.write() as conn:
            add_counts(conn, source, received=len(deaths) if received is None else received,
                       matched=summary.matched, unmatched_dropped=unknown, sent=summary.queued,
                       errors=summary.rejected_total - unknown - summary.rejected.get("nothing_to_retract", 0))
    return summary
