"""Cell parsers and file reading: dates, event words, flags, sources, CSV dialects, XLSX cells."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from pathlib import Path

import pytest
from openpyxl import Workbook

from connector.followup.reading import FollowupFileError, read_table
from connector.settings.followup import FollowupConfig
from connector.followup.values import (
    alias_table,
    parse_date,
    parse_event,
    parse_retract,
    parse_source,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-03-04", date(2021, 3, 4)),
        (" 20210304 ", date(2021, 3, 4)),
        ("2021-03-04T13:45:00", date(2021, 3, 4)),
        ("2021-03-04 13:45", date(2021, 3, 4)),
        ("2021-02-30", None),
        ("04/03/2021", None),  # ambiguous without a configured format
        ("yesterday", None),
        ("", None),
    ],
)
def test_parse_date_accepts_iso_and_compact_only_by_default(text: str, expected: date | None) -> None:
    assert parse_date(text) == expected


def test_parse_date_uses_configured_formats_and_spreadsheet_cells() -> None:
    assert parse_date("04/03/2021", ["%d/%m/%Y"]) == date(2021, 3, 4)
    assert parse_date("04/03/2021", ["%m/%d/%Y"]) == date(2021, 4, 3)
    assert parse_date(datetime(2021, 3, 4, 23, 59)) == date(2021, 3, 4)
    assert parse_date(date(2021, 3, 4)) == date(2021, 3, 4)


def test_event_words_and_aliases() -> None:
    cfg = FollowupConfig(event_aliases=["AMI=mi", "Heart failure=hf_admission", "bogus=not_an_event"])
    table = alias_table(cfg)
    assert parse_event("  Death ", table) == "death"
    assert parse_event("Cardiovascular-Death", table) == "cardiovascular_death"
    assert parse_event("ami", table) == "mi"
    assert parse_event("HEART  FAILURE", table) == "hf_admission"
    assert parse_event("bogus", table) is None
    assert parse_event("stroke", table) is None
    assert parse_event("", table) is None


def test_retract_flags() -> None:
    assert [parse_retract(v) for v in ("", "no", "0", "FALSE")] == [False] * 4
    assert [parse_retract(v) for v in ("yes", "X", "1", "True", "retract")] == [True] * 5
    assert parse_retract("maybe") is None


def test_source_is_a_code_unless_free_text_allowed() -> None:
    cfg = FollowupConfig()
    assert parse_source("", cfg) == cfg.sources[0]
    assert parse_source("Death Index", cfg) == "death_index"
    assert parse_source("Dr Smith's letter", cfg) is None
    free = dataclasses.replace(cfg, allowed_free_text=["source"])
    assert parse_source("  Dr   Smith's letter ", free) == "Dr Smith's letter"


def _xlsx(path: Path, rows: list[list[object]]) -> Path:
    wb = Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


def test_xlsx_date_cells_and_numeric_ids(tmp_path: Path) -> None:
    path = _xlsx(tmp_path / "f.xlsx", [
        ["Patient_ID", "Event", "Event_Date", "Notes"],
        [123456, "death", datetime(2022, 5, 6), "x"],
        [None, None, None, None],
        ["ABC9", "mi", "2022-07-08", None],
    ])
    table = read_table(path, FollowupConfig())
    assert [r.number for r in table.rows] == [2, 3, 4]
    first, blank, last = table.rows
    assert first.text("patient_id") == "123456"  # not "123456.0"
    assert first.cells["event_date"] == date(2022, 5, 6)
    assert first.extra == ["x"]
    assert blank.blank and not first.blank
    assert last.text("event_date") == "2022-07-08"


@pytest.mark.parametrize(("delimiter", "encoding"), [(",", "utf-8-sig"), (";", "cp1252"), ("\t", "utf-8")])
def test_csv_dialects_and_encodings(tmp_path: Path, delimiter: str, encoding: str) -> None:
    text = delimiter.join(["MRN", "Évènement", "Date"]) + "\n" + delimiter.join(["Z-001", "décès", "2022-01-02"]) + "\n"
    path = tmp_path / "f.csv"
    path.write_bytes(text.encode(encoding))
    cfg = FollowupConfig(column_patient_id="mrn", column_event="ÉVÈNEMENT", column_event_date="date")
    table = read_table(path, cfg)
    assert table.rows[0].text("patient_id") == "Z-001"
    assert table.rows[0].text("event") == "décès"
    assert table.rows[0].text("event_date") == "2022-01-02"


def test_file_level_errors_name_columns_not_values(tmp_path: Path) -> None:
    missing = tmp_path / "m.csv"
    missing.write_text("mrn,event\nSECRET-ID-1,death\n")
    with pytest.raises(FollowupFileError) as exc:
        read_table(missing, FollowupConfig())
    assert exc.value.code == "missing_column"
    assert "'patient_id'" in str(exc.value) and "'event_date'" in str(exc.value)
    assert "SECRET-ID-1" not in str(exc.value)

    dup = tmp_path / "d.csv"
    dup.write_text("patient_id,event,event_date,EVENT\n")
    with pytest.raises(FollowupFileError, match="twice"):
        read_table(dup, FollowupConfig())

    xls = tmp_path / "old.xls"
    xls.write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(FollowupFileError) as exc:
        read_table(xls, FollowupConfig())
    assert exc.value.code == "unsupported_type"

    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"not a zip")
    with pytest.raises(FollowupFileError) as exc:
        read_table(broken, FollowupConfig())
    assert exc.value.code == "unreadable"

    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(FollowupFileError) as exc:
        read_table(empty, FollowupConfig())
    assert exc.value.code == "empty_file"
