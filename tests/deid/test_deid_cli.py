"""The offline command: ``site-connector deid`` and ``site-connector rules check|explain``."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files

from connector.cli.main import main as cli_main
from connector.config import load_config
from connector.linkage import create_key_file
from connector.linkage.paths import default_key_path
from tests.deid.factory import (
    Planted,
    StudyUids,
    add_private,
    base_dataset,
    encode,
    leaks,
    nest_phi,
)


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(list(args))
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site folder with a config and a linkage key, as ``site-connector init`` would leave it."""
    config_path = tmp_path / "connector.toml"
    config_path.write_text('[site]\nid = "TEST01"\n[storage]\ndata_dir = "data"\nfsync = false\n'
                           "[linkage]\nscrypt_log_n = 14\n")
    create_key_file(default_key_path(load_config(config_path, environ={})))
    return config_path


def mixed_folder(root: Path) -> dict[str, str]:
    """Good objects, junk, a truncated file and a DICOMDIR; returns file -> expected reason."""
    (root / "a" / "b").mkdir(parents=True)
    uids = StudyUids()
    for i in range(3):
        ds = base_dataset(uids=uids, instance=i + 1)
        add_private(ds)
        nest_phi(ds, 3)
        (root / "a" / f"IMG{i}").write_bytes(encode(ds))
    (root / "a" / "b" / "notes.txt").write_text("ZEBRAFISH appointment\n")
    (root / "a" / "b" / "empty.dcm").write_bytes(b"")
    (root / "a" / "b" / "cut.dcm").write_bytes(encode(base_dataset())[:-7])
    shutil.copy(get_testdata_file("DICOMDIR"), root / "DICOMDIR")
    return {"a/b/notes.txt": "not-dicom", "a/b/empty.dcm": "not-dicom", "a/b/cut.dcm": "truncated",
            "DICOMDIR": "dicomdir"}


def test_deid_folder_with_the_sites_linkage(tmp_path: Path, site: Path) -> None:
    expected = mixed_folder(tmp_path / "in")
    rc, out, err = cli("-c", str(site), "deid", str(tmp_path / "in"), str(tmp_path / "out"), "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["deidentified"] == 3
    assert {q["file"]: q["reason"] for q in summary["quarantined"]} == expected
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 3
    for f in files:
        ds = dcmread(f)
        assert f.parent.parent.name == ds.StudyInstanceUID and f.parent.name == ds.SeriesInstanceUID
        assert f.name == f"{ds.SOPInstanceUID}.dcm"
        assert str(ds.PatientID).startswith("TEST01-")
        assert leaks(f.read_bytes()) == []
    quarantine = tmp_path / "data" / "quarantine" / "deid"
    assert len(list(quarantine.glob("*.json"))) == 4  # the daemon's quarantine, with reasons
    assert leaks(err.encode()) == [] and leaks(out.encode()) == []

    # A second run (a new process for the linkage table) gives the same pseudonym and UIDs.
    rc, _out, _err = cli("-c", str(site), "deid", str(tmp_path / "in" / "a"), str(tmp_path / "out2"), "--json")
    assert rc == 0
    assert sorted(p.relative_to(tmp_path / "out2") for p in (tmp_path / "out2").rglob("*.dcm")) == \
        sorted(p.relative_to(tmp_path / "out") for p in files)
    assert {str(dcmread(p).PatientID) for p in (tmp_path / "out2").rglob("*.dcm")} == \
        {str(dcmread(p).PatientID) for p in files}


def test_every_pydicom_test_file_goes_through_deid(tmp_path: Path) -> None:
    source = Path(get_testdata_file("CT_small.dcm")).parent
    rc, out, err = cli("deid", str(source), str(tmp_path / "out"), "--quarantine", str(tmp_path / "q"),
                       "--ephemeral", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    handled = summary["deidentified"] + len(summary["quarantined"]) + len(summary["skipped"])
    assert handled == sum(1 for p in source.rglob("*") if p.is_file())
    assert summary["failed"] == []
    assert summary["deidentified"] >= 90  # most of them are real instances
    assert "Traceback" not in err
    for f in (tmp_path / "out").rglob("*.dcm"):
        ds = dcmread(f)
        assert ds.PatientIdentityRemoved == "YES" and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert len(get_testdata_files()) > 100


def test_deid_refuses_bad_rules_with_usage_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: 1\nrules:\n  - {keyword: Nope, action: keep}\n")
    (tmp_path / "in").mkdir()
    rc, _out, err = cli("deid", str(tmp_path / "in"), str(tmp_path / "out"), "--rules", str(bad), "--ephemeral")
    assert rc == 2 and "bad.yaml:3" in err


def test_rules_check_reports_lines_and_exit_codes(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "rules"
    rc, out, _ = cli("rules", "check", *(str(p) for p in sorted(shipped.glob("*.yaml"))))
    assert rc == 0 and out.count(": ok (") == len(list(shipped.glob("*.yaml")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: 1\nrules:\n  - {keyword: PatientName, action: keep}\n  - {vr: XX, action: keep}\n")
    rc, out, _ = cli("rules", "check", str(bad), "--json")
    assert rc == 1
    report = json.loads(out)
    assert report["ok"] is False and report["files"][0]["errors"] == ["bad.yaml:4: unknown VR 'XX'"]


def test_rules_explain(tmp_path: Path) -> None:
    rc, out, _ = cli("rules", "explain", "PatientAge")
    assert rc == 0
    assert "cap_age" in out and "registry-default.yaml:" in out and "overrides" in out
    rc, out, _ = cli("rules", "explain", "(0010,1010)", "--json")
    assert json.loads(out)["rule"]["action"] == "cap_age"
    rc, _out, err = cli("rules", "explain", "(0019,1023)")
    assert rc == 2 and "--creator" in err
    rc, out, _ = cli("rules", "explain", "(0019,1023)", "--creator", "GEMS_ACQU_01", "--json")
    assert json.loads(out)["action"] == "remove"  # the default keeps no private element


def test_help_everywhere() -> None:
    for args in (["deid", "--help"], ["rules", "--help"], ["rules", "check", "--help"], ["rules", "explain", "--help"]):
        rc, out, _ = cli(*args)
        assert rc == 0 and "usage:" in out


def test_planted_values_never_reach_the_console(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    weak = tmp_path / "weak.yaml"
    weak.write_text("format: 1\ninclude: [registry-default.yaml]\nrules:\n  - {keyword: StudyDescription, action: keep}\n")
    (tmp_path / "in" / "x.dcm").write_bytes(encode(base_dataset()))
    rc, out, err = cli("deid", str(tmp_path / "in"), str(tmp_path / "out"), "--rules", str(weak),
                       "--quarantine", str(tmp_path / "q"), "--ephemeral")
    assert rc == 0 and "phi-guard:" in out
    assert leaks((out + err).encode(), Planted()) == []
    assert json.loads(next((tmp_path / "q" / "deid").glob("*.json")).read_text())["reason"].startswith("phi-guard:")
