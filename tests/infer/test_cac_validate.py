"""``site-connector cac validate`` on a synthetic site: 20 phantom studies received through the real
intake (spool + state DB), references from the phantoms' exact Agatston scores, two of them
deliberately wrong. The command must find the studies (10 by accession number, 10 by study key),
score them as the daemon does, and report the expected table, kappa and exactly the two
disagreements; the run is recorded; the HTML report's PNGs open and show the points; no accession
number reaches the output, the report or the state DB unless asked for.

The model is pinned to ``models/cac-synthetic-v2`` (the references agree with it on these phantoms:
categories checked with margins when the seeds were chosen), so a change of the bundled default
does not change what this test expects. Small series: 256 x 256 pixels of 1.6 mm, heart only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from connector.cli.main import main
from connector.config import load_config
from connector.infer.agatston import CATEGORIES, agatston, category_for
from connector.infer.validation_store import last_runs_per_model
from connector.ingest.intake import Intake
from connector.synthetic.phantom_series import write_phantom
from connector.synthetic.phantoms import make_phantom
from connector.store.layout import SiteLayout
from connector.site_db import open_state
from connector.store.state import study_key

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "cac-synthetic-v2"
SIZE, SPACING = 256, 1.6
# (seed, plaques): five studies per category, chosen so that v2's category equals the truth's with margin
STUDIES = [(300, 0), (301, 0), (302, 0), (303, 0), (304, 0),
           (310, 1), (311, 1), (312, 1), (313, 1), (315, 1),
           (316, 1), (317, 1), (320, 3), (326, 3), (322, 3),
           (330, 10), (331, 10), (332, 10), (333, 10), (335, 10)]
WRONG = {332: 0.0, 312: 250.0}  # a >400 study read as 0; a 1-100 study read as 250


@dataclass
class SyntheticSite:
    root: Path
    config: Path
    truth: dict[int, float]
    keys: dict[int, str]
    accession: dict[int, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSite:
    root = tmp_path_factory.mktemp("valsite")
    config = root / "connector.toml"
    config.write_text(f'[site]\nid = "VALSITE"\n[storage]\ndata_dir = "data"\nmin_free_bytes = 0\nfsync = false\n'
                      f'[cac]\nmodel_dir = "{MODEL}"\nthreads = 2\n')
    cfg = load_config(config, environ={})
    layout = SiteLayout.from_config(cfg)
    layout.ensure()
    store = open_state(layout.state_db)
    intake = Intake(layout, store, min_free_bytes=0, fsync=False)
    truth, keys, accession = {}, {}, {}
    for seed, plaques in STUDIES:
        ph = make_phantom(seed, plaque_count=plaques, size=SIZE, spacing=SPACING, z_margin=0.0)
        truth[seed] = agatston(ph.hu.astype(np.float32), ph.coronary, (SPACING, SPACING), ph.increment).score
        uid = generate_uid()
        accession[seed] = f"ACCVAL{seed}"
        for path in write_phantom(ph, root / "pacs" / str(seed), study_uid=uid,
                                  extra={"AccessionNumber": accession[seed], "PatientID": f"PATVAL{seed}"}):
            intake.ingest_external(path)
        keys[seed] = study_key(uid)
    store.close()
    return SyntheticSite(root, config, truth, keys, accession)


def reference_csv(site: SyntheticSite, path: Path, extra: str = "") -> Path:
    lines = ["study,agatston"]
    for i, (seed, _) in enumerate(STUDIES):
        ident = site.accession[seed] if i % 2 == 0 else site.keys[seed]
        lines.append(f"{ident},{WRONG.get(seed, round(site.truth[seed], 1))}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def expected_table(site: SyntheticSite) -> list[list[int]]:
    table = [[0] * 4 for _ in range(4)]
    for seed, _ in STUDIES:
        ref = category_for(WRONG.get(seed, round(site.truth[seed], 1)))
        table[CATEGORIES.index(ref)][CATEGORIES.index(category_for(site.truth[seed]))] += 1
    return table


def kappa_from_table(table: list[list[int]]) -> float:
    """Linear-weighted kappa written out from its definition (independent of connector.infer.agreement)."""
    n = sum(map(sum, table))
    rows = [sum(r) / n for r in table]
    cols = [sum(table[i][j] for i in range(4)) / n for j in range(4)]
    observed = sum(table[i][j] / n * abs(i - j) / 3 for i in range(4) for j in range(4))
    expected = sum(rows[i] * cols[j] * abs(i - j) / 3 for i in range(4) for j in range(4))
    return 1 - observed / expected


@pytest.fixture(scope="module")
def validated(site: SyntheticSite, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("valout")
    csv = reference_csv(site, out / "reference.csv")
    import contextlib
    import io

    buffer = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = main(["-c", str(site.config), "cac", "validate", str(csv), "--json", "--html", str(out / "report")])
    seconds = time.perf_counter() - started
    print(f"cac validate: {len(STUDIES)} studies in {seconds:.1f} s")
    return {"code": code, "payload": json.loads(buffer.getvalue()), "report": out / "report", "csv": csv,
            "seconds": seconds}


def test_the_references_agree_with_the_pinned_model_except_the_two_wrong_ones(site: SyntheticSite,
                                                                            validated: dict) -> None:
    # What the test's expectations rest on: every category present five times in the truth.
    assert sorted(category_for(v) for v in site.truth.values()) == sorted(CATEGORIES * 5)
    assert validated["code"] == 0
    payload = validated["payload"]
    assert payload["references"] == payload["compared"] == 20
    assert payload["not_found"] == payload["not_scored"] == 0
    assert payload["model"]["sha256"] == json.loads((MODEL / "manifest.json").read_text())["sha256"]


def test_table_kappa_and_exactly_the_two_disagreements(site: SyntheticSite, validated: dict) -> None:
    payload = validated["payload"]
    table = expected_table(site)
    assert table == [[5, 0, 0, 1], [0, 4, 0, 0], [0, 1, 5, 0], [0, 0, 0, 4]]
    assert payload["agreement"]["table"] == table
    assert payload["agreement"]["linear_weighted_kappa"] == pytest.approx(kappa_from_table(table), abs=1e-4)
    assert payload["agreement"]["linear_weighted_kappa"] == pytest.approx(0.84, abs=1e-4)
    assert payload["agreement"]["category_agreement"] == 18
    found = {d["study_key"]: d for d in payload["disagreements"]}
    assert set(found) == {site.keys[s] for s in WRONG}
    assert found[site.keys[332]]["reference_category"] == "0" and found[site.keys[332]]["model_category"] == ">400"
    assert found[site.keys[312]]["reference_category"] == "101-400"
    assert found[site.keys[312]]["model_category"] == "1-100"
    lines = {s: i + 2 for i, (s, _) in enumerate(STUDIES)}
    assert {d["line"] for d in payload["disagreements"]} == {lines[332], lines[312]}


def test_bland_altman_and_rho_match_the_studies_listed(validated: dict) -> None:
    payload = validated["payload"]
    ref = np.array([s["reference"] for s in payload["studies"]])
    mod = np.array([s["model"] for s in payload["studies"]])
    diff = mod - ref
    ba = payload["agreement"]["bland_altman"]
    assert ba["bias"] == pytest.approx(diff.mean(), abs=1e-3)
    assert ba["lower"] == pytest.approx(diff.mean() - 1.96 * diff.std(ddof=1), abs=1e-3)
    assert ba["upper"] == pytest.approx(diff.mean() + 1.96 * diff.std(ddof=1), abs=1e-3)
    # the two wrong references dominate the bias: +1,293 (read as 0) and -189 (read as 250)
    assert 40 < ba["bias"] < 80
    rho = payload["agreement"]["spearman_rho"]
    assert 0.6 < rho < 0.95  # ranks mostly kept; the two wrong reads pull it below 1


def test_the_run_is_recorded_per_model_without_identifiers(site: SyntheticSite, validated: dict) -> None:
    store = open_state(site.root / "data" / "state" / "state.db")
    try:
        [last] = last_runs_per_model(store.conn)
        assert last["n"] == 20 and last["disagreements"] == 2 and last["runs"] == 1
        assert last["kappa"] == pytest.approx(0.84, abs=1e-4)
        assert last["model_sha256"] == validated["payload"]["model"]["sha256"]
        assert last["model_validated"] is False
        assert last["detail"]["table"] == validated["payload"]["agreement"]["table"]
        dump = "\n".join(store.conn.iterdump())
    finally:
        store.close()
    for seed in site.accession:
        assert site.accession[seed] not in dump


def test_no_accession_number_in_the_output_or_the_report(site: SyntheticSite, validated: dict) -> None:
    text = json.dumps(validated["payload"])
    report = "".join(p.read_text(errors="replace") for p in validated["report"].iterdir() if p.suffix != ".png")
    for acc in site.accession.values():
        assert acc not in text and acc not in report
    assert "ACCVAL" in validated["csv"].read_text()  # the references did name them


def test_the_html_report_pngs_open_and_show_the_points(validated: dict) -> None:
    from PIL import Image

    folder: Path = validated["report"]
    index = (folder / "index.html").read_text()
    assert "scatter.png" in index and "bland-altman.png" in index and "0.840" in index
    figures = json.loads((folder / "figures.json").read_text())
    assert figures["scatter"]["points"] == 20 and figures["scatter"]["disagree"] == 2
    assert figures["bland_altman"]["points"] == 20 and figures["bland_altman"]["disagree"] == 2
    ba = validated["payload"]["agreement"]["bland_altman"]
    assert figures["bland_altman"]["lines"]["bias"] == pytest.approx(ba["bias"], abs=1e-3)
    for name in ("scatter.png", "bland-altman.png"):
        with Image.open(folder / name) as img:
            assert img.format == "PNG" and img.width > 600 and img.height > 500
            rgb = np.asarray(img.convert("RGB")).astype(int)
        for colour, least in ((figures["scatter"]["colours"]["agree"], 60), (figures["scatter"]["colours"]["disagree"], 20)):
            target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
            close = (np.abs(rgb - target).sum(axis=2) < 30).sum()
            assert close >= least, (name, colour, close)  # the markers were drawn


def test_text_output_names_studies_by_key_and_line(site: SyntheticSite, validated: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Two rows only (fast): one real study, one accession unknown here; exit 1 (a row not compared).
    csv = tmp_path / "two.csv"
    csv.write_text(f"{site.accession[301]},0\nACCNOSUCH,12\n")
    assert main(["-c", str(site.config), "cac", "validate", str(csv)]) == 1
    out = capsys.readouterr().out
    assert "compared: 1; not found on this site: 1" in out
    assert "reference line 2: not found" in out
    assert "ACCNOSUCH" not in out and site.accession[301] not in out
    assert main(["-c", str(site.config), "cac", "validate", str(csv), "--json", "--show-accession"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["studies"][0]["accession_number"] == site.accession[301]  # asked for: shown
    assert main(["-c", str(site.config), "cac", "validate", str(tmp_path / "missing.csv")]) == 2
    csv.write_text(f"{site.accession[301]},abc\n{site.accession[302]},x\n")
    assert main(["-c", str(site.config), "cac", "validate", str(csv)]) == 2
    assert site.accession[301] not in capsys.readouterr().err


def test_a_study_without_an_eligible_series_is_listed_not_scored(site: SyntheticSite, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(site.config, environ={})
    layout = SiteLayout.from_config(cfg)
    store = open_state(layout.state_db)
    uid = generate_uid()
    ph = make_phantom(300, plaque_count=0, size=64, spacing=6.0, n_slices=5)  # 5 slices: too short a series
    for path in write_phantom(ph, tmp_path / "short", study_uid=uid, extra={"AccessionNumber": "ACCSHORT"}):
        Intake(layout, store, min_free_bytes=0, fsync=False).ingest_external(path)
    store.close()
    csv = tmp_path / "short.csv"
    csv.write_text(f"ACCSHORT,10\n{site.keys[300]},0\n")
    assert main(["-c", str(site.config), "cac", "validate", str(csv), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["not_scored"] == 1 and payload["compared"] == 1
    [short] = [s for s in payload["studies"] if s["status"] == "not_scored"]
    assert short["reason"] == "no_eligible_series" and short["study_key"] == study_key(uid) and short["line"] == 1
    assert main(["-c", str(site.config), "cac", "validate", str(csv)]) == 1
    assert f"reference line 1: study {study_key(uid)} not scored (no_eligible_series)" in capsys.readouterr().out
    store = open_state(layout.state_db)  # the originals leave the spool (retention): said so, not "not found"
    for row in store.study_instances(study_key(uid)):
        (layout.spool / row["path"]).unlink()
    store.close()
    csv.write_text(f"{study_key(uid)},10\n")
    assert main(["-c", str(site.config), "cac", "validate", str(csv), "--json"]) == 1
    [gone] = json.loads(capsys.readouterr().out)["studies"]
    assert gone["status"] == "not_scored" and gone["reason"] == "originals_not_on_spool"


def test_min_kappa_sets_the_exit_code(site: SyntheticSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "three.csv"
    csv.write_text("".join(f"{site.keys[s]},{round(site.truth[s], 1)}\n" for s in (300, 310, 330)))
    assert main(["-c", str(site.config), "cac", "validate", str(csv), "--min-kappa", "0.9"]) == 0
    csv.write_text(f"{site.keys[300]},500\n{site.keys[310]},{round(site.truth[310], 1)}\n"
                   f"{site.keys[330]},0\n")
    assert main(["-c", str(site.config), "cac", "validate", str(csv), "--min-kappa", "0.9"]) == 1
    assert "disagreements (category differs): 2" in capsys.readouterr().out
