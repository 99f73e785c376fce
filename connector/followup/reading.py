"""Reading coordinators' files (CSV or XLSX) into rows of named cells.

Coordinators export from spreadsheets, death-index portals and chart systems, so the reader is
forgiving about the container (UTF-8 with or without BOM, else Windows-1252; comma, semicolon, tab
or pipe separated; XLSX with real date cells) and strict about meaning: headers are matched to the
configured column names, and a missing required column fails the whole file before any row is used.
Error messages name columns and counts only, never a cell's value.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from connector.settings.followup import FollowupConfig

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
XLSX_SUFFIXES = (".xlsx", ".xlsm")
SUPPORTED_SUFFIXES = CSV_SUFFIXES + XLSX_SUFFIXES

#: Logical fields: (name, required). The header for each comes from the config.
FIELDS = (
    ("patient_id", True),
    ("issuer", False),
    ("event", True),
    ("event_date", True),
    ("cause", False),
    ("source", False),
    ("retract", False),
    ("event_id", False),
)

Cell = str | date | None


class FollowupFileError(Exception):
    """The file as a whole cannot be used (unreadable, wrong type, missing column). No cell values in it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Row:
    """One data row: its spreadsheet row number (header = 1), mapped cells and the other cells."""

    number: int
    cells: dict[str, Cell]
    extra: list[Cell] = field(default_factory=list)  # unmapped columns: only used to catch leaks

    def text(self, name: str) -> str:
        value = self.cells.get(name)
        if value is None:
            return ""
        if isinstance(value, date):
            return value.isoformat()
        return value.strip()

    @property
    def blank(self) -> bool:
        return all(v is None or (isinstance(v, str) and not v.strip()) for v in (*self.cells.values(), *self.extra))


@dataclass
class Table:
    columns: dict[str, int]  # logical field -> column position
    rows: list[Row]


def _norm_header(value: Any) -> str:
    return unicodedata.normalize("NFKC", str(value or "")).strip().casefold()


def column_headers(config: FollowupConfig) -> dict[str, str]:
    """Logical field -> the header configured for it."""
    return {name: getattr(config, f"column_{name}") for name, _ in FIELDS}


def map_columns(header: list[Any], config: FollowupConfig) -> dict[str, int]:
    """Find each configured column in the header row; raise FollowupFileError for a missing required one."""
    positions: dict[str, int] = {}
    seen: dict[str, int] = {}
    for i, h in enumerate(header):
        key = _norm_header(h)
        if key:
            if key in seen:
                raise FollowupFileError("duplicate_column", f"the header has a column name twice (columns {seen[key] + 1} "
                                                            f"and {i + 1})")
            seen[key] = i
    missing = []
    for name, required in FIELDS:
        wanted = _norm_header(getattr(config, f"column_{name}"))
        if wanted and wanted in seen:
            positions[name] = seen[wanted]
        elif required:
            missing.append(getattr(config, f"column_{name}"))
    if missing:
        raise FollowupFileError(
            "missing_column",
            "required column(s) not found in the header row: " + ", ".join(repr(m) for m in missing)
            + " (set the [followup] column_* settings to the file's headers)",
        )
    return positions


def _cell_text(value: Any) -> Cell:
    """XLSX cell value -> str or date (numbers as typed; an integral float loses its '.0')."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()  # a time of day (e.g. time of death) is not needed and not sent
    if isinstance(value, date):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _rows(records: Iterator[list[Any]], positions: dict[str, int], start: int = 2) -> list[Row]:
    mapped = set(positions.values())
    out = []
    for number, record in enumerate(records, start=start):
        values = [_cell_text(v) for v in record]
        cells = {name: (values[i] if i < len(values) else None) for name, i in positions.items()}
        extra = [v for i, v in enumerate(values) if i not in mapped]
        out.append(Row(number, cells, extra))
    return out


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_csv(path: Path, config: FollowupConfig) -> Table:
    text = _decode(path.read_bytes())
    first_line = text.split("\n", 1)[0]
    delimiter = max(",;\t|", key=first_line.count) if first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise FollowupFileError("empty_file", "the file is empty (no header row)") from None
    except csv.Error:
        raise FollowupFileError("unreadable", "the header row is not valid CSV") from None
    positions = map_columns(header, config)
    try:
        return Table(positions, _rows(iter(list(reader)), positions))
    except csv.Error as exc:
        raise FollowupFileError("unreadable", f"the file is not valid CSV near line {reader.line_num}") from exc


def read_xlsx(path: Path, config: FollowupConfig) -> Table:
    import zipfile

    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise FollowupFileError("unreadable", "the file is not a readable XLSX workbook") from exc
    try:
        if not wb.worksheets:
            raise FollowupFileError("empty_file", "the workbook has no sheet")
        records = wb.worksheets[0].iter_rows(values_only=True)
        try:
            header = list(next(records))
        except StopIteration:
            raise FollowupFileError("empty_file", "the first sheet is empty (no header row)") from None
        positions = map_columns(header, config)
        return Table(positions, _rows((list(r) for r in records), positions))
    finally:
        wb.close()


def read_table(path: Path, config: FollowupConfig) -> Table:
    """Read a coordinator file; FollowupFileError if it cannot be used as a whole."""
    suffix = path.suffix.lower()
    try:
        if suffix in XLSX_SUFFIXES:
            return read_xlsx(path, config)
        if suffix in CSV_SUFFIXES:
            return read_csv(path, config)
    except OSError as exc:
        raise FollowupFileError("unreadable", f"the file cannot be read ({exc.strerror or 'I/O error'})") from None
    raise FollowupFileError("unsupported_type", "unsupported file type: use .csv or .xlsx (save .xls files as .xlsx)")
