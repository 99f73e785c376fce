"""The coordinator's master list: pseudonym -> identifiers, as CSV. Identifiers in clear, by design.

The CLI only writes it with an explicit confirmation flag, never inside the site data folder (whose
contents must stay free of clear identifiers), always mode 0600, and records the export in the audit
log before the file exists. Rows that fail authentication are left out and reported by pseudonym.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from connector.linkage.errors import CorruptRowError, LinkageStateError
from connector.linkage.provider import LinkageProvider
from connector.linkage.store import SubjectIdentifiers
from connector.store.durable import write_file_durably

log = logging.getLogger(__name__)

COLUMNS = ("pseudonym", "patient_id", "issuer", "name", "birth_date", "sex", "index_date")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    corrupt: tuple[CorruptRowError, ...]


def _cell(value: str) -> str:
    """Neutralise spreadsheet formula injection (a name like ``=HYPERLINK(...)``): prefix a quote."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def export_master_list(
    provider: LinkageProvider, out: Path, *, protected_dirs: tuple[Path, ...] = (), overwrite: bool = False
) -> ExportResult:
    out = Path(out)
    for folder in (*protected_dirs, provider.paths.db.parent):
        if _inside(out, folder):
            raise LinkageStateError(
                f"refusing to write identifiers inside {folder}: choose a path outside the site data folder"
            )
    if out.exists() and not overwrite:
        raise LinkageStateError(f"{out} already exists (pass --force to replace it)")
    rows: list[SubjectIdentifiers] = []
    corrupt: list[CorruptRowError] = []
    for item in provider.store.iter_identifiers():
        (corrupt if isinstance(item, CorruptRowError) else rows).append(item)  # type: ignore[arg-type]
    provider.audit("export", out=str(out), rows=len(rows), corrupt=len(corrupt))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r.pseudonym, *(_cell(getattr(r, c)) for c in COLUMNS[1:])])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file_durably(out, buf.getvalue().encode("utf-8"), mode=0o600)
    log.info("linkage.export.written rows=%d corrupt=%d", len(rows), len(corrupt))
    return ExportResult(out, len(rows), tuple(corrupt))
