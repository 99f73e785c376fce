"""Import one coordinator file: validate every row, match patients, build versioned events, queue them.

The steps, in order (nothing is queued until every row has been judged):

1. read the file (:mod:`connector.followup.reading`); a file that cannot be used fails as a whole;
2. judge each row on its own: cells, then the patient (one blind-index lookup per distinct patient,
   not audited one by one: the batch gets a single audit entry), then the dates against the index scan;
3. judge rows against each other: the same event twice is a duplicate, the same event with
   different values is a conflict (none of those rows is used: which one is right is the
   coordinator's call);
4. judge each event against the ledger: new (version 1), unchanged (nothing sent), changed or
   retracted (next version);
5. check the exact JSON for the patient's identifiers, then queue it and record it in the ledger in
   the same state-DB transaction (per chunk), so a crash can neither lose an event nor send one twice
   under different versions.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from connector.followup.events import SINGLE_EVENTS, EventContent, idempotency_key
from connector.followup.ledger import LedgerEntry, read_entries, record
from connector.followup.outcomes import (
    BLANK,
    QUEUED,
    REJECTED,
    UNCHANGED,
    ImportSummary,
    RowOutcome,
    report_path_for,
    write_report,
)
from connector.followup.phi import RowIdentifiers, find_identifiers, row_identifiers
from connector.followup.reading import FollowupFileError, Row, read_table
from connector.followup.values import (
    alias_table,
    parse_date,
    parse_event,
    parse_retract,
    parse_source,
)
from connector.linkage.errors import CorruptRowError

if TYPE_CHECKING:
    from connector.config import Config
    from connector.linkage.store import LinkedSubject
    from connector.outbox import Outbox
    from connector.store.state import StateStore

log = logging.getLogger(__name__)

_EVENT_ID_LABEL = b"site-connector/followup/event-id/v1"
AUDIT_ACTION = "followup.import"


class FollowupLinkage(Protocol):
    """What the importer needs from the linkage table (``LinkageProvider`` provides it)."""

    def lookup_patient(self, patient_id: str, issuer: str = "", *, audit: bool = True) -> LinkedSubject | None: ...

    def audit(self, action: str, **details: str | int | bool | None) -> int: ...

    def uid_secret(self) -> bytes: ...


@dataclass
class _Candidate:
    """A row that passed its own checks: which event it names and what it says."""

    row: int
    event: str
    event_id: str
    retract: bool
    content: EventContent | None  # None for a retraction: it re-sends the last version, withdrawn
    row_values: tuple[str, str, list[Any], date | None, date | None]  # for the PHI check, if it is sent

    def identifiers(self) -> RowIdentifiers:
        patient_id, issuer, extra, real, index = self.row_values
        return row_identifiers(patient_id, issuer, extra, real, [index] if index is not None else [])

    def same_as(self, other: _Candidate) -> bool:
        return self.retract == other.retract and self.content == other.content


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


@functools.lru_cache(maxsize=4096)
def _index_date(value: str) -> date | None:
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8])) if len(value) == 8 else None
    except ValueError:
        return None


class FollowupImporter:
    """Imports files for one site. Thread-compatible: use one importer per thread."""

    def __init__(self, config: Config, provider: FollowupLinkage, store: StateStore | None = None,
                 outbox: Outbox | None = None, *, today: date | None = None, chunk_size: int = 2000,
                 feed: str = "") -> None:
        self.config = config
        self.settings = config.followup
        self.provider = provider
        self.store = store
        self.outbox = outbox
        self.today = today
        self.chunk_size = chunk_size
        self.feed = feed  # "" for coordinators' files; "hl7" or "fhir" for a machine feed (audit, rules)
        self._aliases = alias_table(self.settings)
        self._id_key = hmac.new(provider.uid_secret(), _EVENT_ID_LABEL, hashlib.sha256).digest()
        self._text_fields = tuple(f for f in ("cause", "source") if f in self.settings.allowed_free_text)
        self._vocabulary: frozenset[str] | None = None  # the images' text vocabulary, loaded on first use

    # -- public ----------------------------------------------------------------------------------

    def import_file(self, path: Path, *, dry_run: bool = False, report: Path | None | bool = True) -> ImportSummary:
        """Import ``path``. ``report``: True = next to the input, a path = there, False/None = none.

        A dry run reads the ledger but writes nothing (no report, no ledger, no outbox, no audit
        entry beyond the lookups' batch entry) and returns the events it would queue.
        """
        if not dry_run and (self.store is None or self.outbox is None):
            raise ValueError("a state store and an outbox are needed to queue events (or use dry_run)")
        summary = ImportSummary(file=path.name, dry_run=dry_run)
        try:
            table = read_table(path, self.settings)
        except FollowupFileError as exc:
            summary.error, summary.error_message = exc.code, str(exc)
            log.warning("followup.import.file_failed reason=%s", exc.code)
        else:
            self._import_rows(table.rows, summary, dry_run=dry_run)
        if report and not dry_run:
            write_report(summary, report_path_for(path) if report is True else Path(report), like=path,
                         sync=self.config.storage.fsync)
        return summary

    # -- step 2: each row on its own -------------------------------------------------------------

    def _judge_rows(self, rows: list[Row], summary: ImportSummary) -> list[_Candidate]:
        today = self.today or date.today()
        cache: dict[tuple[str, str], LinkedSubject | None] = {}
        candidates: list[_Candidate] = []
        for row in rows:
            if row.blank:
                summary.blank += 1
                summary.outcomes.append(RowOutcome(row.number, BLANK))
                continue
            summary.rows += 1
            try:
                candidates.append(self._judge_row(row, today, cache, summary))
            except _Rejected as rej:
                outcome = RowOutcome(row.number, REJECTED, rej.reason, parse_event(row.text("event"), self._aliases) or "")
                summary.outcomes.append(outcome)
                summary.reject(outcome)
        return candidates

    def _judge_row(self, row: Row, today: date, cache: dict[tuple[str, str], LinkedSubject | None],
                   summary: ImportSummary) -> _Candidate:
        s = self.settings
        patient_id = row.text("patient_id")
        if not patient_id:
            raise _Rejected("missing_patient_id")
        issuer = row.text("issuer") or s.default_issuer
        key = (patient_id, issuer)
        if key not in cache:
            try:
                cache[key] = self.provider.lookup_patient(patient_id, issuer, audit=False)
            except CorruptRowError:  # one damaged linkage row must not block the whole file
                log.warning("followup.linkage_row_damaged")
                raise _Rejected("linkage_damaged") from None
        subject = cache[key]
        if subject is None:
            raise _Rejected("unknown_patient")
        summary.matched += 1

        event = parse_event(row.text("event"), self._aliases)
        if event is None:
            raise _Rejected("unknown_event_type")
        retract = parse_retract(row.text("retract"))
        if retract is None:
            raise _Rejected("invalid_retract_flag")
        real = parse_date(row.cells.get("event_date"), s.date_formats)
        event_ref = row.text("event_id") if event not in SINGLE_EVENTS else ""
        # A retraction names its event; the date is needed only where it is what tells events apart.
        needs_date = not retract or (event not in SINGLE_EVENTS and not event_ref)
        if real is None and (needs_date or row.text("event_date")):
            raise _Rejected("unparseable_date")
        shifted = (real + timedelta(days=subject.date_offset_days)).isoformat() if real is not None else ""
        index = _index_date(subject.index_date)

        content = None
        if not retract:
            assert real is not None
            if real > today:
                raise _Rejected("future_date")
            if index is None:
                raise _Rejected("no_index_date")
            if real < index:
                raise _Rejected("before_index_scan")
            source = parse_source(row.text("source"), s)
            if source is None:
                raise _Rejected("unknown_source")
            cause = None  # dropped unless the site allows it to leave
            if "cause" in s.allowed_free_text:
                cause = self._clean_text(row.text("cause"), subject.pseudonym, patient_id, issuer) or None
            if any(len(v or "") > s.max_text_length for v in (cause, source)):
                raise _Rejected("text_too_long")
            content = EventContent(subject.pseudonym, event, shifted, (real - index).days, source, False, cause)

        occurrence = "" if event in SINGLE_EVENTS else (f"ref:{event_ref.upper()}" if event_ref else f"date:{shifted}")
        return _Candidate(row.number, event, self._event_id(subject.pseudonym, event, occurrence), retract, content,
                          (patient_id, issuer, row.extra, real, index))

    def _clean_text(self, text: str, pseudonym: str, patient_id: str, issuer: str) -> str:
        """Free text through the same allow-list cleaner as the images' text: only known words and
        shapes stay, and never a word of this patient's name or IDs (from the linkage table, in
        whatever script it was written), so a name, a phone number or another person in the cause
        becomes ``***``."""
        from connector.deid.freetext import AllowListCleaner

        if self._vocabulary is None:
            from connector.deid.rule_sources import vocabulary_files
            from connector.vocabulary import load_vocabulary

            self._vocabulary = load_vocabulary(self.config.deid.extra_vocabulary, vocabulary_files(self.config))
        names = getattr(self.provider, "name_tokens", None)
        deny = set(names(pseudonym)) if names is not None else set()
        deny.update(w.upper() for w in (patient_id, issuer) if w)
        return AllowListCleaner(self._vocabulary, deny).clean(" ".join(text.split()))

    def _event_id(self, pseudonym: str, event: str, occurrence: str) -> str:
        """Opaque and keyed (the occurrence may be a real date or a chart reference): 128 bits, hex."""
        msg = f"{len(pseudonym)}:{pseudonym}|{len(event)}:{event}|{len(occurrence)}:{occurrence}"  # unambiguous
        return hmac.digest(self._id_key, msg.encode(), "sha256")[:16].hex()

    # -- step 3: rows against each other ---------------------------------------------------------

    @staticmethod
    def _judge_together(candidates: list[_Candidate], summary: ImportSummary) -> list[_Candidate]:
        groups: dict[str, list[_Candidate]] = {}
        for c in candidates:
            groups.setdefault(c.event_id, []).append(c)
        kept = []
        for group in groups.values():
            first = group[0]
            if all(first.same_as(other) for other in group[1:]):
                kept.append(first)
                rejected = [(c, "duplicate_row") for c in group[1:]]
            else:
                rejected = [(c, "conflicting_rows") for c in group]
            for c, reason in rejected:
                outcome = RowOutcome(c.row, REJECTED, reason, c.event)
                summary.outcomes.append(outcome)
                summary.reject(outcome)
        kept.sort(key=lambda c: c.row)
        return kept

    # -- steps 4 and 5: against the ledger, PHI check, queue ------------------------------------

    def _decide(self, c: _Candidate, prior: LedgerEntry | None) -> tuple[RowOutcome, dict[str, Any] | None]:
        if c.retract:
            if prior is None:
                return RowOutcome(c.row, REJECTED, "nothing_to_retract", c.event), None
            if prior.content.retracted:
                return RowOutcome(c.row, UNCHANGED, "", c.event, prior.version), None
            content = replace(prior.content, retracted=True)
        else:
            assert c.content is not None
            if prior is not None and self._same_fact(prior.content, c.content):
                return RowOutcome(c.row, UNCHANGED, "", c.event, prior.version), None
            content = c.content
        version = 1 if prior is None else prior.version + 1
        event = content.as_json(c.event_id, version)
        if find_identifiers(event, c.identifiers(), self._text_fields):
            log.warning("followup.phi_check.refused event=%s", c.event)
            return RowOutcome(c.row, REJECTED, "phi_check_failed", c.event), None
        return RowOutcome(c.row, QUEUED, "", c.event, version), event

    def _same_fact(self, prior: EventContent, new: EventContent) -> bool:
        """Whether ``new`` says nothing ``prior`` did not. Who reported an event (``source``) is
        provenance, not the fact: the same death from the death index and from the ADT feed is one
        event, not a new version. A machine feed (HL7, FHIR) has no cause, so its silence about the
        cause does not withdraw one a coordinator sent."""
        if prior == new:
            return True
        if prior.retracted or new.retracted:
            return False
        adjusted = replace(new, source=prior.source)
        if self.feed and new.cause is None:
            adjusted = replace(adjusted, cause=prior.cause)
        return adjusted == prior

    def _apply(self, outcome: RowOutcome, event: dict[str, Any] | None, summary: ImportSummary) -> None:
        summary.outcomes.append(outcome)
        if outcome.status == REJECTED:
            summary.reject(outcome)
        elif outcome.status == UNCHANGED:
            summary.unchanged += 1
        elif event is not None:
            summary.queued += 1
            summary.events.append(event)

    def _import_rows(self, rows: list[Row], summary: ImportSummary, *, dry_run: bool) -> None:
        candidates = self._judge_together(self._judge_rows(rows, summary), summary)
        self.provider.audit(AUDIT_ACTION, rows=summary.rows, matched=summary.matched,
                            unknown=summary.rejected.get("unknown_patient", 0), dry_run=dry_run,
                            channel=self.feed or "file")
        if dry_run:
            prior = read_entries(self.store.conn, (c.event_id for c in candidates)) if self.store else {}
            for c in candidates:
                self._apply(*self._decide(c, prior.get(c.event_id)), summary)
        else:
            self._queue(candidates, summary)
            if not self.feed:  # a feed counts its own messages (connector.followup.feeds)
                from connector.followup.source_counts import add_counts

                assert self.store is not None
                unknown = summary.rejected.get("unknown_patient", 0)
                with self.store.write() as conn:
                    add_counts(conn, "file", received=summary.rows, matched=summary.matched, unmatched_dropped=unknown,
                               sent=summary.queued, errors=summary.rejected_total - unknown)
        log.info("followup.import source=%s rows=%d matched=%d queued=%d unchanged=%d rejected=%d dry_run=%s",
                 self.feed or "file", summary.rows, summary.matched, summary.queued, summary.unchanged,
                 summary.rejected_total, dry_run)

    def _queue(self, candidates: list[_Candidate], summary: ImportSummary) -> None:
        from connector.push.queueing import queue_event

        assert self.store is not None and self.outbox is not None
        for start in range(0, len(candidates), self.chunk_size):
            chunk = candidates[start : start + self.chunk_size]
            decided = []
            with self.outbox.transaction():  # one write transaction on this thread's connection
                conn = self.store.conn
                prior = read_entries(conn, (c.event_id for c in chunk))
                for c in chunk:
                    outcome, event = self._decide(c, prior.get(c.event_id))
                    if event is not None:
                        queue_event(self.outbox, event, idempotency_key(event["event_id"], event["version"]))
                        record(conn, event)
                    decided.append((outcome, event))
            for outcome, event in decided:  # counted only once committed
                self._apply(outcome, event, summary)


    def import_rows(self, rows: list[Row], summary: ImportSummary, *, dry_run: bool = False) -> ImportSummary:
        """Judge and queue rows built by a machine feed (:mod:`connector.followup.feeds`): the very
        steps a coordinator's file goes through, so every source gives the same event."""
        if not dry_run and (self.store is None or self.outbox is None):
            raise ValueError("a state store and an outbox are needed to queue events (or use dry_run)")
        self._import_rows(rows, summary, dry_run=dry_run)
        return summary


def import_file(config: Config, path: Path, provider: FollowupLinkage, store: StateStore | None = None,
                outbox: Outbox | None = None, *, dry_run: bool = False, today: date | None = None,
                report: Path | None | bool = True) -> ImportSummary:
    """One-call form of :meth:`FollowupImporter.import_file`."""
    return FollowupImporter(config, provider, store, outbox, today=today).import_file(path, dry_run=dry_run,
                                                                                   report=report)

