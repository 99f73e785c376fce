"""Registry faults between the daemon and the real dev registry: down, 500, 503 with Retry-After, a
stall mid-response and a connection closed mid-body (tests/faults/faultproxy.py).

For each fault a new study is sent while the fault lasts: /healthz turns 503 naming the registry
once work has waited past [http] registry_unreachable_seconds, and back to 200 once the fault ends
and the study is delivered. At the end every instance is held by the registry exactly once and no
job was given up.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from connector.synthetic import SyntheticStudy, write_pet_ct_study
from tests.faults.faultproxy import FaultProxy
from tests.faults.support import (RegistryProcess, push_settings, status, stop_timed, storescu, token_file)
from tests.support.waiting import wait_for
from tests.support.daemon import ConnectorProcess

pytestmark = pytest.mark.slow

FAULTS = ["refuse", "500", "503", "stall", "close"]


def healthz(daemon: ConnectorProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/healthz", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_registry_faults_flip_healthz_and_deliver_everything_once(tmp_path: Path) -> None:
    studies = [write_pet_ct_study(tmp_path / "pacs" / f"s{i}", SyntheticStudy(), ct_count=10, pet_count=3,
                                  ct_rows=64)[1] for i in range(len(FAULTS))]
    token = token_file(tmp_path / "secrets")
    report = {}
    with RegistryProcess(tmp_path / "registry", token) as registry:
        proxy = FaultProxy(registry.port)
        settings = push_settings(proxy.url, token, cac__enabled=False, registry__timeout_seconds=3,
                                 http__registry_unreachable_seconds=2, assemble__stable_seconds=0.5)
        daemon = ConnectorProcess(tmp_path / "site", **settings).start()
        try:
            assert wait_for(lambda: healthz(daemon)[0] == 200, timeout=20, what="healthy at start")
            sent = 0
            for i, (fault, files) in enumerate(zip(FAULTS, studies)):
                proxy.set_mode(fault)
                assert storescu(daemon.port, files).returncode == 0
                sent += len(files)
                if fault != "refuse":
                    wait_for(lambda: proxy.requests[fault] >= 1, timeout=30, what=f"a request meeting {fault}")
                code, body = wait_for(lambda: (h := healthz(daemon))[0] == 503 and h, timeout=30,
                                      what=f"/healthz 503 during {fault}")
                assert "registry" in body, body
                proxy.set_mode("pass")
                wait_for(lambda: registry.stats()["manifests"] == i + 1 and registry.stats()["instances"] == sent,
                         timeout=60, interval=0.2, what=f"delivery after {fault}")
                wait_for(lambda: healthz(daemon)[0] == 200, timeout=30, what=f"/healthz 200 after {fault}")
                report[fault] = proxy.requests[fault]
            outbox = status(daemon)
        finally:
            code, _ = stop_timed(daemon)
            proxy.close()
        stats = registry.stats()
    print(f"REGISTRY_FAULTS requests_per_fault={json.dumps(report)} instances={stats['instances']} "
          f"duplicates_received={stats.get('duplicates', 0)} pushed_jobs={outbox.get('pushed')}")
    assert code == 0
    assert stats["instances"] == stats["files"] == sent, stats
    assert stats["subjects"] == stats["manifests"] == len(FAULTS), stats
    assert stats.get("conflicts", 0) == 0, stats
    assert outbox["failed"] == 0 and outbox["outbox_pending"] == 0, outbox
    assert all(report[f] >= 1 for f in FAULTS if f != "refuse"), report
