"""Quiet-period detection: a study is "stable" once no instance has arrived for ``stable_seconds``.

The clock is the ``last_received_at`` column in the state DB, not an in-memory timer, so a restart
neither loses a pending study nor restarts its wait; a late instance re-opens the study (ingest
sets it back to "receiving") and the wait begins again.
"""

from __future__ import annotations

import logging

from connector.store.state import StateStore

log = logging.getLogger(__name__)


class StudyAssembler:
    def __init__(self, store: StateStore, stable_seconds: float) -> None:
        self.store = store
        self.stable_seconds = stable_seconds

    def sweep(self, now: float | None = None) -> list[str]:
        """Mark quiet studies stable; returns their study keys."""
        keys = self.store.mark_stable(self.stable_seconds, now=now)
        for key in keys:
            log.info("study stable", extra={"event": "study_stable", "study": key})
        return keys
