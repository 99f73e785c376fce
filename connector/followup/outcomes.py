"""Per-row outcomes, the import summary, and the per-row report written next to the input.

The report repeats nothing from the input except the row number and the event type, and adds only
a status and a reason code: no pseudonym (next to a file of MRNs it would be a re-identification
list), no patient ID, no date. It is written with the input file's permissions, so it is never
more readable than the file it describes, and it stays at the site.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.store.durable import write_file_durably

QUEUED, UNCHANGED, REJECTED, BLANK = "queued", "unchanged", "rejected", "blank"
REPORT_SUFFIX = ".report.csv"

#: Row rejection reasons (codes in the report and the summary) and what the coordinator should do.
REASONS = {
    "missing_patient_id": "the patient ID cell is empty",
    "unknown_patient": "no patient with this ID (and issuer) has been imaged through the connector",
    "unknown_event_type": "the event type is not one of: death, cardiovascular_death, last_known_alive, mi, "
                          "unstable_angina, pci, cabg, hf_admission (or a configured alias)",
    "unparseable_date": "the event date is missing or not a date (use YYYY-MM-DD, or configure date_formats)",
    "future_date": "the event date is in the future",
    "no_index_date": "the patient's index scan has no date, so no interval can be computed",
    "before_index_scan": "the event date is before the patient's index scan",
    "unknown_source": "the source is not one of the configured source codes",
    "invalid_retract_flag": "the retract cell is not yes/no (or true/false, 1/0, x/blank)",
    "text_too_long": "the free-text cell is longer than max_text_length",
    "duplicate_row": "the same event is already on an earlier row of this file (this row was not used)",
    "conflicting_rows": "other rows of this file give this event different values; none of them was used",
    "nothing_to_retract": "this event was never sent, so there is nothing to withdraw",
    "phi_check_failed": "an identifier of the patient was found in a value that would be sent",
    "linkage_damaged": "the patient's entry in the linkage table fails authentication "
                       "(ask IT to run 'site-connector linkage check')",
}


@dataclass
class RowOutcome:
    number: int  # spreadsheet row number (the header is row 1)
    status: str
    reason: str = ""
    event: str = ""
    version: int | None = None


@dataclass
class ImportSummary:
    """What one import did (or, in a dry run, would do). ``events`` are the exact JSON bodies."""

    file: str
    dry_run: bool = False
    rows: int = 0  # data rows, blank ones excluded
    blank: int = 0
    matched: int = 0  # rows whose patient was found in the linkage table
    queued: int = 0
    unchanged: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[RowOutcome] = field(default_factory=list)
    error: str = ""  # file-level failure code; the file was not used at all
    error_message: str = ""
    report: Path | None = None
    moved_to: Path | None = None

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def failed(self) -> bool:
        return bool(self.error)

    def reject(self, outcome: RowOutcome) -> None:
        self.rejected[outcome.reason] = self.rejected.get(outcome.reason, 0) + 1

    def counts(self) -> dict[str, Any]:
        """The numbers only: safe for logs and the audit log."""
        return {"rows": self.rows, "blank": self.blank, "matched": self.matched, "queued": self.queued,
                "unchanged": self.unchanged, "rejected": self.rejected_total}

    def as_dict(self, *, with_events: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "dry_run": self.dry_run,
            "rows": self.rows,
            "blank": self.blank,
            "matched": self.matched,
            "queued": self.queued,
            "unchanged": self.unchanged,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": self.rejected_total,
            "error": self.error or None,
            "error_message": self.error_message or None,
            "report": str(self.report) if self.report else None,
            "moved_to": str(self.moved_to) if self.moved_to else None,
        }
        if with_events:
            out["events"] = self.events
        return out


def report_path_for(path: Path) -> Path:
    return path.with_name(path.name + REPORT_SUFFIX)


def render_report(summary: ImportSummary) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # opens cleanly in spreadsheet programs
    writer.writerow(["row", "status", "reason", "event", "version", "detail"])
    if summary.error:
        writer.writerow(["", "failed", summary.error, "", "", summary.error_message])
    for o in sorted(summary.outcomes, key=lambda o: o.number):
        if o.status == BLANK:
            continue
        detail = REASONS.get(o.reason, "") if o.status == REJECTED else ""
        writer.writerow([o.number, o.status, o.reason, o.event, "" if o.version is None else o.version, detail])
    return buf.getvalue().encode("utf-8-sig")


def write_report(summary: ImportSummary, path: Path, *, like: Path | None = None, sync: bool = True) -> Path:
    """Write the per-row report to ``path``, no more readable than ``like`` (the input file)."""
    mode = 0o600
    if like is not None:
        try:
            mode = like.stat().st_mode & 0o666
        except OSError:
            pass
    write_file_durably(path, render_report(summary), mode=mode or 0o600, sync=sync)
    summary.report = path
    return path
