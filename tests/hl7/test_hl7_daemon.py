"""End to end through the real daemon: a study reaches the dev registry through C-STORE's drop
folder, the interface engine sends an A08 with PID-30=Y over MLLP to the ``hl7`` role, and the
registry receives exactly one death under the pseudonym, with the real interval to the index scan.
Also: a kill -9 between the ACK and the processing loses nothing, and the role stops in time."""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devregistry import RegistryServer
from connector.synthetic import SyntheticPatient, SyntheticStudy, write_pet_ct_study
from tests.hl7.support import MllpClient, ack_code, adt
from tests.support.daemon import ConnectorProcess
from tests.support.waiting import wait_for
from tests.support.net import free_port, wait_port

pytestmark = pytest.mark.slow


def _da(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


class _Env:
    def __init__(self, tmp_path: Path) -> None:
        self.token = secrets.token_urlsafe(24)
        self.token_file = tmp_path / "registry.token"
        self.token_file.write_text(self.token + "\n")
        os.chmod(self.token_file, 0o600)
        self.study = SyntheticStudy(patient=SyntheticPatient(family="QUILLFEATHER", given="MABEL"),
                                    study_date="20200806")
        _, self.files = write_pet_ct_study(tmp_path / "pacs", self.study, ct_count=6, pet_count=3, ct_rows=64)
        self.drop = tmp_path / "drop"
        self.drop.mkdir()
        self.hl7_port = free_port()
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def daemon(self, folder: Path, registry: RegistryServer) -> ConnectorProcess:
        return ConnectorProcess(folder, registry__url=registry.url, registry__token_file=str(self.token_file),
                                registry__poll_seconds=0.2, dropfolder__path=str(self.drop),
                                dropfolder__settle_seconds=0.5, dropfolder__poll_seconds=0.2,
                                hl7__port=self.hl7_port, hl7__host="127.0.0.1", service__stop_timeout=10)

    def study_at_registry(self, registry: RegistryServer) -> tuple[str, date]:
        for f in self.files:
            shutil.copy(f, self.drop / f.name)

        def registry_study() -> dict[str, Any] | None:
            r = httpx.get(f"{registry.url}/dicomweb/studies", headers=self.auth)
            docs = r.json() if r.status_code == 200 and r.content else []
            return docs[0] if docs else None

        qido = wait_for(registry_study, 120, 0.25, "the study at the registry")
        return qido["00100020"]["Value"][0], _da(qido["00080020"]["Value"][0])

    def events(self, registry: RegistryServer) -> list[dict[str, Any]]:
        return list(httpx.get(f"{registry.url}/api/v1/events", headers=self.auth).json()["events"])

    def death(self, days: int, control: str = "ADT0001") -> bytes:
        real = _da(self.study.study_date) + timedelta(days=days)
        return adt("A08", self.study.patient.patient_id, self.study.patient.issuer, control=control,
                   death=real.strftime("%Y%m%d") + "0930", indicator="Y")


def test_a08_death_through_the_daemon_reaches_the_registry_once(tmp_path: Path) -> None:
    env = _Env(tmp_path)
    with RegistryServer(tmp_path / "registry", token=env.token, port=0, fsync=False) as registry:
        daemon = env.daemon(tmp_path / "site", registry).start()
        try:
            pseudonym, registry_index = env.study_at_registry(registry)
            wait_port(env.hl7_port, 60)
            with MllpClient(env.hl7_port) as c:
                assert ack_code(c.send(env.death(987)))[:2] == ("AA", "ADT0001")
                assert ack_code(c.send(env.death(987, control="ADT0002")))[0] == "AA"  # sent twice by the engine
                unknown = adt("A08", "NOBODY-4242", env.study.patient.issuer, death="20230101", indicator="Y")
                assert ack_code(c.send(unknown))[0] == "AA"
            (event,) = wait_for(lambda: env.events(registry), 120, 0.25, "the death event at the registry")
            time.sleep(2)
            assert len(env.events(registry)) == 1
            started = time.monotonic()
            assert daemon.stop(timeout=30) == 0
            assert time.monotonic() - started < 10  # within [service] stop_timeout
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.kill()
        logs = daemon.logs()
    assert event["pseudonym"] == pseudonym and event["event"] == "death" and event["retracted"] is False
    assert event["days_from_index"] == 987
    assert (date.fromisoformat(event["event_date"]) - registry_index).days == 987
    assert env.study.patient.patient_id not in logs and "NOBODY-4242" not in logs and "QUILLFEATHER" not in logs
    for path in (tmp_path / "site" / "data").rglob("*"):
        if path.is_file():
            assert b"NOBODY-4242" not in path.read_bytes(), path.name


def test_kill_9_after_the_ack_still_delivers(tmp_path: Path) -> None:
    env = _Env(tmp_path)
    with RegistryServer(tmp_path / "registry", token=env.token, port=0, fsync=False) as registry:
        daemon = env.daemon(tmp_path / "site", registry).start()
        try:
            pseudonym, _ = env.study_at_registry(registry)
            wait_port(env.hl7_port, 60)
            # hold the state DB's write lock: the message can be ACKed (spooled) but not processed
            lock = sqlite3.connect(daemon.data_dir / "state" / "state.db", timeout=30, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            try:
                with MllpClient(env.hl7_port) as c:
                    assert ack_code(c.send(env.death(400)))[0] == "AA"
                spooled = list((daemon.data_dir / "hl7" / "spool").glob("*.hl7"))
                assert len(spooled) == 1  # on disk before the ACK
                daemon.kill()
            finally:
                lock.rollback()
                lock.close()
            assert env.events(registry) == []
            daemon.start()
            (event,) = wait_for(lambda: env.events(registry), 120, 0.25, "the death after the restart")
            assert event["pseudonym"] == pseudonym and event["days_from_index"] == 400
            wait_for(lambda: not list((daemon.data_dir / "hl7" / "spool").glob("*.hl7")), 30, 0.25, "the spool emptied")
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop(timeout=60)


def test_unusable_hl7_tls_files_stop_the_start(tmp_path: Path) -> None:
    from tests.faults.test_startup import assert_failed_start

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    key.write_text("nor this\n")
    assert_failed_start(ConnectorProcess(tmp_path / "site", hl7__port=free_port(), hl7__tls_cert_file=str(cert),
                                         hl7__tls_key_file=str(key)), 2, "HL7 TLS files", "[hl7] tls_cert_file")


def test_hl7_port_in_use_stops_the_start(tmp_path: Path) -> None:
    import socket

    from tests.faults.test_startup import assert_failed_start

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert_failed_start(ConnectorProcess(tmp_path / "site", hl7__port=port, hl7__host="127.0.0.1"), 1,
                            f"HL7 port {port} is already in use", "[hl7] port")
