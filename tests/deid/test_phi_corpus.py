"""Issue 12, "what it must show", offline: the synthetic PHI corpus (tests/deid/phi_corpus.py) through
``site-connector deid --ephemeral --json`` and through the engine in-process.

* every object has its expected outcome: clean and PHI-laden CT/PET and the SR are written (quarantining
  everything is not a pass), the PDF, the ultrasound image and the screen save are quarantined;
* a byte scan of every output finds no canary (ASCII, Latin-1, UTF-8, UTF-16, ISO-2022-JP) and no
  original Study, Series, SOP Instance or Frame of Reference UID;
* the corpus really is dangerous: the same scan finds every canary and every UID in the inputs;
* safe descriptions survive (blanking everything is not a pass either), and with the Clean Structured
  Content option the SR keeps its TEXT, PNAME and DATE items, cleaned.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider
from tests.deid.phi_corpus import QUARANTINED, WRITTEN, Corpus, locate, scan, write_corpus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"


@dataclass
class CliRun:
    corpus: Corpus
    out: Path
    quarantine: Path
    summary: dict[str, Any]
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("phi-corpus") / "in")


@pytest.fixture(scope="module")
def cli_run(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    base = tmp_path_factory.mktemp("phi-corpus-deid")
    out, quarantine = base / "out", base / "quarantine"
    proc = subprocess.run([sys.executable, "-m", "connector", "deid", str(corpus.folder), str(out), "--ephemeral",
                           "--json", "--quarantine", str(quarantine)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return CliRun(corpus, out, quarantine, json.loads(proc.stdout), proc.stdout, proc.stderr)


def _leak_report(label: str, data: bytes, corpus: Corpus) -> str:
    lines = locate(data, corpus)
    planted = {c: corpus.where.get(c, []) for c in scan(data, corpus)}
    return (f"{label}:\n    " + "\n    ".join(lines) + "\n    planted at: "
            + "; ".join(f"{c} <- {', '.join(w) or 'original UID'}" for c, w in planted.items()))


def test_the_corpus_is_dangerous(corpus: Corpus) -> None:
    """Scanning the inputs finds every canary and every original UID (so the output scans can fail),
    and the corpus plants what issue 12 lists."""
    found: set[str] = set()
    for path in sorted(corpus.folder.iterdir()):
        found.update(scan(path.read_bytes(), corpus))
    assert [c for c in corpus.canaries if c not in found] == []
    assert sorted(corpus.original_uids - found) == []
    assert sorted(p.name for p in corpus.folder.iterdir()) == sorted(corpus.files)
    written = corpus.written
    assert sum(n.startswith("s1_ct_clean") for n in written) >= 2
    assert sum(n.startswith("s1_pet_clean") for n in written) >= 2
    assert {"s1_pdf_report.dcm", "s1_us_image.dcm", "s1_sc_screensave.dcm", "s1_sr_comprehensive.dcm"} \
        == set(corpus.quarantined)
    # the classes of issue 12 are all there
    wheres = " ".join(w for ws in corpus.where.values() for w in ws)
    for needle in ("StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments", "PatientComments",
                   "AdditionalPatientHistory", "RequestedProcedureComments", "private SQ", "OB blob",
                   "safe creator", "file meta SourceApplicationEntityTitle", "OverlayData", "OverlayComments",
                   "IconImageSequence", "EncapsulatedDocument", "TEXT TextValue", "PNAME", "DATE"):
        assert needle in wheres, needle
    for non_ascii in ("MÜLLERSOHN", "ŁUKASZEWSKIQ", "ЖДАНОВИЧЕВА", "鰐淵川"):
        assert non_ascii in corpus.canaries
    phones = ["555-0199", "(555) 867-5309", "+1 555 867 5309", "555.867.5309", "+44 20 7946 0958", "07700 900123"]
    dates = ["2009-08-27", "27/08/2009", "27 Aug 2009", "August 27, 2009", "27.08.09"]
    assert all(p in corpus.canaries for p in phones) and all(d in corpus.canaries for d in dates)
    # the scanner itself: every encoding, case-insensitive where single-byte, never a prefix UID
    assert scan("wombatson".encode("utf-16-le"), corpus) == ["WOMBATSON"]
    assert scan("müllersohn".encode("latin-1"), corpus) == ["MÜLLERSOHN", "LLERSOHN"]
    assert "鰐淵川" in scan("様鰐淵川".encode("iso2022_jp"), corpus)
    uid = sorted(corpus.original_uids)[0]
    assert scan((uid + "1").encode(), corpus) == [] and scan(uid.encode() + b"\0", corpus) == [uid]
    assert scan(b"2.25.1234848151623999", corpus) == []  # a hashed UID's digits are no planted number


def test_deid_command_outcomes(cli_run: CliRun) -> None:
    """Written objects come out, quarantined ones do not; nothing fails or is skipped."""
    corpus, summary = cli_run.corpus, cli_run.summary
    quarantined = {q["file"]: q["reason"] for q in summary["quarantined"]}
    wrong = []
    for name, expected in sorted(corpus.files.items()):
        got = QUARANTINED if name in quarantined else WRITTEN
        if got != expected.outcome:
            wrong.append(f"{name}: expected {expected.outcome} ({expected.why}), got {got}"
                         + (f" ({quarantined[name]})" if name in quarantined else ""))
    assert summary["failed"] == [] and summary["skipped"] == []
    assert wrong == [], "outcomes differ:\n  " + "\n  ".join(wrong)
    outputs = sorted(cli_run.out.rglob("*.dcm"))
    assert summary["deidentified"] == len(corpus.written) == len(outputs)


def test_deid_command_outputs_hold_no_canary_and_no_original_uid(cli_run: CliRun) -> None:
    """Byte scan of every file the command wrote (any name, any depth), and of its console output."""
    corpus = cli_run.corpus
    outputs = sorted(p for p in cli_run.out.rglob("*") if p.is_file())
    assert outputs, "nothing was written (quarantining everything is not a pass)"
    leaks = [_leak_report(str(p.relative_to(cli_run.out)), p.read_bytes(), corpus)
             for p in outputs if scan(p.read_bytes(), corpus)]
    for label, text in (("stdout", cli_run.stdout), ("stderr", cli_run.stderr)):
        if scan(text.encode(), corpus):
            leaks.append(f"{label}: {scan(text.encode(), corpus)}")
    assert leaks == [], f"{len(leaks)} of {len(outputs)} outputs leak:\n" + "\n".join(leaks)


def test_engine_in_process_per_object(corpus: Corpus, engine: DeidEngine) -> None:
    """The same, object by object through the engine (names the object that leaks or is misrouted)."""
    problems = []
    for name, expected in sorted(corpus.files.items()):
        result = engine.process_path(corpus.folder / name)
        got = WRITTEN if result.status == "ok" else QUARANTINED
        if got != expected.outcome:
            problems.append(f"{name}: expected {expected.outcome} ({expected.why}), got {result.status} "
                            f"{result.reason}".rstrip())
        if result.status == "ok":
            assert result.data is not None
            if scan(result.data, corpus):
                problems.append(_leak_report(name, result.data, corpus))
            if "_clean_" in name:  # safe descriptions survive as they are: CAC series selection reads them
                before = dcmread(corpus.folder / name, stop_before_pixels=True)
                after = dcmread(io.BytesIO(result.data), stop_before_pixels=True)
                for keyword in ("StudyDescription", "SeriesDescription", "ProtocolName"):
                    if str(after.get(keyword, "")) != str(before.get(keyword, "")):
                        problems.append(f"{name}: {keyword} {str(before.get(keyword, ''))!r} became "
                                        f"{str(after.get(keyword, ''))!r}")
    assert problems == [], "\n".join(problems)


def test_structured_content_option_cleans_sr_items_without_leaking(corpus: Corpus,
                                                                    provider: EphemeralIdentityProvider) -> None:
    """With the Clean Structured Content option on top of the default, the SR keeps its content tree
    (TEXT, PNAME, DATE items inside nested CONTAINERs) cleaned: no canary, the DATE shifted."""
    engine = DeidEngine.from_rules([RULES / "registry-default.yaml", RULES / "ps3.15-clean-structured-content.yaml",
                                    RULES / "object-classes-structured-reports.yaml"], provider, fsync=False)
    result = engine.process_path(corpus.folder / "s1_sr_comprehensive.dcm")
    assert result.status == "ok", (result.reason, result.details)
    assert result.data is not None
    assert scan(result.data, corpus) == [], _leak_report("s1_sr_comprehensive.dcm", result.data, corpus)
    ds = dcmread(io.BytesIO(result.data))
    items = {}

    def walk(seq: object) -> None:
        for it in seq:  # type: ignore[attr-defined]
            items.setdefault(str(it.ValueType), []).append(it)
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.get("ContentSequence", []))
    assert set(items) >= {"CONTAINER", "TEXT", "PNAME", "DATE"}, f"content items kept: {sorted(items)}"
    assert len(items["TEXT"]) == 2
    assert all(str(d.Date) != "19700619" and len(str(d.Date)) == 8 for d in items["DATE"])
