"""Score the eligible series of one stable study: the call the daemon's inference worker makes.

Why here and not in the daemon: the worker only needs "these are the study's files, give me results";
selection, loading, the model and the scoring rules stay inside this package. The files are the
ORIGINAL instances on the site's spool (de-identified copies may lack geometry the loader needs);
the results carry the original UIDs for the daemon to map to pseudonymised ones. Nothing from the
DICOM headers is logged, only codes, counts and timings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from connector.infer.errors import SeriesError
from connector.infer.results import SeriesResult
from connector.infer.runner import CacRunner
from connector.infer.select import select_series
from connector.infer.volume import load_volume

log = logging.getLogger(__name__)

# A series whose HU would take more than this is not held in memory but decoded from its files
# slice by slice as scoring needs them (connector.infer.volume.SliceStack): 256 MB is 512 slices of
# 512², more than a CTAC of the chest; a whole-body scan streams, so peak memory does not grow with it.
RESIDENT_MB = 256.0


def score_study(paths: Iterable[Path], runner: CacRunner) -> list[SeriesResult]:
    """Results for the study's eligible series, best-ranked first; [] when none is eligible.

    A series that cannot be loaded yields a result with ``status="error"`` and an error code, so the
    registry learns the scan existed. Model problems (:class:`connector.infer.errors.ModelError`)
    propagate: they are not the study's fault.
    """
    selection = select_series(paths, runner.config)
    results: list[SeriesResult] = []
    for candidate in selection.eligible:
        t0 = time.perf_counter()
        try:
            volume = load_volume(candidate.paths, max_resident_mb=RESIDENT_MB, headers=candidate.headers)
        except SeriesError as exc:
            log.warning("cac series not scored: %s (slices=%d)", exc.code, candidate.slices)
            results.append(runner.failed(candidate.study_uid, candidate.series_uid, exc.code, time.perf_counter() - t0))
            continue
        try:
            result = runner.score_volume(volume, load_s=time.perf_counter() - t0)
        except SeriesError as exc:  # a streamed series reads its files again: one may have gone meanwhile
            log.warning("cac series not scored: %s (slices=%d)", exc.code, candidate.slices)
            results.append(runner.failed(candidate.study_uid, candidate.series_uid, exc.code, time.perf_counter() - t0))
            continue
        log.info(
            "cac series scored: category=%s lesions=%d slices=%d seconds=%.2f provider=%s",
            result.category,
            result.agatston.lesion_count if result.agatston else 0,
            result.slices,
            result.timings.total_s,
            result.provider,
        )
        results.append(result)
    return results
