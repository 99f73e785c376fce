"""Start-up recovery: bring the spool and the state DB back into agreement after any stop.

Runs before the receiver listens. Idempotent: a second run finds nothing to do.
- files under ``spool/partial`` are incomplete receptions (never acknowledged): deleted;
- ``.part`` leftovers anywhere in the spool: deleted;
- files under ``spool/incoming`` with no row (crash between rename and commit): registered;
- work leased by the previous run: handed back;
- rows whose file is gone (the machine died between the commit and the folder fsync, before the
  sender was answered) are dropped so the re-sent instance is stored afresh; counted and logged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from connector.ingest.intake import Intake, UnreadableObject, dataset_sha256, read_header
from connector.store.durable import PART_SUFFIX
from connector.store.quarantine import quarantine
from connector.store.state import InstanceRecord, StateStore

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    partial_removed: int = 0
    orphans_registered: int = 0
    orphans_quarantined: int = 0
    leases_reset: int = 0
    missing_files: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def recover(intake: Intake) -> RecoveryReport:
    layout, store = intake.layout, intake.store
    report = RecoveryReport()
    for leftover in list(layout.partial.rglob("*")) + list(layout.spool.rglob(f"*{PART_SUFFIX}")):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            report.partial_removed += 1
    report.leases_reset = store.reset_leases()
    known = store.known_paths()
    for path in sorted(layout.incoming.glob("*/*.dcm")):
        rel = path.relative_to(layout.spool).as_posix()
        if rel in known:
            continue
        try:
            _register_orphan(store, path, rel)
            report.orphans_registered += 1
        except UnreadableObject as exc:
            quarantine(layout.quarantine, "ingest", exc.code, source_path=path, move=True,
                       details={"source": "recovery"})
            report.orphans_quarantined += 1
    missing = [rel for rel in known if not (layout.spool / rel).exists()]
    report.missing_files = store.forget_missing(missing)
    level = logging.WARNING if report.missing_files else logging.INFO
    log.log(level, "start-up recovery done", extra={"event": "recovery", **report.as_dict()})
    return report


def _register_orphan(store: StateStore, path: Path, rel: str) -> None:
    header = read_header(path)
    store.record_instance(InstanceRecord(
        sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid, study_uid=header.study_uid,
        series_uid=header.series_uid, modality=header.modality, transfer_syntax=header.transfer_syntax, path=rel,
        sha256=dataset_sha256(path, header.dataset_offset), size=path.stat().st_size, source="recovery",
    ))
