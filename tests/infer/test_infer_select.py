"""Series selection rules on synthetic studies (headers only, so tiny images suffice)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import PositronEmissionTomographyImageStorage, generate_uid

from connector.infer.select import has_keyword, select_series
from connector.settings.cac import CacConfig
from connector.synthetic.phantom_series import write_phantom_series

RULES = CacConfig()


def series(
    folder: Path,
    study_uid: str,
    *,
    n: int = 40,
    increment: float = 3.0,
    thickness: float | None = None,
    description: str = "CTAC 3.0 mm",
    **extra: object,
) -> list[Path]:
    hu = np.zeros((n, 8, 8), dtype=np.int16)
    z = increment * np.arange(n)
    return write_phantom_series(
        hu, z, 1.0, folder, thickness=thickness, study_uid=study_uid, description=description, extra=dict(extra)
    )


def test_picks_the_ctac_and_rejects_the_rest_with_reasons(tmp_path: Path) -> None:
    study = generate_uid()
    good = series(tmp_path / "ctac", study)
    paths = list(good)
    paths += series(
        tmp_path / "scout", study, n=12, description="Topogram 0.6", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]
    )
    paths += series(tmp_path / "thin", study, increment=0.625, n=200, thickness=0.625, description="Chest 0.625")
    paths += series(tmp_path / "short", study, n=12, description="CTAC short")  # 36 mm: does not cover the heart
    paths += series(tmp_path / "sag", study, description="Sagittal", ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    paths += series(tmp_path / "cta", study, description="CTA coronary")
    paths += series(tmp_path / "contrast", study, description="Chest", ContrastBolusAgent="Iohexol")
    paths += series(
        tmp_path / "pet",
        study,
        n=20,
        description="PET AC",
        Modality="PT",
        SOPClassUID=PositronEmissionTomographyImageStorage,
    )
    (tmp_path / "notes.txt").write_text("not dicom")
    paths.append(tmp_path / "notes.txt")

    selection = select_series(paths, RULES)
    assert len(selection.eligible) == 1
    best = selection.eligible[0]
    assert set(best.paths) == set(good)
    assert best.slices == 40 and best.preferred_description
    assert best.coverage_mm == pytest.approx(39 * 3 + 3)
    assert sorted(selection.rejected.values()) == sorted(
        ["localizer", "slice_thickness", "coverage", "not_axial", "description_excluded", "contrast", "not_ct"]
    )
    assert selection.unreadable_files == 1


def test_ranking_prefers_described_ctac_then_3mm(tmp_path: Path) -> None:
    study = generate_uid()
    plain5 = series(tmp_path / "a", study, increment=5.0, n=30, description="Body 5mm")
    plain3 = series(tmp_path / "b", study, description="Body 3mm")
    ctac4 = series(tmp_path / "c", study, increment=4.0, n=30, description="CT AC 4.0")
    selection = select_series(plain5 + plain3 + ctac4, dataclasses.replace(RULES, max_series_per_study=3))
    assert [set(c.paths) for c in selection.eligible] == [set(ctac4), set(plain3), set(plain5)]
    capped = select_series(plain5 + plain3 + ctac4, dataclasses.replace(RULES, max_series_per_study=1))
    assert len(capped.eligible) == 1


def test_optional_rules_emission_and_description(tmp_path: Path) -> None:
    study = generate_uid()
    ct = series(tmp_path / "ct", study, description="Chest low res")
    strict = dataclasses.replace(RULES, require_emission_series=True)
    assert select_series(ct, strict).rejected and not select_series(ct, strict).eligible
    pet = series(tmp_path / "pet", study, n=5, Modality="PT", SOPClassUID=PositronEmissionTomographyImageStorage)
    assert len(select_series(ct + pet, strict).eligible) == 1
    named = dataclasses.replace(RULES, require_description_match=True)
    assert list(select_series(ct, named).rejected.values()) == ["description_not_preferred"]
    assert len(select_series(ct, RULES).eligible) == 1


def test_keywords_match_whole_words() -> None:
    assert has_keyword("CTAC 3.75 Thick", ["ctac"])
    assert not has_keyword("CTAC 3.75 Thick", ["cta"])
    assert has_keyword("CT-AC HD", ["ct ac"])
    assert has_keyword("Cardiac Ca Score", ["ca score"])
    assert not has_keyword("Cardiac", ["ac"])


def test_selection_logs_counts_not_identifiers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = generate_uid()
    paths = series(tmp_path / "ct", study) + series(tmp_path / "cta", study, description="CTA")
    with caplog.at_level(logging.DEBUG, logger="connector.infer"):
        selection = select_series(paths, RULES)
    assert selection.eligible
    assert "eligible=1" in caplog.text
    assert study not in caplog.text
    assert all(uid not in caplog.text for uid in selection.rejected)
    assert "PHANTOM" not in caplog.text
