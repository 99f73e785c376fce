"""Large studies are retrieved series by series, several at once, from a real Orthanc: every instance
arrives byte for byte, Orthanc logs one series-level retrieval per series, and a TCP proxy between us
and Orthanc sees several associations open at the same time. A small study is still one request. By
C-MOVE into the running daemon too: one C-MOVE per series in Orthanc's log."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from connector.backfill.query import StudyFilter, find_studies
from connector.backfill.runner import Runner
from connector.backfill.worklist import Worklist
from connector.store.layout import SiteLayout
from connector.site_db import open_state
from tests.backfill.conftest import PACS_AET, day, in_process_config, load, make_study, register_connector
from tests.support.dicomfiles import dataset_bytes, stored_by_sop
from tests.support.orthanc import OrthancServer


class CountingProxy:
    """Forwards loopback TCP connections to ``port`` and records the most open at the same time."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = 0
        self.most = 0
        self.total = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += 1
                self.total += 1
                self.most = max(self.most, self.open)
            pending = [2]

            def pump(src: socket.socket, dst: socket.socket) -> None:
                try:
                    while data := src.recv(65536):
                        dst.sendall(data)
                except OSError:
                    pass
                finally:
                    for s in (src, dst):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    with self.lock:
                        pending[0] -= 1
                        if pending[0] == 0:
                            self.open -= 1
                            src.close()
                            dst.close()

            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    def close(self) -> None:
        self.server.close()


def _log_count(orthanc: OrthancServer, text: str) -> int:
    return (orthanc.workdir / "orthanc.log").read_text(errors="replace").count(text)


def test_a_large_study_is_retrieved_series_by_series_several_at_once(tmp_path: Path) -> None:
    big = make_study(tmp_path / "s", "big", "20240301", ("CT", "PT", "MR"), "PET CT CARDIAC", per_series=24)
    small = make_study(tmp_path / "s", "small", "20240302", ("CT", "PT"), "PET CT CARDIAC", per_series=3)
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET) as orthanc:
        load(orthanc, [big, small])
        register_connector(orthanc, 1)
        orthanc.request("PUT", "/tools/log-level", b"verbose")
        proxy = CountingProxy(orthanc.dicom_port)
        try:
            config = in_process_config(tmp_path / "data", orthanc, pacs__retrieve="get", pacs__port=proxy.port,
                                       backfill__series_threshold=10, backfill__series_in_flight=3,
                                       backfill__max_concurrent=1)
            layout = SiteLayout.from_config(config)
            layout.ensure()
            store = open_state(layout.state_db)
            try:
                flt = StudyFilter(day("2024-03-01"), day("2024-03-02"))
                found = find_studies(config, flt)
                assert sorted(s.expected_instances for s in found.studies) == [6, 72]
                job = Worklist(store).create_job(found.studies, flt.as_dict())["job"]
                gets_before = _log_count(orthanc, "Incoming Get request")
                progress: list[int] = []
                run = Runner(config, store, layout, stop=threading.Event(), job_id=job, respect_window=False,
                             on_progress=progress.append).run_until_done()
                gets = _log_count(orthanc, "Incoming Get request") - gets_before
                assert run.retrieved == 2 and run.failed == 0 and run.instances == 78 and sum(progress) == 78
                stored = stored_by_sop(layout.spool)
                expected = {_sop(f): f for s in (big, small) for f in s.files}
                assert set(stored) == set(expected)
                for uid, path in expected.items():
                    assert dataset_bytes(stored[uid]) == dataset_bytes(path)
            finally:
                store.close()
        finally:
            proxy.close()
    # the large study: one C-GET per series (3), the small one: one for the study
    assert gets == 4, gets
    # the 3 series of the large study were in flight together (the query and the small study alone: 1 each)
    assert proxy.most >= 2, proxy.most
    assert proxy.total == 1 + 1 + 3 + 1  # C-FIND, series C-FIND, 3 series C-GETs, the small study's C-GET


def test_series_threshold_zero_retrieves_whole_studies(tmp_path: Path) -> None:
    big = make_study(tmp_path / "s", "big", "20240301", ("CT", "PT"), "PET CT", per_series=6)
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET) as orthanc:
        load(orthanc, [big])
        register_connector(orthanc, 1)
        orthanc.request("PUT", "/tools/log-level", b"verbose")
        config = in_process_config(tmp_path / "data", orthanc, pacs__retrieve="get", backfill__series_threshold=0)
        layout = SiteLayout.from_config(config)
        layout.ensure()
        store = open_state(layout.state_db)
        try:
            flt = StudyFilter(day("2024-03-01"), day("2024-03-01"))
            job = Worklist(store).create_job(find_studies(config, flt).studies, flt.as_dict())["job"]
            before = _log_count(orthanc, "Incoming Get request")
            run = Runner(config, store, layout, stop=threading.Event(), job_id=job, respect_window=False
                         ).run_until_done()
            assert run.retrieved == 1 and run.instances == 12
            assert _log_count(orthanc, "Incoming Get request") - before == 1
        finally:
            store.close()


def _sop(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_c_move_series_by_series_into_the_running_daemon(tmp_path: Path) -> None:
    import json

    from tests.backfill.conftest import pacs_settings
    from tests.support.daemon import ConnectorProcess

    big = make_study(tmp_path / "s", "big", "20240301", ("CT", "PT", "MR"), "PET CT CARDIAC", per_series=8)
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET) as orthanc:
        load(orthanc, [big])
        daemon = ConnectorProcess(tmp_path / "site", **pacs_settings(
            orthanc, backfill__window="00:00-00:01", backfill__series_threshold=10, backfill__series_in_flight=3,
            assemble__stable_seconds=3600))
        register_connector(orthanc, daemon.port)
        orthanc.request("PUT", "/tools/log-level", b"verbose")
        with daemon:
            added = json.loads(daemon.cli("backfill", "add", "--from", "2024-03-01", "--to", "2024-03-01", "--json",
                                          check=True).stdout)
            assert added["queued"] == 1 and added["instances"] == 24
            before = _log_count(orthanc, "Incoming Move request")
            out = daemon.cli("backfill", "run", "1", "--json")
            assert out.returncode == 0, out.stderr
            run = json.loads(out.stdout)
            assert (run["retrieved"], run["instances"], run["failed"]) == (1, 24, 0)
            moves = _log_count(orthanc, "Incoming Move request") - before
            stored = stored_by_sop(daemon.spool)
    assert moves == 3, moves  # one C-MOVE per series
    assert set(stored) == {_sop(f) for f in big.files}
    for f in big.files:
        assert dataset_bytes(stored[_sop(f)]) == dataset_bytes(f)
