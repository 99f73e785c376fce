"""training.noncoronary_trace locates the non-coronary calcium a model scores: its pieces add up to
what training.evaluate counts, and a wide-split coronary stent reads as metal inside the heart."""

from __future__ import annotations

import json

import pytest

from connector.infer.manifest import BUNDLED_MODEL_DIR
from connector.infer.runner import CacRunner
from training.evaluate import held_out_wide, score_phantom_with
from training.noncoronary_trace import main, trace


def test_pieces_add_up_to_the_evaluated_total_and_a_stent_is_metal_in_the_heart() -> None:
    runner = CacRunner.load(BUNDLED_MODEL_DIR, threads=1)
    seed, ph = held_out_wide(4)  # v2 scores this phantom's coronary stent (docs/cac.md, round 3)
    pieces = trace({"v2": runner}, ph, min_score=0.0)
    evaluated = score_phantom_with(runner, ph, seed)[0].noncoronary_scored
    assert evaluated > 0
    assert sum(p["score"] for p in pieces) == pytest.approx(evaluated, abs=0.1 * len(pieces))
    stent = max(pieces, key=lambda p: p["peak_hu"])
    assert stent["in_heart"] and stent["distance_mm"] == 0.0 and stent["peak_hu"] > 1500


def test_command_prints_json_rows_with_the_phantom_index(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(BUNDLED_MODEL_DIR), "--split", "wide_test", "--offset", "4", "--count", "1",
                 "--threads", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["phantom"] == 4 and r["model"] == BUNDLED_MODEL_DIR.name for r in rows)
