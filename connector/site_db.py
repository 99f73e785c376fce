"""The site's state database and the one list of its schema steps, each table's from its owner.

Why here, above the stages: the store (:mod:`connector.store.state`) knows how to run schema steps
but not which; each owner keeps its own table's SQL beside its code; this list, at the top where
the daemon and the commands are wired, names them in the order they were added. A step is never
changed once released: a new table or column is a new step at the end.
"""

from __future__ import annotations

from pathlib import Path

from connector.backfill.schema import create_schema as backfill_tables
from connector.followup.schema import create_feed_schema as followup_feed_tables
from connector.followup.schema import create_schema as followup_tables
from connector.infer.validation_store import create_schema as cac_validation_tables
from connector.outbox.delivery import create_schema as delivery_tables
from connector.outbox.schema import create_schema as outbox_tables
from connector.push.reconcile_runs import create_schema as reconcile_tables
from connector.store.stage_failures import create_schema as stage_failure_tables
from connector.store.state import (
    Migration,
    StateStore,
    add_verified_at,
    create_core_schema,
    create_privacy_reports,
)

SCHEMA_STEPS: list[Migration] = [
    (1, create_core_schema),       # instances, instance_events, studies (store)
    (2, outbox_tables),            # outbox_jobs and their files (outbox)
    (3, followup_tables),          # followup_events (follow-up)
    (4, create_privacy_reports),   # privacy_reports (store)
    (5, delivery_tables),          # study_outputs (outbox delivery)
    (6, add_verified_at),          # studies.verified_at (store)
    (7, reconcile_tables),         # reconcile_runs (reconciliation)
    (8, backfill_tables),          # backfill jobs and worklist (backfill)
    (9, stage_failure_tables),     # stage_failures (optional stages)
    (10, cac_validation_tables),   # cac_validation_runs (cac validate)
    (11, followup_feed_tables),    # followup_source_counts, followup_merges (follow-up feeds: HL7, FHIR)
]


def open_state(path: Path) -> StateStore:
    """The state database at ``path``, created or brought up to date with every table."""
    return StateStore(path, SCHEMA_STEPS)
