"""Stop is bounded: SIGTERM ends the daemon within [service] stop_timeout in every state, and the
next start resumes the work that was in progress, losing nothing that was acknowledged.

Each test measures the stop (until the supervisor and every role process have exited) and prints
it as ``STOP_SECONDS state=... seconds=...`` (``pytest -s`` shows the lines).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pydicom
import pytest

from connector.synthetic import SyntheticStudy, ct_slices, write_pet_ct_study, write_series
from tests.faults.support import (TEST_STOP_TIMEOUT, RegistryProcess, StallServer, acknowledged_files,
                                  push_settings, status, stop_timed, storescu, storescu_popen, study_states,
                                  token_file)
from tests.support.waiting import wait_for
from tests.support.daemon import ConnectorProcess
from tests.support.dicomfiles import stored_by_sop
from tests.support.net import free_port

pytestmark = pytest.mark.slow


def measured_stop(daemon: ConnectorProcess, state: str, limit: float = TEST_STOP_TIMEOUT) -> float:
    code, seconds = stop_timed(daemon)
    print(f"STOP_SECONDS state={state} seconds={seconds:.2f} limit={limit}")
    assert code == 0, daemon.logs()[-3000:]
    assert seconds < limit, f"{state}: stop took {seconds:.1f} s (stop_timeout {limit})"
    return seconds


def test_stop_when_idle(tmp_path: Path) -> None:
    daemon = ConnectorProcess(tmp_path / "site", service__stop_timeout=TEST_STOP_TIMEOUT).start()
    time.sleep(1.0)
    assert measured_stop(daemon, "idle") < 3.0  # nothing to wait for: well under the limit
    assert '"daemon_stopped"' in daemon.logs()


def test_stop_mid_association_with_a_stalled_sender(tmp_path: Path) -> None:
    """storescu is frozen (SIGSTOP) mid-study: the receiver drains for half the budget, then aborts.
    Everything acknowledged is kept; a resend after restart completes the study."""
    files = write_series(ct_slices(SyntheticStudy(), 120, rows=256, cols=256), tmp_path / "sent")
    uid_of = {str(f): pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    daemon = ConnectorProcess(tmp_path / "site", service__stop_timeout=TEST_STOP_TIMEOUT).start()
    log = tmp_path / "storescu.log"
    sender = storescu_popen(daemon.port, files, log)
    try:
        wait_for(lambda: len(acknowledged_files(log.read_text())) >= 20, timeout=60, interval=0.01,
                 what="20 instances acknowledged")
        os.kill(sender.pid, signal.SIGSTOP)
        seconds = measured_stop(daemon, "mid-association")
    finally:
        os.kill(sender.pid, signal.SIGCONT)
        sender.wait(timeout=60)
    acked = acknowledged_files(log.read_text())
    assert 20 <= len(acked) < len(files)
    # the receivers drained (half the budget), aborted the stalled association and exited by themselves:
    # neither the roles' overdue exit (T - 2 s here) nor the supervisor's SIGKILL was needed
    assert seconds < TEST_STOP_TIMEOUT - 2, seconds
    assert '"role_killed"' not in daemon.logs()
    daemon.start()
    try:
        stored = stored_by_sop(daemon.spool)
        assert all(uid_of[f] in stored for f in acked), "an acknowledged instance was lost by the stop"
        assert storescu(daemon.port, files).returncode == 0
        assert len(stored_by_sop(daemon.spool)) == len(files)
    finally:
        measured_stop(daemon, "idle-after-restart")


def test_stop_mid_study_resumes_it_at_the_next_start(tmp_path: Path) -> None:
    """SIGTERM while the pipeline has a study in hand (de-identification / CAC): the stop is bounded and
    the study is taken up again at the next start and reaches the registry complete, once."""
    _, files = write_pet_ct_study(tmp_path / "pacs", ct_count=240, pet_count=10, ct_rows=256)
    token = token_file(tmp_path / "secrets")
    with RegistryProcess(tmp_path / "registry", token) as registry:
        # the shortest stop_timeout allowed (5 s: 2.5 s to finish the study), so the study outlasts it
        settings = push_settings(registry.url, token, assemble__stable_seconds=0.5, service__stop_timeout=5)
        daemon = ConnectorProcess(tmp_path / "site", **settings).start()
        assert storescu(daemon.port, files).returncode == 0
        wait_for(lambda: study_states(daemon).get("processing"), timeout=60, interval=0.02,
                 what="a study in processing")
        measured_stop(daemon, "mid-study", limit=5)
        states = study_states(daemon)
        daemon.start()
        try:
            # resumed: de-identified again (same bytes), scored, and everything delivered
            try:
                wait_for(lambda: registry.stats()["results"] == 1 and registry.stats()["manifests"] == 1,
                         timeout=180, interval=0.5, what="the study and its CAC result delivered after restart")
            except AssertionError as exc:  # say where it stuck: study states, outbox, registry, last log lines
                tail = [line[:300] for line in daemon.logs().splitlines()
                        if '"http request' not in line][-40:]
                raise AssertionError(f"{exc}; studies {study_states(daemon)}; outbox {status(daemon)}; registry "
                                     f"{registry.stats()}; log tail:\n" + "\n".join(tail)) from None
            wait_for(lambda: '"study_processed"' in daemon.logs(), timeout=30, what="the study processed")
            stats = registry.stats()
            # every image once; the synthetic CT has no chest, so CAC reports heart_not_found (the one
            # result above) and adds no SR or SEG
            assert stats["instances"] == stats["files"] == len(files) and stats["subjects"] == 1
        finally:
            measured_stop(daemon, "idle-after-restart")
    # the study outlived the stop's budget for finishing work: it was left leased, then resumed
    assert states.get("processing") == 1, states
    assert '"study_left_leased"' in daemon.logs()


def test_stop_while_the_uploader_waits_in_a_long_backoff(tmp_path: Path) -> None:
    _, files = write_pet_ct_study(tmp_path / "pacs", ct_count=6, pet_count=3, ct_rows=64)
    token = token_file(tmp_path / "secrets")
    port = free_port()  # nothing listens: the registry is down
    url = f"http://127.0.0.1:{port}"
    settings = push_settings(url, token, cac__enabled=False, registry__backoff_min_seconds=600,
                             registry__backoff_max_seconds=1800)
    daemon = ConnectorProcess(tmp_path / "site", **settings).start()
    assert storescu(daemon.port, files).returncode == 0
    daemon.wait_for_log('"push_destination_down"', timeout=60)
    assert '"push_destination_down"' in daemon.logs()
    measured_stop(daemon, "uploader-backoff")
    with RegistryProcess(tmp_path / "registry", token, port=port) as registry:
        daemon = ConnectorProcess(tmp_path / "site", **push_settings(url, token, cac__enabled=False)).start()
        try:
            wait_for(lambda: registry.stats()["instances"] == len(files), timeout=60,
                     what="delivery after restart")
        finally:
            measured_stop(daemon, "idle-after-restart")
        assert registry.stats()["instances"] == len(files)


def test_stop_while_a_registry_request_hangs(tmp_path: Path) -> None:
    """The registry accepts the upload and never answers: the stop does not wait for the request."""
    _, files = write_pet_ct_study(tmp_path / "pacs", ct_count=6, pet_count=3, ct_rows=64)
    token = token_file(tmp_path / "secrets")
    stall = StallServer()
    url = stall.url
    settings = push_settings(url, token, cac__enabled=False, registry__timeout_seconds=600)
    daemon = ConnectorProcess(tmp_path / "site", **settings).start()
    try:
        assert storescu(daemon.port, files).returncode == 0
        wait_for(lambda: stall.received > 0, timeout=60, what="an upload reaching the stalled registry")
        time.sleep(0.5)
        measured_stop(daemon, "registry-request-hanging")
    finally:
        stall.close()
    with RegistryProcess(tmp_path / "registry", token, port=stall.port) as registry:
        daemon = ConnectorProcess(tmp_path / "site", **push_settings(url, token, cac__enabled=False)).start()
        try:
            wait_for(lambda: registry.stats()["instances"] == len(files), timeout=60,
                     what="delivery after restart")
        finally:
            measured_stop(daemon, "idle-after-restart")
        stats = registry.stats()
        assert stats["instances"] == stats["files"] == len(files)


def test_systemd_unit_waits_longer_than_the_daemon_takes_to_stop() -> None:
    """TimeoutStopSec matches [service] stop_timeout (plus a margin): systemd never has to SIGKILL."""
    from connector.config import ServiceConfig
    from tests.support.daemon import ROOT

    unit = (ROOT / "service" / "site-connector.service").read_text()
    [value] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
    assert float(value) == ServiceConfig().stop_timeout + 5
