"""/metrics parsed with prometheus_client's own text parser, checked against the real state."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from connector.outbox import Outbox
from connector.store.state import STUDY_STATES
from tests.web.conftest import WebSite


def scrape(site: WebSite) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = httpx.get(site.url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [v for lab, v in metrics[name] if lab == labels]
    assert len(matches) == 1, (name, labels, metrics.get(name))
    return matches[0]


def test_metrics_follow_the_state(web_site: WebSite, tmp_path: Path) -> None:
    empty = scrape(web_site)
    assert value(empty, "site_connector_instances_received_total") == 0
    assert value(empty, "site_connector_quarantined_objects") == 0
    assert value(empty, "site_connector_outbox_available") == 1
    assert value(empty, "site_connector_last_successful_push_timestamp_seconds") == 0

    _, paths = web_site.receive(tmp_path / "s1", ct=3, pet=2)
    web_site.receive(tmp_path / "s2", ct=2, pet=1)
    total_bytes = sum(p.stat().st_size for p in paths)
    web_site.quarantine_bytes("ingest", "not-dicom", b"junk")
    web_site.quarantine_bytes("deid", "phi-guard:name", b"junk2")
    web_site.quarantine_bytes("deid", "phi-guard:date", b"junk3")
    keys = [r[0] for r in web_site.store.conn.execute("SELECT study_key FROM studies ORDER BY study_key")]
    web_site.store.set_study_state(keys[0], "pushed")

    outbox = Outbox(web_site.store)
    t0 = time.time()
    for i in range(4):
        outbox.enqueue("stow", f"study-{i}", "registry", {"n": i}, now=t0 - 100 * (i + 1))
    outbox.enqueue("result", "series-1", "registry", {"agatston": 12.5}, now=t0 - 50)
    done = outbox.lease("w", "registry", limit=2)  # the two oldest (ids order)
    for job in done:
        assert outbox.complete(job.id, "w", status=200)
    failed = outbox.lease("w", "registry", limit=1)
    outbox.give_up(failed[0].id, "w", error="HTTP 400", status=400)

    m = scrape(web_site)
    assert value(m, "site_connector_instances_received_total") == 8
    assert value(m, "site_connector_received_bytes_total") >= total_bytes
    for state in STUDY_STATES:
        expected = {"receiving": 1, "pushed": 1}.get(state, 0)
        assert value(m, "site_connector_studies", state=state) == expected, state
    assert value(m, "site_connector_quarantined_objects") == 3
    assert value(m, "site_connector_quarantined_objects_by_stage", stage="deid") == 2
    assert value(m, "site_connector_quarantined_objects_by_stage", stage="ingest") == 1
    assert value(m, "site_connector_outbox_pending_jobs") == 2
    assert value(m, "site_connector_outbox_failed_jobs") == 1
    # the oldest job not yet acknowledged, whichever the leases left behind
    pending_created = [r[0] for r in web_site.store.conn.execute(
        "SELECT created_at FROM outbox_jobs WHERE state IN ('pending', 'leased')")]
    assert abs(value(m, "site_connector_outbox_oldest_pending_age_seconds") - (time.time() - min(pending_created))) < 5
    assert value(m, "site_connector_pushed_jobs_total") == 2
    last_push = value(m, "site_connector_last_successful_push_timestamp_seconds")
    assert t0 - 1 <= last_push <= time.time() + 1
    assert value(m, "site_connector_cac_runs_total") == 1
    assert value(m, "site_connector_disk_free_bytes") > 0
    assert value(m, "site_connector_health_check_ok", check="db") == 1
    assert value(m, "site_connector_healthy") == 1

    web_site.probe_results["registry"] = "registry unreachable for 7200 s"
    m = scrape(web_site)
    assert value(m, "site_connector_health_check_ok", check="registry") == 0
    assert value(m, "site_connector_healthy") == 0


def test_metrics_never_carry_identifiers(web_site: WebSite, tmp_path: Path) -> None:
    study, _ = web_site.receive(tmp_path / "s", ct=2, pet=1)
    text = httpx.get(web_site.url + "/metrics").text
    for secret in (study.patient.patient_id, study.patient.family, study.study_uid, study.accession):
        assert secret not in text
