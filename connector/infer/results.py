"""The per-series CAC result reported to the registry and printed by ``site-connector cac``.

Why a fixed JSON shape: the registry stores one result per scan from every site and every model
version, so each result names the model (name, version, SHA-256), the execution provider and the
timings next to the score. The study and series UIDs here are the ORIGINAL ones: the daemon swaps
them for the pseudonymised UIDs before queueing ``POST /api/v1/results``; they are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.infer.agatston import AgatstonResult
from connector.infer.scored_calcium import ScoredCalcium


@dataclass(frozen=True)
class Timings:
    load_s: float = 0.0
    inference_s: float = 0.0
    scoring_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.load_s + self.inference_s + self.scoring_s

    def to_json(self) -> dict[str, float]:
        return {
            "load": round(self.load_s, 4),
            "inference": round(self.inference_s, 4),
            "scoring": round(self.scoring_s, 4),
            "total": round(self.total_s, 4),
        }


@dataclass(frozen=True)
class SeriesResult:
    """Outcome for one series: ``status`` "ok" with a score, or "error" with an error code."""

    study_uid: str = field(repr=False)
    series_uid: str = field(repr=False)
    status: str
    model: dict[str, Any]
    provider: str
    timings: Timings
    agatston: AgatstonResult | None = None
    slices: int = 0
    slice_thickness_mm: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    warnings: tuple[str, ...] = ()
    error: str | None = None
    # Site-only, never in the JSON: what was scored (for the study page and the DICOM SEG) and the
    # original slices in the volume's order (what the SR and SEG reference).
    scored_calcium: ScoredCalcium | None = field(default=None, repr=False, compare=False)
    source_paths: tuple[Path, ...] = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def category(self) -> str | None:
        return self.agatston.category if self.agatston is not None else None

    def to_json(self, include_uids: bool = True) -> dict[str, Any]:
        """JSON-ready dict. ``include_uids=False`` drops the (identifying) original UIDs."""
        score = self.agatston
        out: dict[str, Any] = {
            "status": self.status,
            "agatston": round(score.score, 3) if score is not None else None,
            "volume_mm3": round(score.volume_mm3, 3) if score is not None else None,
            "lesions": score.lesion_count if score is not None else None,
            "category": score.category if score is not None else None,
            "model": dict(self.model),
            "provider": self.provider,
            "seconds": round(self.timings.total_s, 4),
            "timings": self.timings.to_json(),
            "series": {
                "slices": self.slices,
                "slice_increment_mm": round(score.slice_increment_mm, 4) if score is not None else None,
                "slice_thickness_mm": self.slice_thickness_mm,
                "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            },
            "warnings": list(self.warnings),
            "error": self.error,
        }
        if include_uids:
            out["study_instance_uid"] = self.study_uid
            out["series_instance_uid"] = self.series_uid
        return out
