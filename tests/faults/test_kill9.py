"""kill -9 of the supervisor at many points of the chain (receive, de-identify, CAC, upload), with a
PACS (storescu) that resends until it is told "stored", and the real dev registry.

After the last restart every instance the PACS got a success for is held by the registry exactly
once: the registry's count of instances equals the number of distinct instances sent (a re-run of
de-identification after a kill must reproduce the same UIDs, or the registry would hold more),
every study is complete with its manifest, and nothing is left pending.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from connector.synthetic import SyntheticStudy, write_pet_ct_study
from tests.faults.support import (RegistryProcess, acknowledged_files, push_settings, stop_timed, storescu_popen, study_states, token_file, wait_group_gone)
from tests.support.waiting import wait_for
from tests.support.daemon import ConnectorProcess

pytestmark = pytest.mark.slow

ROUNDS = 3
POINTS = ["receive", "deid", "cac", "upload"] * ROUNDS  # twelve kills
STUDIES = ROUNDS + 2  # one study released at each "receive" kill, two more for the last run
CT, PET = 40, 5
# The synthetic CT is a soft-tissue body without a chest: CAC finds no heart and reports heart_not_found
# (one result per study, counted below), with no SR or SEG to add to the study's instances.
CAC_OBJECTS = 0


class Pacs(threading.Thread):
    """Sends each study with storescu until it exits 0 (every instance acknowledged), like a PACS queue.

    A study is sent once the test releases it, so that each round's kills find work in each stage.
    """

    def __init__(self, port: int, studies: list[list[Path]], log: Path) -> None:
        super().__init__(daemon=True)
        self.port, self.studies, self.log = port, studies, log
        self.attempts = 0
        self.instances_sent = 0
        self.released = threading.Semaphore(0)
        self.done = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        for files in self.studies:
            while not self.released.acquire(timeout=0.2):
                if self.stop.is_set():
                    return
            while not self.stop.is_set():
                self.attempts += 1
                proc = storescu_popen(self.port, files, self.log)
                code = proc.wait(timeout=120)
                if code == 0:
                    self.instances_sent += len(files)
                    break
                time.sleep(0.3)  # daemon down or killed mid-transfer: the PACS retries
        self.done.set()


def test_kill_9_of_the_supervisor_at_twelve_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    studies = [write_pet_ct_study(tmp_path / "pacs" / f"s{i}", SyntheticStudy(), ct_count=CT, pet_count=PET,
                                  ct_rows=256)[1] for i in range(STUDIES)]
    total = sum(len(s) for s in studies)
    token = token_file(tmp_path / "secrets")
    log = tmp_path / "storescu.log"
    log.touch()
    hits: list[tuple[str, bool]] = []
    with RegistryProcess(tmp_path / "registry", token) as registry:
        settings = push_settings(registry.url, token, assemble__stable_seconds=0.5, assemble__sweep_seconds=0.2,
                                 registry__batch_max_instances=5)  # uploads in several requests: kills land mid-study
        daemon = ConnectorProcess(tmp_path / "site", **settings)
        pacs = Pacs(daemon.port, studies, log)
        started = False
        for point in POINTS:
            daemon.start()
            if not started:
                pacs.start()
                started = True
            since_log = len(daemon.log_path.read_text(errors="replace"))
            acked_before = len(acknowledged_files(log.read_text()))
            held_before = registry.stats()["instances"]
            if point == "receive":
                pacs.released.release()

            def run_log() -> str:
                return daemon.log_path.read_text(errors="replace")[since_log:]

            triggers = {
                "receive": lambda: len(acknowledged_files(log.read_text())) >= acked_before + 5,
                "deid": lambda: study_states(daemon).get("processing"),
                "cac": lambda: "cac series selection" in run_log(),
                "upload": lambda: registry.stats()["instances"] > held_before,
            }
            deadline = time.monotonic() + 25
            hit = False
            while time.monotonic() < deadline:
                if triggers[point]():
                    hit = True
                    break
                time.sleep(0.02)
            hits.append((point, hit))
            assert daemon.proc is not None
            os.kill(daemon.proc.pid, signal.SIGKILL)  # the supervisor only: roles must follow it
            daemon.proc.wait(timeout=10)
            survivors = wait_group_gone(daemon.proc.pid, timeout=5)
            assert not survivors, f"role processes outlived the supervisor's kill -9 at {point}: {survivors}"

        daemon.start()
        for _ in range(STUDIES - ROUNDS):
            pacs.released.release()
        try:
            assert pacs.done.wait(timeout=240), "the PACS could not deliver every study"
            expected_studies = STUDIES
            wait_for(lambda: registry.stats()["manifests"] == expected_studies
                     and registry.stats()["instances"] >= total + CAC_OBJECTS, timeout=180, interval=0.5,
                     what="every study at the registry")
            wait_for(lambda: registry.stats()["results"] == expected_studies, timeout=60, interval=0.5,
                     what="every CAC result at the registry")
            time.sleep(1.0)  # anything still in flight would show up as an extra instance
            stats = registry.stats()
            code, _ = stop_timed(daemon)
            assert code == 0
        finally:
            pacs.stop.set()
        acked = acknowledged_files(log.read_text())
        print(f"KILL9 kills={len(hits)} hit={[p for p, h in hits if h]} missed={[p for p, h in hits if not h]} "
              f"storescu_attempts={pacs.attempts} instances_distinct={total} acked_distinct={len(acked)} "
              f"registry_instances={stats['instances']} registry_duplicates_received={stats.get('duplicates', 0)} "
              f"studies={stats['studies']} subjects={stats['subjects']} results={stats['results']}")
        assert len(acked) == total  # every instance was acknowledged at some point
        assert stats["instances"] == stats["files"] == total + CAC_OBJECTS, stats  # each held exactly once
        assert stats["studies"] == stats["manifests"] == stats["results"] == STUDIES, stats
        assert stats.get("conflicts", 0) == 0 and stats.get("rejected_identity", 0) == 0, stats
        assert sum(h for _, h in hits) >= 8, f"too few kills landed where intended: {hits}"
        states = study_states(daemon)
        assert set(states) <= {"queued", "pushed", "verified"}, states
