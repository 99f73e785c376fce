"""Importing coordinator files against a real linkage table, state DB and outbox."""

from __future__ import annotations

import os
from datetime import date, timedelta
from pathlib import Path

import pytest

from connector.followup.events import EVENT_FIELDS
from connector.followup.ledger import ledger_counts
from tests.followup.conftest import (
    TODAY,
    FollowupSite,
    days_between,
    make_site,
    write_csv,
)


def _shifted(real: str, offset: int) -> str:
    return (date.fromisoformat(real) + timedelta(days=offset)).isoformat()


def test_interval_is_real_and_matches_shifted_dates(site: FollowupSite, tmp_path: Path) -> None:
    a = site.add_patient("MRN-1001", study_date="20190710")
    b = site.add_patient("MRN-1002", study_date="20210228")
    f = write_csv(tmp_path / "deaths.csv", [
        {"patient_id": "MRN-1001", "issuer": "HOSP-A", "event": "death", "event_date": "2023-02-28"},
        {"patient_id": "mrn-1002 ", "issuer": "hosp-a", "event": "MI", "event_date": "2021-03-01"},  # case/blanks
    ])
    summary = site.run(f)
    assert summary.matched == 2 and summary.queued == 2 and not summary.rejected
    by_pseudonym = {body["pseudonym"]: body for _k, body in site.outbox_events()}
    assert set(by_pseudonym) == {a.pseudonym, b.pseudonym}
    for subject, real_event in ((a, "2023-02-28"), (b, "2021-03-01")):
        body = by_pseudonym[subject.pseudonym]
        real_interval = days_between(subject.index_date, real_event)
        assert body["days_from_index"] == real_interval
        assert body["event_date"] == _shifted(real_event, subject.date_offset_days)
        assert body["event_date"] != real_event
        # What the registry sees: the images' study date shifted by the same offset.
        shifted_index = _shifted(date(int(subject.index_date[:4]), int(subject.index_date[4:6]),
                                      int(subject.index_date[6:])).isoformat(), subject.date_offset_days)
        assert days_between(shifted_index, body["event_date"]) == body["days_from_index"]
        assert set(body) == set(EVENT_FIELDS)  # no cause, nothing else
        assert body["version"] == 1 and body["retracted"] is False and body["source"] == "unspecified"
    assert by_pseudonym[a.pseudonym]["days_from_index"] == 1329  # 2019-07-10 -> 2023-02-28
    assert by_pseudonym[b.pseudonym]["days_from_index"] == 1  # across the end of February 2021


def test_each_invalid_row_is_rejected_with_its_reason_and_never_queued(site: FollowupSite, tmp_path: Path) -> None:
    site.add_patient("P1", study_date="20200601")
    site.add_patient("P2", study_date="20200601")
    site.add_patient("P3", study_date="20200601")
    site.add_patient("P4", study_date="20200601")
    future = (TODAY + timedelta(days=1)).isoformat()
    rows = [
        {"patient_id": "P1", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01"},      # 2 ok
        {"patient_id": "NOPE", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01"},    # 3
        {"patient_id": "P2", "issuer": "HOSP-A", "event": "death", "event_date": "01/02/2024"},      # 4
        {"patient_id": "P2", "issuer": "HOSP-A", "event": "mi", "event_date": future},               # 5
        {"patient_id": "P2", "issuer": "HOSP-A", "event": "pci", "event_date": "2020-05-31"},        # 6
        {"patient_id": "P2", "issuer": "HOSP-A", "event": "stroke", "event_date": "2024-01-01"},     # 7
        {"patient_id": "P1", "issuer": "HOSP-A", "event": "Death", "event_date": "2024-01-01"},      # 8 dup of 2
        {"patient_id": "P3", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01"},      # 9 conflict
        {"patient_id": "P3", "issuer": "HOSP-A", "event": "death", "event_date": "2024-02-01"},      # 10 conflict
        {"patient_id": "", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01"},        # 11
        {"patient_id": "P4", "issuer": "HOSP-A", "event": "cabg", "event_date": "2024-01-01",
         "source": "Dr Who's notes"},                                                               # 12
        {},                                                                                          # 13 blank
        {"patient_id": "P4", "issuer": "HOSP-A", "event": "pci", "event_date": "2020-06-01"},        # 14 ok (day 0)
    ]
    f = write_csv(tmp_path / "mixed.csv", rows)
    summary = site.run(f)
    got = {o.number: (o.status, o.reason) for o in summary.outcomes}
    assert got == {
        2: ("queued", ""), 3: ("rejected", "unknown_patient"), 4: ("rejected", "unparseable_date"),
        5: ("rejected", "future_date"), 6: ("rejected", "before_index_scan"), 7: ("rejected", "unknown_event_type"),
        8: ("rejected", "duplicate_row"), 9: ("rejected", "conflicting_rows"), 10: ("rejected", "conflicting_rows"),
        11: ("rejected", "missing_patient_id"), 12: ("rejected", "unknown_source"), 13: ("blank", ""),
        14: ("queued", ""),
    }
    assert summary.rejected == {"unknown_patient": 1, "unparseable_date": 1, "future_date": 1, "before_index_scan": 1,
                                "unknown_event_type": 1, "duplicate_row": 1, "conflicting_rows": 2,
                                "missing_patient_id": 1, "unknown_source": 1}
    assert summary.rows == 12 and summary.blank == 1 and summary.queued == 2
    sent = site.outbox_events()
    assert len(sent) == 2
    assert sorted(b["days_from_index"] for _k, b in sent) == [0, days_between("20200601", "2024-01-01")]

    report = f.with_name("mixed.csv.report.csv").read_text(encoding="utf-8-sig").splitlines()
    assert report[0] == "row,status,reason,event,version,detail"
    assert report[1].startswith("2,queued,,death,1,")
    assert report[2].startswith("3,rejected,unknown_patient,death,,")
    assert len(report) == 1 + 12  # the blank row is not reported


def test_reimport_sends_nothing_new(site: FollowupSite, tmp_path: Path) -> None:
    for i in range(5):
        site.add_patient(f"R{i}", study_date="20180101")
    rows = [{"patient_id": f"R{i}", "issuer": "HOSP-A", "event": ev, "event_date": "2022-02-02", "source": "chart review"}
            for i in range(5) for ev in ("mi", "pci")]
    f = write_csv(tmp_path / "mace.csv", rows)
    first = site.run(f)
    assert first.queued == 10
    jobs = site.outbox_events()
    again = site.run(f)
    assert again.queued == 0 and again.unchanged == 10 and not again.rejected
    assert site.outbox_events() == jobs
    # The same file under another name and in XLSX-like order changes nothing either.
    g = write_csv(tmp_path / "copy.csv", list(reversed(rows)))
    assert site.run(g).unchanged == 10
    assert site.outbox_events() == jobs


def test_correction_and_retraction_are_new_versions_of_the_same_event(site: FollowupSite, tmp_path: Path) -> None:
    s = site.add_patient("C1", study_date="20200101")
    row = {"patient_id": "C1", "issuer": "HOSP-A", "event": "death", "event_date": "2023-05-05"}
    site.run(write_csv(tmp_path / "1.csv", [row]))
    corrected = dict(row, event_date="2023-05-15")
    summary = site.run(write_csv(tmp_path / "2.csv", [corrected]))
    assert summary.queued == 1 and summary.outcomes[0].version == 2
    retract = write_csv(tmp_path / "3.csv", [{**row, "event_date": "", "retract": "yes"}],
                        header=["patient_id", "issuer", "event", "event_date", "retract"])
    assert site.run(retract).queued == 1
    assert site.run(retract).unchanged == 1  # withdrawing twice sends nothing
    site.run(write_csv(tmp_path / "4.csv", [corrected]))  # re-asserted after all

    sent = [b for _k, b in site.outbox_events()]
    keys = [k for k, _b in site.outbox_events()]
    assert [(b["version"], b["retracted"], b["event_date"]) for b in sent] == [
        (1, False, _shifted("2023-05-05", s.date_offset_days)),
        (2, False, _shifted("2023-05-15", s.date_offset_days)),
        (3, True, _shifted("2023-05-15", s.date_offset_days)),
        (4, False, _shifted("2023-05-15", s.date_offset_days)),
    ]
    assert len({b["event_id"] for b in sent}) == 1
    assert len(set(keys)) == 4 and all(k.endswith(f"-v{b['version']}") for k, b in zip(keys, sent))
    assert [b["days_from_index"] for b in sent] == [days_between("20200101", "2023-05-05")] + \
        [days_between("20200101", "2023-05-15")] * 3
    assert ledger_counts(site.store().conn) == {"events": 1, "retracted": 0}

    nothing = write_csv(tmp_path / "5.csv", [{**row, "event": "cabg", "retract": "x"}],
                        header=["patient_id", "issuer", "event", "event_date", "retract"])
    assert site.run(nothing).rejected == {"nothing_to_retract": 1}


def test_repeatable_events_are_told_apart_by_date_or_event_id(site: FollowupSite, tmp_path: Path) -> None:
    site.add_patient("M1", study_date="20200101")
    header = ["patient_id", "issuer", "event", "event_date", "event_id"]
    two = write_csv(tmp_path / "a.csv", [
        {"patient_id": "M1", "issuer": "HOSP-A", "event": "mi", "event_date": "2021-01-01", "event_id": "adm-7"},
        {"patient_id": "M1", "issuer": "HOSP-A", "event": "mi", "event_date": "2022-01-01", "event_id": "adm-9"},
        {"patient_id": "M1", "issuer": "HOSP-A", "event": "hf_admission", "event_date": "2022-01-01"},
        {"patient_id": "M1", "issuer": "HOSP-A", "event": "hf_admission", "event_date": "2023-01-01"},
    ], header=header)
    assert site.run(two).queued == 4
    fixed = write_csv(tmp_path / "b.csv", [
        {"patient_id": "M1", "issuer": "HOSP-A", "event": "mi", "event_date": "2021-01-03", "event_id": "ADM-7"},
    ], header=header)
    summary = site.run(fixed)
    assert summary.queued == 1 and summary.outcomes[0].version == 2
    sent = [b for _k, b in site.outbox_events()]
    mi_ids = [b["event_id"] for b in sent if b["event"] == "mi"]
    assert len(mi_ids) == 3 and mi_ids[2] == mi_ids[0] != mi_ids[1]
    assert "adm-7" not in str(sent).lower()  # the coordinator's reference never leaves


def test_same_patient_id_under_two_issuers_is_never_confused(site: FollowupSite, tmp_path: Path) -> None:
    a = site.add_patient("000123", issuer="HOSP-A", study_date="20200101")
    b = site.add_patient("000123", issuer="HOSP-B", study_date="20210601")
    assert a.pseudonym != b.pseudonym
    f = write_csv(tmp_path / "two.csv", [
        {"patient_id": "000123", "issuer": "HOSP-B", "event": "death", "event_date": "2024-01-10"},
        {"patient_id": "000123", "issuer": "HOSP-A", "event": "pci", "event_date": "2022-03-03"},
        {"patient_id": "000123", "issuer": "", "event": "cabg", "event_date": "2022-03-03"},  # which hospital?
        {"patient_id": "000123", "issuer": "HOSP-C", "event": "cabg", "event_date": "2022-03-03"},
    ])
    summary = site.run(f)
    assert summary.queued == 2 and summary.rejected == {"unknown_patient": 2}
    sent = {b["event"]: b for _k, b in site.outbox_events()}
    assert sent["death"]["pseudonym"] == b.pseudonym
    assert sent["death"]["days_from_index"] == days_between("20210601", "2024-01-10")
    assert sent["death"]["event_date"] == _shifted("2024-01-10", b.date_offset_days)
    assert sent["pci"]["pseudonym"] == a.pseudonym
    assert sent["pci"]["days_from_index"] == days_between("20200101", "2022-03-03")


def test_default_issuer_for_files_without_the_column(tmp_path: Path) -> None:
    site = make_site(tmp_path / "s", '[followup]\ndefault_issuer = "HOSP-B"\ncolumn_patient_id = "MRN"\n'
                                     'column_event_date = "Date of event"\n')
    try:
        site.add_patient("77", issuer="HOSP-A")
        b = site.add_patient("77", issuer="HOSP-B")
        f = write_csv(tmp_path / "f.csv", [{"MRN": "77", "event": "death", "Date of event": "2024-01-01"}],
                      header=["MRN", "event", "Date of event"])
        assert site.run(f).queued == 1
        assert site.outbox_events()[0][1]["pseudonym"] == b.pseudonym
    finally:
        site.close()


def test_cause_is_dropped_by_default_and_phi_checked_when_allowed(tmp_path: Path) -> None:
    header = ["patient_id", "issuer", "name", "birth_date", "event", "event_date", "cause"]
    rows = [
        {"patient_id": "K1", "issuer": "HOSP-A", "name": "Quixotebury^Ann", "birth_date": "1951-04-03",
         "event": "cardiovascular_death", "event_date": "2024-01-01", "cause": "sudden cardiac death"},
        {"patient_id": "K2", "issuer": "HOSP-A", "name": "Zephyrwood^Bo", "birth_date": "1950-01-01",
         "event": "death", "event_date": "2024-01-01", "cause": "Mr ZEPHYRWOOD found at home"},
        {"patient_id": "K3", "issuer": "HOSP-A", "name": "Plumtree^Cy", "birth_date": "1949-02-02",
         "event": "death", "event_date": "2024-01-01", "cause": "see chart K3 / 1949-02-02"},
        {"patient_id": "K4", "issuer": "HOSP-A", "name": "Larchmont^Di", "birth_date": "1948-03-03",
         "event": "death", "event_date": "2024-01-01", "cause": "died 2024-01-01 (real date)"},
    ]
    closed = make_site(tmp_path / "closed")
    try:
        for i in range(1, 5):
            closed.add_patient(f"K{i}")
        summary = closed.run(write_csv(tmp_path / "c.csv", rows, header=header))
        assert summary.queued == 4
        bodies = [b for _k, b in closed.outbox_events()]
        assert all("cause" not in b for b in bodies)
        # (random pseudonyms may contain "K1" by chance: they are generated, not copied from the row)
        text = str([{k: v for k, v in b.items() if k != "pseudonym"} for b in bodies]).upper()
        for ident in ("QUIXOTEBURY", "ZEPHYRWOOD", "1951-04-03", "K1", "HOSP-A", "2024-01-01"):
            assert ident not in text
    finally:
        closed.close()

    open_ = make_site(tmp_path / "open", '[followup]\nallowed_free_text = ["cause"]\n')
    try:
        for i in range(1, 5):
            open_.add_patient(f"K{i}")
        summary = open_.run(write_csv(tmp_path / "o.csv", rows, header=header))
        # the cause goes through the images' allow-list cleaner first: identifiers become ***, the
        # medical words stay; the PHI check still runs on what is left
        assert {o.number: o.reason for o in summary.outcomes} == {2: "", 3: "", 4: "", 5: ""}
        causes = sorted(b["cause"] for _k, b in open_.outbox_events())
        assert "sudden cardiac death" in causes
        text = " ".join(causes).upper()
        for ident in ("ZEPHYRWOOD", "K3", "1949", "2024-01-01"):
            assert ident not in text, ident
        assert any(c.startswith("Mr *** found at home") for c in causes)
    finally:
        open_.close()


def test_dry_run_writes_nothing_and_shows_exactly_what_is_then_sent(site: FollowupSite, tmp_path: Path) -> None:
    site.add_patient("D1", study_date="20200101")
    site.add_patient("D2", study_date="20200101")
    f = write_csv(tmp_path / "d.csv", [
        {"patient_id": "D1", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01"},
        {"patient_id": "D2", "issuer": "HOSP-A", "event": "mi", "event_date": "2023-01-01"},
        {"patient_id": "D3", "issuer": "HOSP-A", "event": "mi", "event_date": "2023-01-01"},
    ])
    dry = site.run(f, dry_run=True)
    assert dry.queued == 2 and dry.rejected == {"unknown_patient": 1}
    assert not f.with_name("d.csv.report.csv").exists()
    assert site.outbox_events() == []
    assert ledger_counts(site.store().conn)["events"] == 0
    real = site.run(f)
    assert [b for _k, b in site.outbox_events()] == dry.events == real.events


def test_one_audit_entry_per_import_and_no_identifier_in_state_or_report(site: FollowupSite, tmp_path: Path) -> None:
    for i in range(20):
        site.add_patient(f"SECRETMRN{i:04d}", study_date="20200101")
    audit_log = site.config.storage.data_dir / "linkage" / "audit.log"
    before = audit_log.read_text().count("followup.import")
    rows = [{"patient_id": f"SECRETMRN{i:04d}", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01"}
            for i in range(25)]
    f = write_csv(tmp_path / "a.csv", rows)
    os.chmod(f, 0o640)
    summary = site.run(f)
    assert summary.queued == 20 and summary.rejected == {"unknown_patient": 5}
    log_text = audit_log.read_text()
    assert log_text.count("followup.import") == before + 1
    assert "SECRETMRN" not in log_text
    report = f.with_name("a.csv.report.csv")
    assert (report.stat().st_mode & 0o777) == 0o640  # never more readable than the input
    report_text = report.read_text(encoding="utf-8-sig")
    assert "SECRETMRN" not in report_text and "TEST01-" not in report_text  # no link MRN <-> pseudonym
    state = site.layout.state_db
    site.close()
    blob = b"".join(p.read_bytes() for p in state.parent.glob("state.db*"))
    assert b"SECRETMRN" not in blob and b"HOSP-A" not in blob and b"2024-01-01" not in blob


def test_xlsx_import_with_site_headers_and_aliases(tmp_path: Path) -> None:
    from datetime import datetime

    from openpyxl import Workbook

    site = make_site(tmp_path / "s", '[followup]\ncolumn_patient_id = "MRN"\ncolumn_event = "Outcome"\n'
                                     'column_event_date = "Date"\nevent_aliases = ["AMI=mi"]\n')
    try:
        s = site.add_patient("4711", issuer="", study_date="20191231")
        wb = Workbook()
        ws = wb.active
        ws.append(["MRN", "Outcome", "Date"])
        ws.append([4711, "AMI", datetime(2020, 1, 31)])
        wb.save(tmp_path / "x.xlsx")
        summary = site.run(tmp_path / "x.xlsx")
        assert summary.queued == 1, summary.rejected
        body = site.outbox_events()[0][1]
        assert body["event"] == "mi" and body["days_from_index"] == 31
        assert body["event_date"] == _shifted("2020-01-31", s.date_offset_days)
    finally:
        site.close()


def test_event_ids_are_keyed_per_site(tmp_path: Path) -> None:
    """The same event at two sites (different secrets) gets unrelated ids: nothing to brute-force."""
    ids = []
    for name in ("one", "two"):
        site = make_site(tmp_path / name)
        try:
            site.add_patient("S1")
            site.run(write_csv(tmp_path / f"{name}.csv",
                               [{"patient_id": "S1", "issuer": "HOSP-A", "event": "mi", "event_date": "2022-01-01"}]))
            ids.append(site.outbox_events()[0][1]["event_id"])
        finally:
            site.close()
    assert ids[0] != ids[1] and all(len(i) == 32 for i in ids)


def test_missing_column_fails_the_file_and_says_so_in_the_report(site: FollowupSite, tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("mrn,event,event_date\nX1,death,2024-01-01\n")
    summary = site.run(f)
    assert summary.failed and summary.error == "missing_column"
    assert "failed,missing_column" in f.with_name("bad.csv.report.csv").read_text(encoding="utf-8-sig")
    assert site.outbox_events() == []


@pytest.mark.parametrize("index_date", [""])
def test_patient_without_index_date_is_rejected(site: FollowupSite, tmp_path: Path, index_date: str) -> None:
    site.add_patient("N1", study_date=index_date)
    f = write_csv(tmp_path / "n.csv", [{"patient_id": "N1", "issuer": "HOSP-A", "event": "death",
                                        "event_date": "2024-01-01"}])
    assert site.run(f).rejected == {"no_index_date": 1}


def test_phi_check_does_not_refuse_coincidences(site: FollowupSite, tmp_path: Path) -> None:
    """A shifted date that falls on the real index date, or a vocabulary word in another column, is no leak."""
    s = site.add_patient("COIN-1", study_date="20200101")
    real = (date(2020, 1, 1) - timedelta(days=s.date_offset_days)).isoformat()  # shifts back onto 2020-01-01
    f = write_csv(tmp_path / "c.csv", [{"patient_id": "COIN-1", "issuer": "HOSP-A", "event": "death",
                                        "event_date": real, "category": "death", "source": "chart_review",
                                        "note": "chart_review"}],
                  header=["patient_id", "issuer", "event", "event_date", "category", "source", "note"])
    summary = site.run(f, today=date(2031, 1, 1))  # offsets reach 10 years back
    assert summary.queued == 1, summary.rejected
    assert site.outbox_events()[0][1]["event_date"] == "2020-01-01"


def test_phi_check_refuses_an_unshifted_date_or_an_identifier() -> None:
    from connector.followup.phi import find_identifiers, row_identifiers

    ids = row_identifiers("MRN-77", "HOSP-A", ["Quill^Ann"], date(2023, 4, 5), [date(2020, 1, 1)])
    ok = {"pseudonym": "TEST01-ABCDEFGH", "event": "death", "event_date": "2020-01-01", "source": "other"}
    assert find_identifiers(ok, ids, []) == []
    assert find_identifiers(dict(ok, event_date="2023-04-05"), ids, []) == ["event_date"]
    assert find_identifiers(dict(ok, pseudonym="mrn-77"), ids, []) == ["pseudonym"]
    assert find_identifiers(dict(ok, cause="Ann QUILL, 05/04/2023"), ids, ["cause"]) == ["cause"]
    assert find_identifiers(dict(ok, cause="scanned 2020-01-01"), ids, ["cause"]) == ["cause"]
    assert find_identifiers(dict(ok, cause="heart failure"), ids, ["cause"]) == []
    assert "MRN" not in repr(ids) and "QUILL" not in repr(ids)


def test_a_damaged_linkage_row_rejects_its_rows_only(site: FollowupSite, tmp_path: Path) -> None:
    import sqlite3

    bad = site.add_patient("DMG-1", study_date="20200101")
    good = site.add_patient("DMG-2", study_date="20200101")
    db = sqlite3.connect(site.config.storage.data_dir / "linkage" / "linkage.db")
    with db:  # a value moved from another row fails authentication
        db.execute("UPDATE subjects SET date_offset = (SELECT date_offset FROM subjects WHERE pseudonym = ?) "
                   "WHERE pseudonym = ?", (good.pseudonym, bad.pseudonym))
    db.close()
    f = write_csv(tmp_path / "d.csv", [
        {"patient_id": "DMG-1", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01"},
        {"patient_id": "DMG-2", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01"}])
    summary = site.run(f)
    assert summary.rejected == {"linkage_damaged": 1} and summary.queued == 1
    assert site.outbox_events()[0][1]["pseudonym"] == good.pseudonym


def test_cause_text_never_carries_the_patients_name_another_person_or_a_phone(tmp_path: Path) -> None:
    """The patient's own name as the linkage table holds it (a GB18030 site: Chinese given and family
    names, and a Latin name that is also an English word), another person's name and a phone number
    in the cause: all become ***, the medical words stay (issue 25, follow-up channel)."""
    site = make_site(tmp_path / "gb", '[followup]\nallowed_free_text = ["cause"]\n')
    try:
        site.add_patient("G1", name="王^小明")
        site.add_patient("G2", name="HEART^CARDIAC")  # a surname that is a vocabulary word
        rows = [
            {"patient_id": "G1", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01",
             "cause": "王小明 sudden cardiac death, wife 李梅 phone 555-867-5309"},
            {"patient_id": "G2", "issuer": "HOSP-A", "event": "death", "event_date": "2024-01-01",
             "cause": "Heart failure per Dr QUINTAVALLE +44 20 7946 0958"},
        ]
        summary = site.run(write_csv(tmp_path / "gb.csv", rows,
                                     header=["patient_id", "issuer", "event", "event_date", "cause"]))
        assert summary.queued == 2
        causes = {b["cause"] for _k, b in site.outbox_events()}
        text = " ".join(causes)
        for leak in ("王", "小明", "李梅", "555", "867", "QUINTAVALLE", "7946", "Heart"):
            assert leak not in text, leak
        assert any("sudden cardiac death" in c for c in causes) and any("failure" in c for c in causes)
    finally:
        site.close()
