"""The pipeline as one list: the stages every stable study goes through, in order.

    1. deid       required   connector.pipeline.deid_stage       de-identify, PHI guard, OCR
    2. cac        optional   connector.pipeline.cac_stage        ([cac] enabled) CAC JSON, SR, SEG
    3. registry   required   connector.pipeline.registry_stage   queue everything for the registry

A study's states (``connector.store.state.STUDY_STATES``) follow the list: receiving -> stable
(quiet) -> processing (leased by the worker) -> deidentified, or quarantined when nothing may leave,
or failed -> queued (registry stage) -> pushed (the registry acknowledged every job) -> verified
(reconciliation found it all there).

CAC comes before the registry stage because it adds the CAC SR and SEG to the objects the registry
stage queues. An optional stage that fails never holds the images back (see
:mod:`connector.pipeline.worker`). Returning the CAC results to the PACS is not a stage of its own:
the CAC stage queues them to the outbox's ``pacs`` destination and the uploader role sends them.
"""

from __future__ import annotations

import logging

from connector.config import Config
from connector.deid.engine import DeidEngine
from connector.deid.provider import IdentityProvider
from connector.pipeline.cac_stage import LazyRunner, cac_step
from connector.pipeline.deid_stage import deid_step
from connector.pipeline.context import Stage
from connector.pipeline.registry_stage import registry_step
from connector.store.layout import SiteLayout
from connector.store.stage_failures import RetryPolicy, reschedule_other_versions
from connector.store.state import StateStore

log = logging.getLogger(__name__)


def build_stages(config: Config, store: StateStore, layout: SiteLayout, engine: DeidEngine,
                 provider: IdentityProvider) -> list[Stage]:
    """The ordered stages of a study for this site's configuration."""
    stages = [Stage("deid", deid_step(store, layout, engine, config.deid.ocr))]
    if config.cac.enabled:
        runner = LazyRunner(config)
        stages.append(Stage("cac", cac_step(config, store, engine, layout, runner), required=False,
                            version=runner.version,
                            retry=RetryPolicy(config.cac.retry_attempts, config.cac.retry_first_minutes * 60)))
        model_sha = runner.version()
        if model_sha:  # a model installed since: the studies the previous one failed on are retried now
            with store.write() as conn:
                again = reschedule_other_versions(conn, "cac", model_sha)
            if again:
                log.info("new CAC model: failed studies retried", extra={"event": "stage_rescheduled",
                                                                         "step": "cac", "studies": again})
    stages.append(Stage("registry", registry_step(config, store, layout, provider)))
    return stages
