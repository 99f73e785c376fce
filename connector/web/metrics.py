"""``/metrics``: the connector's figures for Prometheus, exposed with ``prometheus_client``.

Every figure is read fresh from the state DB, the quarantine folder and the disk at each scrape
(the DB is the truth, shared by all processes), so the figures are produced by a custom collector
registered in a private :class:`CollectorRegistry` rather than by in-process counters; the text
format (0.0.4) is prometheus_client's. Only counts, sizes and times are exported, never identifiers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import exposition
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric

from connector import __version__
from connector.store.quarantine import count_quarantine
from connector.store.stage_failures import failure_counts
from connector.store.state import STUDY_STATES, StateStore
from connector.web import integrations
from connector.web.health import HealthReport, disk_free_bytes
from connector.push.reconcile_runs import last_reconciliation

PREFIX = "site_connector_"
# The classic text format; prometheus_client >= 0.22 names it, older ones call it CONTENT_TYPE_LATEST.
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", "text/plain; version=0.0.4; charset=utf-8")


def _gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
    if value is not None:
        fam.add_metric([], float(value))
    return fam


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """``name`` ends in ``_total``; prometheus_client keeps it as the sample name."""
    return CounterMetricFamily(PREFIX + name, doc, value=float(value))


def _quarantine_by_stage(quarantine_dir: Path) -> dict[str, int]:
    stages: dict[str, int] = {}
    if quarantine_dir.exists():
        for stage_dir in quarantine_dir.iterdir():
            if stage_dir.is_dir():
                stages[stage_dir.name] = sum(1 for _ in stage_dir.glob("*.json"))
    return stages


def collect(store: StateStore, data_dir: Path, quarantine_dir: Path, min_free_bytes: int,
            health: HealthReport | None = None, now: float | None = None) -> list[Metric]:
    """Every metric family, read from the state DB, the quarantine folder and the disk."""
    now = time.time() if now is None else now
    counts = store.counts()
    info = _gauge("info", "Build information (always 1).", labels=["version"])
    info.add_metric([__version__], 1)
    fams: list[Metric] = [
        info,
        _counter("instances_received_total", "DICOM instances received and stored durably.",
                 counts["instances_received"]),
        _counter("received_bytes_total", "Bytes of DICOM instances received.", counts["bytes_received"]),
        _counter("instances_replaced_total", "Instances re-sent by the PACS with different bytes.",
                 counts.get("instances_replaced", 0)),
    ]
    studies = _gauge("studies", "Studies by pipeline state.", labels=["state"])
    for state in sorted(set(STUDY_STATES) | set(counts["studies"])):
        studies.add_metric([state], counts["studies"].get(state, 0))
    fams.append(studies)

    fams.append(_gauge("quarantined_objects", "Objects held in quarantine, all stages.",
                       count_quarantine(quarantine_dir)))
    by_stage = _gauge("quarantined_objects_by_stage", "Objects held in quarantine, by stage.", labels=["stage"])
    for stage, n in sorted(_quarantine_by_stage(quarantine_dir).items()):
        by_stage.add_metric([stage], n)
    fams.append(by_stage)

    figures = integrations.outbox_figures(store)
    fams.append(_gauge("outbox_available", "1 when this build has the registry outbox.", 1 if figures is not None else 0))
    figures = figures or {}
    fams += [
        _gauge("outbox_pending_jobs", "Outbox jobs not yet acknowledged by the registry.",
               figures.get("outbox_pending", 0)),
        _gauge("outbox_failed_jobs", "Outbox jobs the registry refused, awaiting an operator.", figures.get("failed", 0)),
        _gauge("outbox_oldest_pending_age_seconds", "Age of the oldest unacknowledged outbox job.",
               figures.get("oldest_pending_age_s", 0.0)),
        _counter("pushed_jobs_total", "Outbox jobs acknowledged by the registry.", figures.get("pushed", 0)),
        _counter("pushed_instances_total", "De-identified instances acknowledged by the registry.",
                 figures.get("instances_pushed", 0)),
        _counter("pushed_bytes_total", "Bytes acknowledged by the registry.", figures.get("bytes_pushed", 0)),
        _gauge("last_successful_push_timestamp_seconds", "Unix time of the last registry acknowledgement (0 = never).",
               figures.get("last_push_at") or 0),
        _counter("cac_runs_total", "CAC results produced and queued for the registry.", integrations.cac_runs(figures)),
    ]

    failed = _gauge("optional_stage_failed_studies",
                    "Studies whose optional stage (e.g. cac) failed, images delivered regardless: retrying or given up.",
                    labels=["stage", "outcome"])
    counts_by_stage = failure_counts(store.conn)
    for stage in sorted({"cac", *counts_by_stage}):
        for outcome in ("retrying", "given_up"):
            failed.add_metric([stage, outcome], counts_by_stage.get(stage, {}).get(outcome, 0))
    fams.append(failed)

    last = last_reconciliation(store) or {}
    reconciled = _gauge("last_reconcile_studies", "Studies of the last reconciliation with the registry, by outcome.",
                        labels=["outcome"])
    for outcome, field in (("verified", "verified"), ("requeued", "requeued"), ("unresolved", "unresolved"),
                           ("error", "errors")):
        reconciled.add_metric([outcome], last.get(field, 0))
    fams += [
        _gauge("last_reconcile_timestamp_seconds", "Unix time of the last reconciliation with the registry (0 = never).",
               last.get("at", 0)),
        _gauge("last_reconcile_duration_seconds", "How long the last reconciliation took.", last.get("seconds", 0)),
        _gauge("last_reconcile_registry_unreachable", "1 when the last reconciliation could not reach the registry.",
               1 if last.get("registry_unreachable") else 0),
        reconciled,
    ]

    try:
        free: float = disk_free_bytes(data_dir)
    except OSError:
        free = float("nan")
    fams += [
        _gauge("disk_free_bytes", "Free bytes on the data disk.", free),
        _gauge("disk_min_free_bytes", "Configured free-space floor ([storage] min_free_bytes).", min_free_bytes),
    ]
    if health is not None:
        up = _gauge("health_check_ok", "1 when the named /healthz check passes.", labels=["check"])
        for name, problem in sorted(health.checks.items()):
            up.add_metric([name], 1 if problem is None else 0)
        fams.append(up)
        fams.append(_gauge("healthy", "1 when every /healthz check passes.", 1 if health.ok else 0))
    fams.append(_gauge("metrics_generated_timestamp_seconds", "When this page was produced.", now))
    return fams


class ConnectorCollector:
    """A prometheus_client collector that reads everything afresh at each scrape."""

    def __init__(self, store: StateStore, data_dir: Path, quarantine_dir: Path, min_free_bytes: int,
                 health: Callable[[], HealthReport] | None = None) -> None:
        self.store, self.data_dir, self.quarantine_dir = store, data_dir, quarantine_dir
        self.min_free_bytes = min_free_bytes
        self.health = health

    def collect(self) -> Iterator[Metric]:
        report = self.health() if self.health is not None else None
        yield from collect(self.store, self.data_dir, self.quarantine_dir, self.min_free_bytes, report)


def make_registry(collector: ConnectorCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)  # no describe(): registering must not read the DB
    registry.register(collector)  # type: ignore[arg-type]
    return registry


def metrics_text(registry: CollectorRegistry) -> bytes:
    return exposition.generate_latest(registry)


__all__ = ["CONTENT_TYPE", "ConnectorCollector", "collect", "make_registry", "metrics_text"]
