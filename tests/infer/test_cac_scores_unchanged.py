"""The streaming pipeline (issue 29, item 4: speed and memory) scores exactly as the one it replaced.

The expected values below were computed with the code before the change (commit c863fe6: the whole
series in float32, the heart region and the model on whole-volume arrays), on the bundled models
v1 and v2 and on phantoms of the three generators (original, wide, independent), one of them padded
with upper abdomen below and neck above (decoys there), and one scored from DICOM files through
``score_study`` (the daemon's call). The result has no per-artery breakdown (it scores coronary
calcium as a whole), so besides the total, volume, lesion count and category, every scored lesion
(slice, pixels, density weight) is compared: a per-lesion change would show even where totals agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connector.infer.manifest import BUNDLED_MODEL_DIR
from connector.infer.runner import CacRunner
from connector.infer.study import score_study
from connector.synthetic.phantom_series import write_phantom
from connector.synthetic.phantoms import WIDE, make_phantom
from tests.infer.test_infer_heart_region import below_and_above
from training.independent import independent_phantom

MODELS = {"v1": BUNDLED_MODEL_DIR.parent / "cac-synthetic-v1", "v2": BUNDLED_MODEL_DIR}


def case(name: str) -> tuple[np.ndarray, tuple[float, float], float]:
    if name == "original-123":
        ph = make_phantom(123, plaque_count=8, increment=3.0)
    elif name == "original-1000-padded":
        ph = make_phantom(1000)
        hu, _ = below_and_above(ph, 25, 15)
        return hu, (ph.pixel_spacing, ph.pixel_spacing), ph.increment
    elif name == "wide-2002":
        ph = make_phantom(2002, ranges=WIDE)
    elif name == "independent-0":
        _, ph = independent_phantom(0)
    else:
        raise KeyError(name)
    return ph.hu.astype(np.float32), (ph.pixel_spacing, ph.pixel_spacing), ph.increment


def summary(agatston) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {
        "score": agatston.score,
        "volume_mm3": agatston.volume_mm3,
        "category": agatston.category,
        "lesions": [(lesion.slice_index, lesion.pixels, lesion.weight) for lesion in agatston.lesions],
    }


# Computed with the code of commit c863fe6 (before the change), not by hand.
EXPECTED: dict[tuple[str, str], dict[str, object]] = \
    {('v1', 'independent-0'): {'category': '>400',
                               'lesions': [(23, 112, 4),
                                           (24, 77, 4),
                                           (30, 76, 4),
                                           (31, 145, 4),
                                           (38, 93, 4),
                                           (39, 78, 4),
                                           (41, 88, 4),
                                           (42, 94, 4)],
                               'score': 1246.2333333333331,
                               'volume_mm3': 934.6749999999998},
     ('v1', 'original-1000-padded'): {'category': '>400',
                                      'lesions': [(42, 14, 4),
                                                  (44, 16, 4),
                                                  (45, 16, 4),
                                                  (45, 31, 4),
                                                  (48, 9, 3),
                                                  (49, 2, 2),
                                                  (49, 34, 3),
                                                  (50, 14, 2),
                                                  (52, 17, 4),
                                                  (52, 22, 2),
                                                  (53, 14, 2),
                                                  (57, 39, 4)],
                                      'score': 729.5608520507812,
                                      'volume_mm3': 652.313232421875},
     ('v1', 'original-123'): {'category': '>400',
                              'lesions': [(21, 21, 1),
                                          (24, 14, 4),
                                          (25, 10, 2),
                                          (26, 18, 4),
                                          (26, 9, 2),
                                          (27, 39, 4),
                                          (27, 38, 4),
                                          (28, 15, 4),
                                          (30, 6, 1),
                                          (31, 10, 4),
                                          (31, 7, 4),
                                          (32, 8, 4)],
                              'score': 630.3787231445312,
                              'volume_mm3': 557.8994750976562},
     ('v1', 'wide-2002'): {'category': '>400',
                           'lesions': [(18, 9, 1),
                                       (18, 20, 4),
                                       (19, 11, 1),
                                       (20, 13, 4),
                                       (23, 23, 4),
                                       (24, 119, 4),
                                       (25, 4, 2),
                                       (26, 34, 4)],
                           'score': 823.974609375,
                           'volume_mm3': 666.6183471679688},
     ('v2', 'independent-0'): {'category': '>400',
                               'lesions': [(23, 112, 4),
                                           (24, 77, 4),
                                           (30, 76, 4),
                                           (31, 145, 4),
                                           (38, 93, 4),
                                           (39, 78, 4),
                                           (41, 88, 4),
                                           (42, 94, 4)],
                               'score': 1246.2333333333331,
                               'volume_mm3': 934.6749999999998},
     ('v2', 'original-1000-padded'): {'category': '>400',
                                      'lesions': [(42, 14, 4),
                                                  (44, 16, 4),
                                                  (45, 16, 4),
                                                  (45, 31, 4),
                                                  (48, 9, 3),
                                                  (49, 2, 2),
                                                  (49, 34, 3),
                                                  (50, 14, 2),
                                                  (52, 17, 4),
                                                  (52, 22, 2),
                                                  (53, 14, 2),
                                                  (57, 39, 4)],
                                      'score': 729.5608520507812,
                                      'volume_mm3': 652.313232421875},
     ('v2', 'original-123'): {'category': '>400',
                              'lesions': [(21, 21, 1),
                                          (24, 14, 4),
                                          (25, 10, 2),
                                          (26, 18, 4),
                                          (26, 9, 2),
                                          (27, 39, 4),
                                          (27, 38, 4),
                                          (28, 15, 4),
                                          (30, 6, 1),
                                          (31, 10, 4),
                                          (31, 7, 4),
                                          (32, 8, 4)],
                              'score': 630.3787231445312,
                              'volume_mm3': 557.8994750976562},
     ('v2', 'wide-2002'): {'category': '>400',
                           'lesions': [(18, 9, 1),
                                       (18, 20, 4),
                                       (19, 11, 1),
                                       (20, 13, 4),
                                       (23, 23, 4),
                                       (24, 119, 4),
                                       (31, 82, 4),
                                       (32, 147, 4),
                                       (33, 90, 4)],
                           'score': 1903.533935546875,
                           'volume_mm3': 1470.5657958984375}}


@pytest.fixture(scope="module")
def runners() -> dict[str, CacRunner]:
    return {name: CacRunner.load(path, threads=2, providers=["CPUExecutionProvider"]) for name, path in MODELS.items()}


def assert_same(got: dict[str, object], expected: dict[str, object]) -> None:
    assert got["category"] == expected["category"]
    assert got["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert got["volume_mm3"] == pytest.approx(expected["volume_mm3"], abs=1e-6)
    assert [tuple(x) for x in got["lesions"]] == [tuple(x) for x in expected["lesions"]]  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("name", ["original-123", "original-1000-padded", "wide-2002", "independent-0"])
def test_scores_on_phantoms_are_unchanged(runners: dict[str, CacRunner], model: str, name: str) -> None:
    hu, spacing, increment = case(name)
    scored = runners[model].score_hu(hu, spacing, increment)
    assert scored.heart_found
    assert_same(summary(scored.agatston), EXPECTED[(model, name)])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_scores_from_dicom_files_are_unchanged(runners: dict[str, CacRunner], model: str, tmp_path: Path) -> None:
    ph = make_phantom(123, plaque_count=8, increment=3.0)
    [result] = score_study(write_phantom(ph, tmp_path), runners[model])
    assert result.ok and result.agatston is not None
    assert_same(summary(result.agatston), EXPECTED[(model, "original-123")])
    scored = result.scored_calcium
    assert scored is not None
    assert list(scored.slice_indices) == sorted({lesion[0] for lesion in EXPECTED[(model, "original-123")]["lesions"]})  # type: ignore[index]
    for i, k in enumerate(scored.slice_indices):
        assert np.array_equal(scored.hu[i], ph.hu[k])


if __name__ == "__main__":  # prints the expected values from the code as it is (how EXPECTED was made)
    import pprint

    rs = {name: CacRunner.load(path, threads=2, providers=["CPUExecutionProvider"]) for name, path in MODELS.items()}
    out = {}
    for m in sorted(MODELS):
        for n in ["original-123", "original-1000-padded", "wide-2002", "independent-0"]:
            hu, spacing, increment = case(n)
            out[(m, n)] = summary(rs[m].score_hu(hu, spacing, increment).agatston)
    pprint.pprint(out, width=110)
