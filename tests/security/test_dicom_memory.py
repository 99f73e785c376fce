"""Issue 24 row 1 against the real daemon: four associations stream an endless DIMSE command fragment
(the issue's one P-DATA-TF of length 0xFFFFFFFF, and a command set spread over many PDUs each within
the PDU limit) while the receiver process's RSS is sampled from /proc. Before the fix one receiver
grew by what was sent (70 MB -> 2 GB in the issue); now each association is aborted at once."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

from connector.ingest import pdu
from tests.security.dicom_support import associate, pdv, proc_status, read_pdu, receiver_pid
from tests.support.daemon import ConnectorProcess

pytestmark = pytest.mark.slow

RSS_BOUND_KB = 50 * 1024  # the documented bound: the receiver may grow by less than 50 MB
STREAM_BYTES = 48 * 1024 * 1024  # what each attacker tries to send: 192 MB for the four
CHUNK = 256 * 1024


class Attacker:
    """One association streaming a command fragment that never ends; a second thread reads replies."""

    def __init__(self, port: int, kind: str) -> None:
        self.sock, _ = associate(port)
        self.kind = kind
        self.sent = 0
        self.reply: tuple[int, bytes] | None = None
        self.threads = [threading.Thread(target=self._send), threading.Thread(target=self._read)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(60)
        self.sock.close()

    def _send(self) -> None:
        zeros = bytes(CHUNK)
        try:
            if self.kind == "one-pdu":  # the PDU: 4 GB declared, a command PDV, not last
                self.sock.sendall(struct.pack(">BxI", pdu.P_DATA_TF, 0xFFFFFFFF)
                                  + struct.pack(">IBB", 0xFFFFFFFB, 1, 0x01))
                while self.sent < STREAM_BYTES:
                    self.sock.sendall(zeros)
                    self.sent += CHUNK
            else:  # one command set over many PDUs, each far below the PDU limit
                piece = pdu.encode_pdu(pdu.P_DATA_TF, pdv(1, 0x01, zeros[:32 * 1024]))
                while self.sent < STREAM_BYTES:
                    self.sock.sendall(piece)
                    self.sent += len(piece)
        except OSError:
            pass  # the receiver closed the connection: what we wanted

    def _read(self) -> None:
        self.sock.settimeout(10)
        try:
            self.reply = read_pdu(self.sock)
        except OSError:
            self.reply = None


def test_endless_command_fragments_leave_the_receiver_memory_bounded(tmp_path: Path) -> None:
    daemon = ConnectorProcess(tmp_path / "site", dicom__receiver_processes=1, cac__enabled=False,
                              assemble__stable_seconds=600)
    with daemon:
        assert daemon.proc is not None
        pid = receiver_pid(daemon.proc.pid, daemon.port)
        warm, _ = associate(daemon.port)  # warm the receiver up: a worker thread, buffers, pynetdicom
        warm.sendall(pdu.encode_pdu(pdu.A_RELEASE_RQ, bytes(4)))
        assert read_pdu(warm)[0] == pdu.A_RELEASE_RP
        warm.close()
        time.sleep(0.5)
        baseline, baseline_hwm = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
        peak = baseline
        attackers = [Attacker(daemon.port, kind) for kind in ("one-pdu", "many-pdus", "one-pdu", "many-pdus")]
        started = time.monotonic()
        for a in attackers:
            a.start()
        while any(t.is_alive() for a in attackers for t in a.threads):
            peak = max(peak, proc_status(pid, "VmRSS"))
            time.sleep(0.01)
        seconds = time.monotonic() - started
        peak = max(peak, proc_status(pid, "VmRSS"))
        for a in attackers:
            a.join()
        hwm = proc_status(pid, "VmHWM")  # the kernel's own peak: no transient growth between samples escapes
        logs = daemon.wait_for_log('"association_aborted"')
        assert daemon.proc.poll() is None and pid == receiver_pid(daemon.proc.pid, daemon.port)  # no crash
    sent_mb = sum(a.sent for a in attackers) / 2**20
    print(f"RSS baseline {baseline / 1024:.1f} MB, sampled peak {peak / 1024:.1f} MB "
          f"(+{(peak - baseline) / 1024:.1f} MB), "
          f"VmHWM {baseline_hwm / 1024:.1f} -> {hwm / 1024:.1f} MB; attackers got {sent_mb:.1f} MB into the socket "
          f"before the receiver closed it; {seconds:.2f} s")
    assert peak - baseline < RSS_BOUND_KB, f"receiver grew by {(peak - baseline) / 1024:.0f} MB"
    assert hwm - baseline_hwm < RSS_BOUND_KB, f"receiver's peak RSS rose by {(hwm - baseline_hwm) / 1024:.0f} MB"
    for a in attackers:  # every association was aborted: invalid PDU parameter, from the provider
        assert a.reply is not None and a.reply[0] == pdu.A_ABORT, (a.kind, a.reply)
        assert a.reply[1][2:4] == bytes((pdu.SOURCE_SERVICE_PROVIDER, pdu.REASON_INVALID_PARAMETER)), a.kind
    assert logs.count("PDU longer than the maximum announced") == 2
    assert logs.count("command set longer than 65536 bytes") == 2
    assert "Traceback" not in logs and '"role_died"' not in logs
