"""Peak memory of scoring a long series stays under 1 GB (issue 29, item 4), and a series too long
to hold streams from its files with the same result.

A 1,000-slice 512² series (a chest phantom padded with upper abdomen below and neck above, see
``cac_long_series``) is scored the way the daemon does it (``score_study``: selection, load, heart
region, model, scoring) in a fresh Python process, and its peak resident set (VmHWM from
/proc/self/status, which counts the interpreter, numpy, scipy and ONNX Runtime too) must stay under
1 GB. Before the streaming change the same run grew by about 2.4 MB a slice (1.6 GB at 600 slices).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.infer.cac_long_series import peak_rss_of_cac, write_long_series

LIMIT_MB = 1024.0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_1000_slice_series_peaks_under_1_gb(tmp_path: Path) -> None:
    write_long_series(tmp_path / "series", 1000)
    run = peak_rss_of_cac(tmp_path / "series")
    result = run["result"]
    assert isinstance(result, dict)
    assert result["status"] == "ok" and result["category"] == ">400"  # the chest's plaques, found and scored
    assert result["series"]["slices"] == 1000
    assert float(run["vmhwm_mb"]) < LIMIT_MB, f"peak RSS {run['vmhwm_mb']:.0f} MB"  # type: ignore[arg-type]


def test_a_series_over_the_resident_budget_streams_and_scores_the_same(tmp_path: Path) -> None:
    """Over ``max_resident_mb`` the volume is a SliceStack (slices decoded from the files when
    needed): the same HU, the same coarse grid and maximum, and the same score, lesions and map."""
    import numpy as np

    from connector.infer.manifest import BUNDLED_MODEL_DIR
    from connector.infer.runner import CacRunner
    from connector.infer.volume import SliceStack, load_volume
    from connector.synthetic.phantom_series import write_phantom
    from connector.synthetic.phantoms import make_phantom

    ph = make_phantom(123, plaque_count=8, increment=3.0)
    paths = write_phantom(ph, tmp_path)
    held, streamed = load_volume(paths), load_volume(paths, max_resident_mb=1.0)
    assert isinstance(held.hu, np.ndarray) and held.hu.dtype == np.int16
    assert isinstance(streamed.hu, SliceStack)
    assert np.array_equal(streamed.hu[:], held.hu) and np.array_equal(streamed.hu[np.array([3, 1])], held.hu[[3, 1]])
    assert np.array_equal(streamed.hu.max(axis=0), held.hu.max(axis=0))
    assert np.array_equal(streamed.hu[:, ::3, ::3], held.hu[:, ::3, ::3])
    runner = CacRunner.load(BUNDLED_MODEL_DIR.parent / "cac-synthetic-v1", threads=2)
    a, b = runner.score_volume(held), runner.score_volume(streamed)
    assert a.agatston is not None and b.agatston is not None and a.agatston.score > 0
    assert a.agatston.score == b.agatston.score and a.agatston.lesions == b.agatston.lesions
    assert a.scored_calcium is not None and b.scored_calcium is not None
    assert a.scored_calcium.slice_indices == b.scored_calcium.slice_indices
    assert np.array_equal(a.scored_calcium.hu, b.scored_calcium.hu)
    assert np.array_equal(a.scored_calcium.weights, b.scored_calcium.weights)
