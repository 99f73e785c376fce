"""Validation at the site: the configured CAC model against the site's own reads.

Why: a model's published accuracy says little about one site's scanners, protocols and patients.
Before its scores go to the registry as research results, or back to the PACS, a site compares
them with its readers' Agatston scores on its own studies (``site-connector cac validate
REFERENCE.csv``). The studies are found and scored exactly as the daemon's CAC stage does: the
study's original instances on the spool (``instances`` in the state DB), the same series selection
(:func:`connector.infer.study.score_study`), the same model runner; the best-ranked series that
could be scored is the study's score.

The reference file is site-local (it names studies by accession number, an identifier, or by study
key, the connector's pseudonymous handle). Accession numbers are matched to studies by reading the
AccessionNumber of one original instance per study on the spool (the state DB holds no identifier);
they are never written to the report, the state DB, the HTML report or the log: each study is named
by its study key and the line of the reference file it came from, which the operator can look up in
their own file. ``--show-accession`` (text and JSON output only) is the operator's explicit request
to see them next to the disagreements.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.infer.agatston import category_for
from connector.infer.agreement import Agreement, agreement

log = logging.getLogger(__name__)

STUDY_KEY_RE = re.compile(r"^[0-9a-f]{20}$")
ID_HEADERS = {"study_key": "study_key", "studykey": "study_key", "key": "study_key",
              "accession_number": "accession", "accessionnumber": "accession", "accession": "accession",
              "study": "auto", "id": "auto", "identifier": "auto"}
SCORE_HEADERS = ("agatston", "reference_agatston", "reference", "score", "cac", "cac_score")
MAX_ROWS = 100_000


class ReferenceFileError(ValueError):
    """The reference file cannot be used; the message names the line, never the identifier on it."""


@dataclass(frozen=True)
class ReferenceRow:
    line: int  # line number in the reference file (1-based), how the operator finds the row
    kind: str  # "study_key" or "accession"
    identifier: str = field(repr=False)  # an accession number is an identifier: kept out of repr and logs
    agatston: float = 0.0


def _number(text: str, decimal_comma: bool) -> float:
    value = text.strip().replace(" ", "")
    if decimal_comma and "," in value and "." not in value:
        value = value.replace(",", ".")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError("negative or not finite")
    return number


def parse_references(text: str) -> list[ReferenceRow]:
    """Rows of a reference CSV: identifier (accession number or study key) and reference Agatston.

    Comma, semicolon or tab separated (with a semicolon or tab, ``12,5`` is read as 12.5); an
    optional header row names the columns (``study_key`` or ``accession_number``, and ``agatston``);
    without one the first column is the identifier and the second the score. A 20-hex-digit
    identifier in an unnamed column is a study key, anything else an accession number. Blank lines
    and lines starting with ``#`` are skipped.
    """
    lines = text.splitlines()
    sample = "\n".join(ln for ln in lines[:20] if ln.strip() and not ln.lstrip().startswith("#"))
    delimiter = max(",;\t", key=sample.count) if sample else ","
    decimal_comma = delimiter != ","
    rows: list[ReferenceRow] = []
    seen: dict[tuple[str, str], int] = {}
    id_col, score_col, id_kind = 0, 1, "auto"
    header_done = False
    for number, raw in enumerate(lines, start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in next(csv.reader(io.StringIO(raw), delimiter=delimiter))]
        if not header_done:
            header_done = True
            names = [c.lower().replace(" ", "_").replace("-", "_") for c in cells]
            if len(cells) >= 2 and not _looks_numeric(cells[1], decimal_comma):
                id_col = next((i for i, n in enumerate(names) if n in ID_HEADERS), -1)
                score_col = next((i for i, n in enumerate(names) if n in SCORE_HEADERS), -1)
                if id_col < 0 or score_col < 0:
                    raise ReferenceFileError(
                        f"line {number}: a header row needs an identifier column (study_key or accession_number) "
                        f"and a score column (agatston)")
                id_kind = ID_HEADERS[names[id_col]]
                continue
        if len(cells) <= max(id_col, score_col):
            raise ReferenceFileError(f"line {number}: expected an identifier and a reference Agatston score")
        identifier = cells[id_col]
        if not identifier:
            raise ReferenceFileError(f"line {number}: the identifier is empty")
        try:
            score = _number(cells[score_col], decimal_comma)
        except ValueError:
            raise ReferenceFileError(f"line {number}: the reference Agatston score is not a number >= 0") from None
        kind = id_kind
        if kind == "auto":
            kind = "study_key" if STUDY_KEY_RE.match(identifier.lower()) else "accession"
        if kind == "study_key":
            identifier = identifier.lower()
            if not STUDY_KEY_RE.match(identifier):
                raise ReferenceFileError(f"line {number}: a study key is 20 hexadecimal characters")
        wanted = (kind, identifier if kind == "study_key" else _norm_accession(identifier))
        if wanted in seen:
            raise ReferenceFileError(f"line {number}: the same study as line {seen[wanted]}")
        seen[wanted] = number
        rows.append(ReferenceRow(number, kind, identifier, score))
        if len(rows) > MAX_ROWS:
            raise ReferenceFileError(f"more than {MAX_ROWS} reference rows")
    if not rows:
        raise ReferenceFileError("no reference rows (expected: identifier, reference Agatston score)")
    return rows


def _looks_numeric(text: str, decimal_comma: bool) -> bool:
    try:
        _number(text, decimal_comma)
    except ValueError:
        return False
    return True


def _norm_accession(value: str) -> str:
    return value.strip().casefold()


# -- finding the studies -------------------------------------------------------------------------


def accession_index(store: Any, layout: Any) -> dict[str, list[str]]:
    """Normalised accession number -> study keys, read from one original instance of each study."""
    import pydicom

    index: dict[str, list[str]] = {}
    rows = store.conn.execute(
        "SELECT i.study_key, MIN(i.path) FROM instances i JOIN studies s ON s.study_key = i.study_key "
        "GROUP BY i.study_key ORDER BY MIN(s.first_received_at), i.study_key").fetchall()
    for key, rel in rows:
        try:
            ds = pydicom.dcmread(layout.spool / rel, stop_before_pixels=True, specific_tags=["AccessionNumber"])
        except Exception:  # noqa: BLE001 - an unreadable or removed original: that study cannot be matched
            continue
        value = _norm_accession(str(ds.get("AccessionNumber", "") or ""))
        if value:
            index.setdefault(value, []).append(key)
    return index


@dataclass
class StudyOutcome:
    row: ReferenceRow
    study_key: str | None = None
    status: str = "not_found"  # "scored", "not_found" or "not_scored"
    reason: str | None = None  # why not scored: a code
    agatston: float | None = None
    seconds: float = 0.0

    @property
    def reference_category(self) -> str:
        return category_for(self.row.agatston)

    @property
    def model_category(self) -> str | None:
        return None if self.agatston is None else category_for(self.agatston)

    def to_json(self, show_accession: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "line": self.row.line,
            "study_key": self.study_key,
            "matched_by": self.row.kind,
            "status": self.status,
            "reason": self.reason,
            "reference": self.row.agatston,
            "reference_category": self.reference_category,
            "model": None if self.agatston is None else round(self.agatston, 3),
            "model_category": self.model_category,
            "seconds": round(self.seconds, 3),
        }
        if show_accession and self.row.kind == "accession":
            out["accession_number"] = self.row.identifier
        return out


def score_reference_studies(rows: Sequence[ReferenceRow], store: Any, layout: Any, runner: Any) -> list[StudyOutcome]:
    """Find each row's study on this site and score it with ``runner`` (as the daemon's CAC stage does)."""
    from connector.infer.study import score_study

    accessions = accession_index(store, layout) if any(r.kind == "accession" for r in rows) else {}
    outcomes: list[StudyOutcome] = []
    for row in rows:
        outcome = StudyOutcome(row)
        outcomes.append(outcome)
        if row.kind == "study_key":
            known = store.conn.execute("SELECT 1 FROM studies WHERE study_key = ?", (row.identifier,)).fetchone()
            keys = [row.identifier] if known else []
        else:
            keys = accessions.get(_norm_accession(row.identifier), [])
        if not keys:
            continue
        t0 = time.perf_counter()
        outcome.status, outcome.reason = "not_scored", "no_eligible_series"
        for key in keys:  # an accession shared by two studies (CT and PET sent apart): the one with a CT scored
            outcome.study_key = outcome.study_key or key
            files = [layout.spool / r["path"] for r in store.study_instances(key)]
            present = [p for p in files if p.is_file()]
            if not present:
                outcome.reason = "originals_not_on_spool"
                continue
            results = score_study(present, runner)
            ok = next((r for r in results if r.ok), None)
            if ok is not None:
                outcome.study_key, outcome.status, outcome.reason = key, "scored", None
                outcome.agatston = float(ok.agatston.score)
                break
            if results:  # a CT series was tried and failed: the more telling reason, and its study
                outcome.study_key, outcome.reason = key, str(results[0].error or "not_scored")
        outcome.seconds = time.perf_counter() - t0
        log.info("cac validation study: status=%s reason=%s seconds=%.2f", outcome.status, outcome.reason,
                 outcome.seconds)
    return outcomes


# -- the report ----------------------------------------------------------------------------------


@dataclass
class ValidationReport:
    model: dict[str, Any]
    intended_use: str
    outcomes: list[StudyOutcome]
    stats: Agreement | None
    seconds: float
    at: float

    @property
    def scored(self) -> list[StudyOutcome]:
        return [o for o in self.outcomes if o.status == "scored"]

    @property
    def disagreements(self) -> list[StudyOutcome]:
        return [o for o in self.scored if o.model_category != o.reference_category]

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def to_json(self, show_accession: bool = False) -> dict[str, Any]:
        return {
            "model": dict(self.model),
            "at": self.at,
            "references": len(self.outcomes),
            "compared": len(self.scored),
            "not_found": self.count("not_found"),
            "not_scored": self.count("not_scored"),
            "agreement": None if self.stats is None else self.stats.to_json(),
            "disagreements": [o.to_json(show_accession) for o in self.disagreements],
            "studies": [o.to_json(show_accession) for o in self.outcomes],
            "seconds": round(self.seconds, 3),
        }

    def db_row(self) -> dict[str, Any]:
        """What the state DB keeps of the run: the model, counts and statistics (no study named)."""
        stats = self.stats
        ba = stats.bland_altman if stats is not None else None
        return {
            "at": self.at, "model_sha256": self.model["sha256"], "model_name": self.model["name"],
            "model_version": self.model["version"], "model_validated": bool(self.model["validated_for_clinical_use"]),
            "n": len(self.scored), "references_total": len(self.outcomes),
            "kappa": None if stats is None else stats.kappa,
            "bias": None if ba is None else ba.bias, "loa_lower": None if ba is None else ba.lower,
            "loa_upper": None if ba is None else ba.upper, "rho": None if stats is None else stats.rho,
            "disagreements": len(self.disagreements), "seconds": self.seconds,
            "detail": {"table": None if stats is None else stats.table.tolist(),
                       "not_found": self.count("not_found"), "not_scored": self.count("not_scored"),
                       "category_agreement": None if stats is None else stats.exact_agreement},
        }


def validate(rows: Sequence[ReferenceRow], store: Any, layout: Any, runner: Any) -> ValidationReport:
    """Score the rows' studies and compare them with the references."""
    started, t0 = time.time(), time.perf_counter()
    outcomes = score_reference_studies(rows, store, layout, runner)
    scored = [o for o in outcomes if o.status == "scored"]
    stats = agreement([o.row.agatston for o in scored], [float(o.agatston or 0.0) for o in scored]) if scored else None
    return ValidationReport(model=runner.manifest.summary(), intended_use=runner.manifest.intended_use,
                            outcomes=outcomes, stats=stats, seconds=time.perf_counter() - t0, at=started)


def record(store: Any, report: ValidationReport) -> int:
    """Keep the run in the state DB (``cac_validation_runs``); returns its id."""
    from connector.infer.validation_store import record_run

    with store.write() as conn:
        return record_run(conn, report.db_row())


def format_text(report: ValidationReport, show_accession: bool = False) -> str:
    """The report for a person at a terminal."""
    from connector.infer.agatston import CATEGORIES

    m = report.model
    out = [f"CAC validation of model {m['name']} {m['version']} (sha256 {m['sha256'][:16]}...)"
           + ("" if m.get("validated_for_clinical_use") else ", NOT validated for clinical use"),
           f"references: {len(report.outcomes)}; compared: {len(report.scored)}; not found on this site: "
           f"{report.count('not_found')}; found but not scored: {report.count('not_scored')}"]
    stats = report.stats
    if stats is None:
        out.append("no study could be compared")
    else:
        kappa = "n/a" if stats.kappa is None else f"{stats.kappa:.3f}"
        out.append(f"linear-weighted kappa (categories 0 / 1-100 / 101-400 / >400): {kappa}; "
                   f"same category: {stats.exact_agreement} of {stats.n}")
        out.append("category table (rows: reference, columns: model):")
        width = 9
        out.append(" " * width + "".join(f"{c:>{width}}" for c in CATEGORIES))
        for name, counts in zip(CATEGORIES, stats.table.tolist(), strict=True):
            out.append(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in counts))
        ba = stats.bland_altman
        if ba is None:
            out.append("Bland-Altman: needs 2 or more studies")
        else:
            out.append(f"Bland-Altman (model - reference, Agatston units): bias {ba.bias:.1f}, "
                       f"95 % limits of agreement {ba.lower:.1f} to {ba.upper:.1f} (SD {ba.sd:.1f})")
        out.append("Spearman's rho: " + ("n/a (needs 3 or more studies, not all equal)" if stats.rho is None
                                         else f"{stats.rho:.3f}"))
    out.append(f"disagreements (category differs): {len(report.disagreements)}")
    for o in report.disagreements:
        acc = f", accession {o.row.identifier}" if show_accession and o.row.kind == "accession" else ""
        out.append(f"  study {o.study_key} (reference line {o.row.line}{acc}): reference {o.row.agatston:.1f} "
                   f"({o.reference_category}), model {o.agatston:.1f} ({o.model_category})")
    missing = [o for o in report.outcomes if o.status != "scored"]
    if missing:
        out.append(f"not compared: {len(missing)}")
    for o in missing:
        if o.status == "not_found":
            out.append(f"  reference line {o.row.line}: not found on this site")
        else:
            out.append(f"  reference line {o.row.line}: study {o.study_key} not scored ({o.reason})")
    out.append(f"time: {report.seconds:.1f} s")
    if not m.get("validated_for_clinical_use"):
        out.append(f"note: {report.intended_use}")
    return "\n".join(out) + "\n"


def read_reference_file(path: Path) -> list[ReferenceRow]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReferenceFileError(f"cannot read the reference file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_references(text)


__all__ = ["ReferenceFileError", "ReferenceRow", "StudyOutcome", "ValidationReport", "format_text",
           "parse_references", "read_reference_file", "record", "score_reference_studies", "validate"]
