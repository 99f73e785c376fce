"""``/metrics``: the connector's figures in the Prometheus text exposition format (version 0.0.4).

Why written by hand rather than with prometheus_client's registry: every figure is read fresh
from the state DB on each scrape (the DB is the truth, shared by all workers and processes), so
there is no in-process counter to keep; the format is a few lines of text. Tests parse the output
with prometheus_client's own parser. Only counts, sizes and times are exported, never identifiers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from connector import __version__
from connector.store.quarantine import count_quarantine
from connector.store.state import STUDY_STATES, StateStore
from connector.web import integrations
from connector.web.health import HealthReport, disk_free_bytes

PREFIX = "site_connector_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Family:
    name: str
    kind: str  # counter, gauge, info-as-gauge
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((labels, float(value)))
        return self


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for labels, value in fam.samples:
            label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{fam.name}{{{label_text}}} {_format_value(value)}" if label_text
                         else f"{fam.name} {_format_value(value)}")
    return "\n".join(lines) + "\n"


def _quarantine_by_stage(quarantine_dir: Path) -> dict[str, int]:
    stages: dict[str, int] = {}
    if quarantine_dir.exists():
        for stage_dir in quarantine_dir.iterdir():
            if stage_dir.is_dir():
                stages[stage_dir.name] = sum(1 for _ in stage_dir.glob("*.json"))
    return stages


def collect(store: StateStore, data_dir: Path, quarantine_dir: Path, min_free_bytes: int,
            health: HealthReport | None = None, now: float | None = None) -> list[Family]:
    """Every metric family, read from the state DB, the quarantine folder and the disk."""
    now = time.time() if now is None else now
    p = PREFIX
    counts = store.counts()
    fams: list[Family] = [
        Family(p + "info", "gauge", "Build information (always 1).").add(1, version=__version__),
        Family(p + "instances_received_total", "counter", "DICOM instances received and stored durably.")
        .add(counts["instances_received"]),
        Family(p + "received_bytes_total", "counter", "Bytes of DICOM instances received.")
        .add(counts["bytes_received"]),
        Family(p + "instances_replaced_total", "counter", "Instances re-sent by the PACS with different bytes.")
        .add(counts.get("instances_replaced", 0)),
    ]
    studies = Family(p + "studies", "gauge", "Studies by pipeline state.")
    for state in sorted(set(STUDY_STATES) | set(counts["studies"])):
        studies.add(counts["studies"].get(state, 0), state=state)
    fams.append(studies)

    fams.append(Family(p + "quarantined_objects", "gauge", "Objects held in quarantine, all stages.")
                .add(count_quarantine(quarantine_dir)))
    by_stage = Family(p + "quarantined_objects_by_stage", "gauge", "Objects held in quarantine, by stage.")
    for stage, n in sorted(_quarantine_by_stage(quarantine_dir).items()):
        by_stage.add(n, stage=stage)
    fams.append(by_stage)

    figures = integrations.outbox_figures(store)
    fams.append(Family(p + "outbox_available", "gauge", "1 when this build has the registry outbox.")
                .add(1 if figures is not None else 0))
    figures = figures or {}
    fams += [
        Family(p + "outbox_pending_jobs", "gauge", "Outbox jobs not yet acknowledged by the registry.")
        .add(figures.get("outbox_pending", 0)),
        Family(p + "outbox_failed_jobs", "gauge", "Outbox jobs the registry refused, awaiting an operator.")
        .add(figures.get("failed", 0)),
        Family(p + "outbox_oldest_pending_age_seconds", "gauge", "Age of the oldest unacknowledged outbox job.")
        .add(figures.get("oldest_pending_age_s", 0.0)),
        Family(p + "pushed_jobs_total", "counter", "Outbox jobs acknowledged by the registry.")
        .add(figures.get("pushed", 0)),
        Family(p + "pushed_instances_total", "counter", "De-identified instances acknowledged by the registry.")
        .add(figures.get("instances_pushed", 0)),
        Family(p + "pushed_bytes_total", "counter", "Bytes acknowledged by the registry.")
        .add(figures.get("bytes_pushed", 0)),
        Family(p + "last_successful_push_timestamp_seconds", "gauge",
               "Unix time of the last registry acknowledgement (0 = never).")
        .add(figures.get("last_push_at") or 0),
        Family(p + "cac_runs_total", "counter", "CAC results produced and queued for the registry.")
        .add(integrations.cac_runs(figures)),
    ]

    last = store.last_reconciliation() or {}
    reconciled = Family(p + "last_reconcile_studies", "gauge",
                        "Studies of the last reconciliation with the registry, by outcome.")
    for outcome, field in (("verified", "verified"), ("requeued", "requeued"), ("unresolved", "unresolved"),
                           ("error", "errors")):
        reconciled.add(last.get(field, 0), outcome=outcome)
    fams += [
        Family(p + "last_reconcile_timestamp_seconds", "gauge",
               "Unix time of the last reconciliation with the registry (0 = never).").add(last.get("at", 0)),
        Family(p + "last_reconcile_duration_seconds", "gauge", "How long the last reconciliation took.")
        .add(last.get("seconds", 0)),
        Family(p + "last_reconcile_registry_unreachable", "gauge",
               "1 when the last reconciliation could not reach the registry.")
        .add(1 if last.get("registry_unreachable") else 0),
        reconciled,
    ]

    try:
        free: float = disk_free_bytes(data_dir)
    except OSError:
        free = float("nan")
    fams += [
        Family(p + "disk_free_bytes", "gauge", "Free bytes on the data disk.").add(free),
        Family(p + "disk_min_free_bytes", "gauge", "Configured free-space floor ([storage] min_free_bytes).")
        .add(min_free_bytes),
    ]
    if health is not None:
        up = Family(p + "health_check_ok", "gauge", "1 when the named /healthz check passes.")
        for name, problem in sorted(health.checks.items()):
            up.add(1 if problem is None else 0, check=name)
        fams.append(up)
        fams.append(Family(p + "healthy", "gauge", "1 when every /healthz check passes.").add(1 if health.ok else 0))
    fams.append(Family(p + "metrics_generated_timestamp_seconds", "gauge", "When this page was produced.").add(now))
    return fams


def metrics_text(store: StateStore, data_dir: Path, quarantine_dir: Path, min_free_bytes: int,
                 health: HealthReport | None = None) -> str:
    return render(collect(store, data_dir, quarantine_dir, min_free_bytes, health))


__all__ = ["CONTENT_TYPE", "Family", "collect", "metrics_text", "render"]
