"""``site-connector backfill``: usage errors, exit codes and JSON, without and with a PACS (real Orthanc)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connector.cli.main import main
from tests.backfill.conftest import PACS_AET, load, register_connector


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SITE_CONNECTOR_CONFIG", raising=False)
    monkeypatch.setenv("SITE_CONNECTOR__STORAGE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES", "0")
    return tmp_path


def test_usage_errors_and_no_pacs(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backfill", "add", "--from", "2024-03-01", "--to", "2024-03-02"]) == 2
    assert "no PACS configured" in capsys.readouterr().err
    assert main(["backfill", "status"]) == 3  # no state database yet
    with pytest.raises(SystemExit) as info:
        main(["backfill", "add", "--from", "2024-13-01", "--to", "2024-03-02"])
    assert info.value.code == 2


def test_add_dry_run_accessions_and_job_states(env: Path, orthanc, catalogue, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    load(orthanc, [catalogue["ct2"], catalogue["petct3"]])
    register_connector(orthanc, 1)
    monkeypatch.setenv("SITE_CONNECTOR__PACS__HOST", "127.0.0.1")
    monkeypatch.setenv("SITE_CONNECTOR__PACS__PORT", str(orthanc.dicom_port))
    monkeypatch.setenv("SITE_CONNECTOR__PACS__AE_TITLE", PACS_AET)
    assert main(["backfill", "add", "--from", "2024-03-03", "--to", "2024-03-01"]) == 2  # reversed range
    capsys.readouterr()
    assert main(["backfill", "add", "--from", "2024-03-01", "--to", "2024-03-05", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["studies_found"], dry["job"], dry["instances"], dry["queries"]) == (2, None, 3, 1)
    assert (dry["query_mode"], dry["splits"]) == ("range", 0)
    accessions = env / "accessions.txt"
    accessions.write_text(f"# from the study team\n{catalogue['ct2'].study.accession}\n\n")
    assert main(["backfill", "add", "--accessions", str(accessions), "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["studies_found"], added["job"], added["queued"], added["filters"]["accessions"]) == (1, 1, 1, 1)
    assert catalogue["ct2"].study.accession not in json.dumps(added)  # only the list's length is kept
    accessions.write_text("A*\n")
    assert main(["backfill", "add", "--accessions", str(accessions)]) == 2
    assert "entry 1" in capsys.readouterr().err
    assert main(["backfill", "pause", "1", "--json"]) == 0 and json.loads(capsys.readouterr().out)["state"] == "paused"
    assert main(["backfill", "run", "1", "--json"]) == 1 and "resume 1" in capsys.readouterr().err
    assert main(["backfill", "resume", "1"]) == 0
    assert main(["backfill", "pause", "7"]) == 2
    capsys.readouterr()
    monkeypatch.setenv("SITE_CONNECTOR__PACS__RETRIEVE", "get")
    assert main(["backfill", "run", "1", "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert (run["retrieved"], run["instances"], run["studies"]["retrieved"]) == (1, 1, 1)
    assert main(["backfill", "status", "--json"]) == 0
    [job] = json.loads(capsys.readouterr().out)["jobs"]
    assert (job["state"], job["retrieved"], job["found"]) == ("done", 1, 1)
    assert main(["backfill", "cancel", "1"]) == 1  # done: nothing to cancel
    monkeypatch.setenv("SITE_CONNECTOR__PACS__TLS", "true")
    monkeypatch.setenv("SITE_CONNECTOR__PACS__TLS_CA_FILE", str(env / "missing-ca.pem"))
    assert main(["backfill", "add", "--from", "2024-03-01", "--to", "2024-03-01"]) == 2
    assert main(["echo", "--pacs"]) == 2
    assert capsys.readouterr().err.count("[pacs] tls_ca_file cannot be loaded") == 2
    monkeypatch.delenv("SITE_CONNECTOR__PACS__TLS")
    monkeypatch.delenv("SITE_CONNECTOR__PACS__TLS_CA_FILE")
    monkeypatch.setenv("SITE_CONNECTOR__PACS__PORT", "1")
    assert main(["backfill", "add", "--from", "2024-03-01", "--to", "2024-03-01"]) == 3
    assert "echo --pacs" in capsys.readouterr().err
