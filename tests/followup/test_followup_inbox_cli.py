"""The inbox folder (what the daemon's scheduler runs) and the ``followup`` commands."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from connector.followup.inbox import pending_files, process_inbox
from connector.outbox import Outbox
from tests.followup.conftest import TODAY, FollowupSite, make_site, write_csv


def _inbox_site(tmp_path: Path, settle: float = 5) -> tuple[FollowupSite, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.chmod(inbox, 0o770)  # a folder shared with the coordinators' group
    site = make_site(tmp_path / "site", f'[followup]\ninbox = "{inbox}"\nsettle_seconds = {settle}\n')
    return site, inbox


def _process(site: FollowupSite, later: float = 0.0) -> list:
    """Run the inbox as the scheduler would, ``later`` seconds from now."""
    store = site.store()
    return process_inbox(site.config, store, site.provider(), Outbox(store), today=TODAY, now=time.time() + later)


def test_inbox_files_settle_then_move_to_done_or_failed_with_report(tmp_path: Path) -> None:
    site, inbox = _inbox_site(tmp_path)
    try:
        s = site.add_patient("IN1", study_date="20200101")
        good = write_csv(inbox / "deaths.csv", [
            {"patient_id": "IN1", "issuer": "HOSP-A", "event": "death", "event_date": "2024-04-04"},
            {"patient_id": "IN2", "issuer": "HOSP-A", "event": "death", "event_date": "2024-04-04"},
        ])
        bad = inbox / "wrong.csv"
        bad.write_text("who,what\nIN1,death\n")
        pdf = inbox / "scan.pdf"
        pdf.write_bytes(b"%PDF-1.4")
        hidden = inbox / ".deaths.csv.swp"
        hidden.write_text("x")
        lock = inbox / "~$deaths.xlsx"
        lock.write_text("x")

        old = time.time() - 3600
        os.utime(good, (old, old))  # copied keeping the source's time: the change time still counts
        assert _process(site) == []  # nothing has settled yet
        assert good.exists()
        assert sorted(p.name for p in pending_files(inbox, 5, now=time.time() + 60)) == sorted(
            ["deaths.csv", "wrong.csv", "scan.pdf"])

        summaries = _process(site, later=60)
        assert len(summaries) == 3
        assert hidden.exists() and lock.exists() and not good.exists() and not bad.exists() and not pdf.exists()
        done = sorted((inbox / "done").iterdir())
        failed = sorted((inbox / "failed").iterdir())
        assert [p.name.split("-", 1)[1] for p in done] == ["deaths.csv", "deaths.csv.report.csv"]
        assert sorted(p.name.split("-", 1)[1] for p in failed) == sorted(
            ["wrong.csv", "wrong.csv.report.csv", "scan.pdf", "scan.pdf.report.csv"])
        assert (inbox / "done").stat().st_mode & 0o777 == 0o770  # as shared as the inbox, no more
        report = next(p for p in done if p.name.endswith(".report.csv")).read_text(encoding="utf-8-sig")
        assert "2,queued,,death,1" in report and "3,rejected,unknown_patient" in report
        wrong_report = next(p for p in failed if p.name.endswith("wrong.csv.report.csv")).read_text(encoding="utf-8-sig")
        assert "missing_column" in wrong_report
        (event,) = site.outbox_events()
        assert event[1]["pseudonym"] == s.pseudonym

        # The coordinator drops the same file again: filed under a new name, nothing new sent.
        again = write_csv(inbox / "deaths.csv", [
            {"patient_id": "IN1", "issuer": "HOSP-A", "event": "death", "event_date": "2024-04-04"}])
        (summary,) = _process(site, later=60)
        assert summary.unchanged == 1 and summary.queued == 0 and not again.exists()
        assert len(list((inbox / "done").iterdir())) == 4
        assert len(site.outbox_events()) == 1
    finally:
        site.close()


def test_no_inbox_configured_is_a_no_op(site: FollowupSite) -> None:
    assert site.config.followup.inbox is None
    assert _process(site) == []


def test_cli_import_summary_json_and_exit_codes(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    try:
        site.add_patient("CLI1", study_date="20200101")
        site.close()  # the command opens its own connections
        ok = write_csv(tmp_path / "ok.csv", [
            {"patient_id": "CLI1", "issuer": "HOSP-A", "event": "last known alive", "event_date": "2024-01-01"}])
        rc, out, err = site.cli("import", str(ok), "--json")
        assert rc == 0, err
        data = json.loads(out)
        assert (data["rows"], data["matched"], data["queued"], data["unchanged"], data["rejected"]) == (1, 1, 1, 0, {})
        assert "events" not in data and Path(data["report"]).exists()

        rc, out, _ = site.cli("import", str(ok))
        assert rc == 0 and "0 queued, 1 unchanged, 0 rejected" in out

        mixed = write_csv(tmp_path / "mixed.csv", [
            {"patient_id": "CLI1", "issuer": "HOSP-A", "event": "pci", "event_date": "2023-01-01"},
            {"patient_id": "CLI9", "issuer": "HOSP-A", "event": "pci", "event_date": "2023-01-01"}])
        rc, out, _ = site.cli("import", str(mixed), "--dry-run")
        assert rc == 1  # a row would be rejected
        assert "DRY RUN" in out and "rejected unknown_patient: 1" in out
        printed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(printed) == 1 and printed[0]["event"] == "pci" and printed[0]["version"] == 1
        assert not mixed.with_name("mixed.csv.report.csv").exists()

        rc, out, _ = site.cli("import", str(mixed), "--dry-run", "--json")
        assert json.loads(out)["events"] == printed

        rc, out, _ = site.cli("import", str(mixed), "--json")
        assert rc == 1 and json.loads(out)["queued"] == 1
        assert [b for _k, b in site.outbox_events()][-1] == {**printed[0]}

        rc, _out, err = site.cli("import", str(tmp_path / "nope.csv"))
        assert rc == 2 and "does not exist" in err
        rc, _out, err = site.cli("inbox")
        assert rc == 2 and "no [followup] inbox" in err
    finally:
        site.close()


def test_cli_inbox_runs_the_inbox_once(tmp_path: Path) -> None:
    site, inbox = _inbox_site(tmp_path, settle=0.2)
    try:
        site.add_patient("IB1", study_date="20200101")
        site.close()
        f = write_csv(inbox / "f.csv", [{"patient_id": "IB1", "issuer": "HOSP-A", "event": "cabg",
                                         "event_date": "2021-01-01"}])
        time.sleep(0.3)  # settle
        rc, out, err = site.cli("inbox", "--json")
        assert rc == 0, err
        (entry,) = json.loads(out)["files"]
        assert entry["queued"] == 1 and "/done/" in entry["moved_to"] and not f.exists()
    finally:
        site.close()


def test_inbox_keeps_the_file_when_the_linkage_table_is_unavailable(tmp_path: Path) -> None:
    site, inbox = _inbox_site(tmp_path)
    try:
        site.add_patient("TR1", study_date="20200101")
        f = write_csv(inbox / "f.csv", [{"patient_id": "TR1", "issuer": "HOSP-A", "event": "death",
                                         "event_date": "2024-01-01"}])
        store = site.store()
        provider = site.provider()
        provider.close()  # e.g. the daemon is stopping, or the table is being restored
        assert process_inbox(site.config, store, provider, Outbox(store), today=TODAY, now=time.time() + 60) == []
        assert f.exists() and not (inbox / "done").exists() and not (inbox / "failed").exists()
        (summary,) = _process(site, later=60)  # next run, table back: imported
        assert summary.queued == 1 and not f.exists()
    finally:
        site.close()
