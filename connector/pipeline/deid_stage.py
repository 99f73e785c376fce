"""The de-identification stage: every original of the study through the rules and the PHI guard (+ OCR).

Required and always first: its outcome (the de-identified files, their new UIDs, the pseudonym)
is what every later stage works on. A study of which nothing may leave stops here as
``quarantined``; its originals wait in the quarantine for a person.
"""

from __future__ import annotations

from connector.deid.engine import DeidEngine
from connector.deid.study import deidentify_study
from connector.pipeline.context import Step, StudyContext
from connector.store.layout import SiteLayout
from connector.store.state import StateStore


def deid_step(store: StateStore, layout: SiteLayout, engine: DeidEngine, ocr: str) -> Step:
    """``ocr``: which de-identified images are read for burned-in text (``[deid] ocr``)."""

    def run(ctx: StudyContext) -> None:
        outcome = deidentify_study(ctx.originals, ctx.out_dir, layout.quarantine, engine, ocr=ocr)
        store.record_privacy_report(ctx.study_key, outcome.privacy.as_dict())
        ctx.outcome = outcome
        ctx.notes["state"] = "deidentified" if outcome.written else "quarantined"

    return run
