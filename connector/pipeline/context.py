"""What the stages share: the study in hand and the stage contract.

A stage is a name and one function of a :class:`StudyContext`; ``required`` says whether its
failure fails the study (the images' own path) or is only recorded and retried (an analysis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from connector.deid.study import StudyOutcome
from connector.store.stage_failures import RetryPolicy


@dataclass
class StudyContext:
    """What the stages get to see about one study."""

    study_key: str
    originals: list[Path]  # identified files on the spool (never leave the site)
    out_dir: Path
    outcome: StudyOutcome | None = None  # set by the deid stage: de-identified files, new UIDs, pseudonym
    notes: dict[str, object] = field(default_factory=dict)  # "state": the study's state after the stage

    @property
    def deidentified(self) -> StudyOutcome:
        """The de-identification outcome; the stages after de-identification may rely on it."""
        if self.outcome is None:
            raise RuntimeError("no de-identification outcome: the deid stage runs first")
        return self.outcome


Step = Callable[[StudyContext], None]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    ``required``: its failure marks the study failed (the images' own path). An optional stage's
    failure is recorded and retried under ``retry`` while the study goes on. ``version`` names what
    the stage runs (the model's SHA-256): a failure recorded under another version is retried at
    once when the pipeline starts with a new one (a site that installs a fixed model).
    """

    name: str
    run: Step
    required: bool = True
    version: Callable[[], str] = lambda: ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
