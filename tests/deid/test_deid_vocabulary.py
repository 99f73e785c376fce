"""The site's own vocabulary words, the suggestion command, the privacy report, and private blobs."""

from __future__ import annotations

import io
import json
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian

from connector.deid.engine import DeidEngine
from connector.deid.profile import shipped_rules_dir
from tests.deid.factory import Planted, StudyUids, base_dataset, encode
from tests.deid.test_deid_cli import cli
from tests.support.net import free_port


def test_site_words_are_kept_once_configured(tmp_path: Path, provider) -> None:
    ds = base_dataset()
    ds.SeriesDescription = "CTAC QUOKKAGATE 3mm"
    config = tmp_path / "connector.toml"
    (tmp_path / "words.txt").write_text("# our scanner's protocol words\nQUOKKAGATE\n")
    config.write_text('[storage]\ndata_dir = "data"\nfsync = false\n[deid]\nvocabulary_files = ["words.txt"]\n')
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(encode(ds))
    rc, out, err = cli("deid", "-c", str(config), str(tmp_path / "in"), str(tmp_path / "out"), "--ephemeral", "--json")
    assert rc == 0, err
    written = next((tmp_path / "out").rglob("*.dcm"))
    assert dcmread(written).SeriesDescription == "CTAC QUOKKAGATE 3mm"
    rc, _, err = cli("deid", str(tmp_path / "in"), str(tmp_path / "out2"), "--ephemeral")
    assert rc == 0 and dcmread(next((tmp_path / "out2").rglob("*.dcm"))).SeriesDescription == "CTAC *** 3mm"


def test_a_bad_site_word_stops_with_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text('[deid]\nextra_vocabulary = ["OK", "MRN48151623"]\n')
    rc, _out, err = cli("rules", "vocabulary", "-c", str(config))
    assert rc == 2
    assert "extra_vocabulary" in err and "letters" in err
    (tmp_path / "bad.txt").write_text("GOOD\nSMITH 555-0199\n")
    config.write_text('[deid]\nvocabulary_files = ["bad.txt"]\n')
    rc, _out, err = cli("rules", "vocabulary", "-c", str(config))
    assert rc == 2 and "bad.txt:2" in err


def test_suggest_proposes_common_impersonal_words_and_prints_no_patient(tmp_path: Path) -> None:
    folder = tmp_path / "studies"
    folder.mkdir()
    for i in range(25):
        p = Planted(patient_id=f"SYN{1000 + i}", family="BANDICOOT" if i < 22 else f"WALLABY{chr(65 + i)}")
        ds = base_dataset(p, StudyUids())
        ds.SeriesDescription = "CTAC WOMBATGATED BANDICOOT" + (" RAREWORD" if i < 3 else "")
        (folder / f"{i}.dcm").write_bytes(encode(ds))
    rc, out, err = cli("rules", "vocabulary", "--suggest", str(folder), "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["patients"] == 25
    words = {w["word"]: w["patients"] for w in result["proposed"]}
    assert words == {"WOMBATGATED": 25}  # BANDICOOT is a surname in the folder; RAREWORD has 3 patients
    assert "SYN1000" not in out and "BANDICOOT" not in out
    rc, out, _ = cli("rules", "vocabulary", "--suggest", str(folder), "--min-patients", "3", "--out",
                     str(tmp_path / "proposed.txt"))
    assert rc == 0 and "RAREWORD" in out and "RAREWORD" in (tmp_path / "proposed.txt").read_text()


def test_deid_json_reports_what_was_replaced_and_removed(tmp_path: Path) -> None:
    ds = base_dataset()
    ds.ImageComments = "Patient called 555-0199"
    ds.SeriesDescription = "CTAC SNORKELWAX 2024-03-12"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(encode(ds))
    rc, out, err = cli("deid", str(tmp_path / "in"), str(tmp_path / "out"), "--ephemeral", "--json")
    assert rc == 0, err
    (report,) = json.loads(out)["privacy"].values()
    assert report["objects"] == 1 and report["tokens_replaced"] >= 1 and report["spans_replaced"] >= 1
    assert "(0020,4000)" in report["removed_tags"] and "(0010,0010)" not in report["removed_tags"]
    assert "SNORKELWAX" not in out and "555-0199" not in out  # (a bare "555" may be part of a remapped UID)


def test_private_blobs_are_never_kept_even_when_listed_as_safe(provider) -> None:
    rules = [shipped_rules_dir() / "registry-default.yaml", shipped_rules_dir() / "ps3.15-retain-safe-private.yaml"]
    engine = DeidEngine.from_rules(rules, provider, fsync=False)
    for syntax in (None, ImplicitVRLittleEndian):
        ds = base_dataset()
        ge = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        ge.add_new(0x23, "DS", "39.37")  # Table Speed: safe, a number
        ge.add_new(0x24, "OB", b"ZEBRAFISH BLOB\x00\x01")  # a listed element holding an opaque blob
        ge.add_new(0x27, "UN", b"ZEBRAFISH UNKN")  # listed, but untyped
        data = encode(ds) if syntax is None else encode(ds, syntax)
        result = engine.process_bytes(data)
        assert result.status == "ok", result.reason
        out = dcmread(io.BytesIO(result.data))
        assert out[0x00191023].value in ("39.37", b"39.37 ")
        assert 0x00191024 not in out and 0x00191027 not in out
        assert b"ZEBRAFISH" not in result.data


def test_the_daemon_refuses_to_start_with_a_bad_vocabulary_file_or_rule_file(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    (tmp_path / "words.txt").write_text("GOOD\nMRN 12345678\n")
    config = tmp_path / "connector.toml"
    head = f'[storage]\ndata_dir = "data"\n[dicom]\nport = {free_port()}\n[http]\nenabled = false\n'
    config.write_text(head + '[deid]\nvocabulary_files = ["words.txt"]\n')
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "connector", "-c", str(config), "run"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "words.txt:2" in run.stderr and "vocabulary" in run.stderr
    assert time.monotonic() - started < 30
    (tmp_path / "site.yaml").write_text("format: 1\nrules:\n  - {keyword: NoSuchKeyword, action: remove}\n")
    config.write_text(head + '[deid]\nrules = ["registry-default.yaml", "site.yaml"]\n')
    run = subprocess.run([sys.executable, "-m", "connector", "-c", str(config), "run"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "de-identification rules have errors" in run.stderr, run.stderr[-2000:]
