"""Peak memory of scoring a long series stays under 1 GB (issue 29, item 4).

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
