"""Issue 24 row 2 against the real daemon: a host that is not on the allow-list (127.0.0.2) holds 200
idle TCP connections, reconnecting whichever the receiver closes, while the PACS (dcmtk's storescu
from 127.0.0.1, the one allowed address) associates and stores. Before the fix those connections
took every association place (the PACS got A-ASSOCIATE-RJ 2/3/2) and a thread each."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import pytest

from connector.synthetic import SyntheticStudy, ct_slices, write_series
from tests.faults.support import storescu
from tests.security.dicom_support import proc_status, receiver_pid
from tests.support.daemon import ConnectorProcess
from tests.support.dicomfiles import stored_by_sop

pytestmark = pytest.mark.slow

HOG_CONNECTIONS = 200
MAX_ASSOCIATIONS, MAX_PENDING = 32, 64  # the defaults: the receiver's worker pool has at most 96 threads


class Hog:
    """Keeps ``count`` connections from ``source`` open without a word, reconnecting closed ones."""

    def __init__(self, port: int, source: str, count: int) -> None:
        self.port, self.source, self.count = port, source, count
        self.open: list[socket.socket] = []
        self.connects = 0
        self.closed_by_receiver = 0
        self.filled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Hog:
        self._thread.start()
        assert self.filled.wait(60), "could not open the idle connections"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for s in self.open:
            s.close()

    def _connect(self) -> None:
        try:
            self.open.append(socket.create_connection(("127.0.0.1", self.port), timeout=2,
                                                      source_address=(self.source, 0)))
            self.connects += 1
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            while len(self.open) < self.count and not self._stop.is_set():
                self._connect()
            self.filled.set()
            readable, _, _ = select.select(self.open, [], [], 0.2)  # closed by the receiver: EOF or reset
            for s in readable:
                try:
                    gone = not s.recv(1, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    self.closed_by_receiver += 1
                    self.open.remove(s)
                    s.close()
            time.sleep(0.2)  # then reconnect them: the attacker never lets go


def test_idle_connections_from_a_host_not_allowed_do_not_lock_the_pacs_out(tmp_path: Path) -> None:
    files = write_series(ct_slices(SyntheticStudy(), 3, rows=64, cols=64), tmp_path / "pacs")
    daemon = ConnectorProcess(tmp_path / "site", dicom__receiver_processes=1, dicom__allowed_hosts=["127.0.0.1"],
                              dicom__artim_timeout_seconds=2, cac__enabled=False, assemble__stable_seconds=600)
    with daemon:
        assert daemon.proc is not None
        pid = receiver_pid(daemon.proc.pid, daemon.port)
        threads_before = proc_status(pid, "Threads")
        threads_peak = threads_before
        with Hog(daemon.port, "127.0.0.2", HOG_CONNECTIONS) as hog:
            time.sleep(3)  # past the 2 s ARTIM timeout: the hog has had to reconnect
            result: dict[str, object] = {}
            began = time.monotonic()
            pacs = threading.Thread(target=lambda: result.update(out=storescu(daemon.port, files, timeout=60)))
            pacs.start()
            while pacs.is_alive():
                threads_peak = max(threads_peak, proc_status(pid, "Threads"))
                time.sleep(0.05)
            store_seconds = time.monotonic() - began
            threads_peak = max(threads_peak, proc_status(pid, "Threads"))
            held = len(hog.open)
        stored = stored_by_sop(daemon.spool)
        logs = daemon.logs()
    out = result["out"]
    print(f"hog: {hog.connects} connects, {hog.closed_by_receiver} seen closed by the receiver, {held} open on its "
          f"side at the end; receiver threads {threads_before} -> peak {threads_peak}; storescu {store_seconds:.1f} s")
    assert out.returncode == 0, out.stdout + out.stderr  # type: ignore[attr-defined]
    assert len(stored) == len(files)
    assert hog.connects >= HOG_CONNECTIONS and hog.closed_by_receiver >= HOG_CONNECTIONS - MAX_PENDING // 2
    assert threads_peak - threads_before <= MAX_ASSOCIATIONS + MAX_PENDING, (threads_before, threads_peak)
    assert "association_rejected" not in logs  # the PACS was never turned away as busy
    assert 0 < logs.count('"connection_refused"') <= 3  # one line a minute per source, not one per connection
