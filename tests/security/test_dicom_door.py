"""Issue 24 rows 1 and 2, in seconds: every door of the receiver has a bound. The real StoreSCP on
127.0.0.1, driven by hand-made PDUs over real sockets; other loopback addresses (127.0.0.2, .3)
play hosts that are not on the allow-list."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from connector.ingest import dimse, pdu
from tests.security.dicom_support import (CT, EXPLICIT_LE, Receiver, accepted, associate, associate_rq, pdv, read_pdu)
from tests.support.waiting import wait_until

DEFAULT_MAX_PDU = 4 * 1024 * 1024


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the receiver closed ``sock`` (EOF or reset) within ``seconds``, reading what it sent."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False


def _abort_reason(sock: socket.socket, seconds: float = 5.0) -> int | None:
    """The provider reason of the A-ABORT the receiver sends next (None: none came in time)."""
    sock.settimeout(seconds)
    try:
        pdu_type, body = read_pdu(sock)
    except (TimeoutError, socket.timeout):
        return None
    if pdu_type != pdu.A_ABORT:
        return None
    assert body[2] == pdu.SOURCE_SERVICE_PROVIDER
    return body[3]


def _threads(prefix: str = "scp-conn") -> int:
    return sum(t.name.startswith(prefix) for t in threading.enumerate())


# -- memory: PDUs and command sets ---------------------------------------------------------------

def test_the_announced_pdu_size_is_finite_and_a_longer_pdu_is_refused_from_its_header(tmp_path: Path) -> None:
    with Receiver(tmp_path) as r:
        sock, ac = associate(r.port)
        with sock:
            assert accepted(ac)[1] == DEFAULT_MAX_PDU
            started = time.monotonic()
            sock.sendall(struct.pack(">BxI", pdu.P_DATA_TF, DEFAULT_MAX_PDU + 1))  # the header, and nothing else
            assert _abort_reason(sock) == pdu.REASON_INVALID_PARAMETER  # answered without waiting for the body
            assert time.monotonic() - started < 2
            assert _closed_within(sock, 5)


def test_an_endless_command_fragment_is_aborted_at_64_kib_without_identifiers_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fragment = b"\x00" * (16 * 1024)  # each PDU well under the PDU limit: only the command set grows
    with Receiver(tmp_path) as r, caplog.at_level(logging.WARNING, logger="connector.ingest"):
        sock, _ = associate(r.port)
        with sock:
            try:
                for _ in range(5):  # 80 KiB of one command set, never "last"
                    sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, pdv(1, 0x01, fragment)))
            except (BrokenPipeError, ConnectionResetError):
                pass  # aborted while still sending: read the A-ABORT below
            assert _abort_reason(sock) == pdu.REASON_INVALID_PARAMETER
    aborts = [rec for rec in caplog.records if getattr(rec, "event", "") == "association_aborted"]
    reasons = [getattr(rec, "reason", "") for rec in aborts]
    assert reasons == [f"command set longer than {dimse.MAX_COMMAND_SET} bytes"]  # the limit, never the bytes
    assert dimse.MAX_COMMAND_SET == 64 * 1024


def _echo_command(message_id: int) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = "1.2.840.10008.1.1"
    ds.CommandField = dimse.C_ECHO_RQ
    ds.MessageID = message_id
    ds.CommandDataSetType = dimse.NO_DATASET
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    body = bytes(fp.getvalue())
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _fragments(data: bytes, cuts: list[int], per_pdu: int, *, ends: bool = True) -> list[bytes]:
    """``data`` as command PDVs cut at ``cuts``, ``per_pdu`` PDVs to a P-DATA-TF PDU; the last PDV
    says "last fragment" only if ``ends``."""
    points = sorted({c % len(data) for c in cuts if c % len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    pdvs = [pdv(1, 0x03 if ends and i == len(pieces) - 1 else 0x01, p) for i, p in enumerate(pieces)]
    return [pdu.encode_pdu(pdu.P_DATA_TF, b"".join(pdvs[i:i + per_pdu])) for i in range(0, len(pdvs), per_pdu)]


@pytest.fixture(scope="module")
def shared_receiver(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with Receiver(tmp_path_factory.mktemp("hypothesis")) as r:
        yield r


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(over=st.integers(1, 96 * 1024), cuts=st.lists(st.integers(1, 1 << 20), max_size=12),
       per_pdu=st.integers(1, 4), echo_cuts=st.lists(st.integers(1, 200), max_size=6))
def test_command_sets_are_capped_across_fragments_however_they_are_cut(
        shared_receiver: Receiver, over: int, cuts: list[int], per_pdu: int, echo_cuts: list[int]) -> None:
    """Whatever the fragmentation, a command set is answered up to the cap and aborted past it: the
    cap counts the command set, not one fragment, and never refuses a well-formed one."""
    sock, _ = associate(shared_receiver.port)
    with sock:
        echo = _echo_command(7)
        for piece in _fragments(echo, echo_cuts, per_pdu):
            sock.sendall(piece)
        pdu_type, body = read_pdu(sock)
        assert pdu_type == pdu.P_DATA_TF and b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00" in body  # Status 0
        too_long = b"\x00" * (dimse.MAX_COMMAND_SET + over)
        try:
            for piece in _fragments(too_long, cuts, per_pdu, ends=False):  # never the last fragment: endless
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _abort_reason(sock, 3) == pdu.REASON_INVALID_PARAMETER


# -- connections: ARTIM, pending caps, association places ---------------------------------------

def test_a_connection_without_a_request_is_closed_after_the_artim_timeout(tmp_path: Path) -> None:
    """An idle connection, and one trickling its A-ASSOCIATE-RQ a byte every 0.1 s (each read is
    quick, the whole is not), are both closed once the 1 s ARTIM timeout has passed."""
    closed: dict[str, float] = {}

    def watch(name: str, sock: socket.socket, started: float) -> None:
        if _closed_within(sock, 5):
            closed[name] = time.monotonic() - started

    with Receiver(tmp_path, artim_timeout_seconds="1") as r:
        idle = socket.create_connection(("127.0.0.1", r.port), timeout=10)
        trickle = socket.create_connection(("127.0.0.1", r.port), timeout=10)
        started = time.monotonic()
        watchers = [threading.Thread(target=watch, args=(name, s, started)) for name, s in
                    (("idle", idle), ("trickle", trickle))]
        for w in watchers:
            w.start()
        for byte in associate_rq([(1, CT, [EXPLICIT_LE])])[:40]:
            if "trickle" in closed:
                break
            try:
                trickle.sendall(bytes((byte,)))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        for w in watchers:
            w.join(10)
        idle.close()
        trickle.close()
        assert set(closed) == {"idle", "trickle"}, closed
        assert all(0.9 <= seconds < 2.5 for seconds in closed.values()), closed
        assert wait_until(lambda: r.scp.limits.pending == 0) and r.scp.limits.associated == 0


def test_idle_connections_do_not_take_association_places(tmp_path: Path) -> None:
    """One association place; ten idle connections (five from a host not on the allow-list) first."""
    with Receiver(tmp_path, max_associations="1", allowed_hosts='["127.0.0.1"]') as r:
        idle = [socket.create_connection(("127.0.0.1", r.port), timeout=10, source_address=(host, 0))
                for host in ["127.0.0.2"] * 5 + ["127.0.0.1"] * 5]
        time.sleep(0.5)  # all ten accepted and waiting
        sock, ac = associate(r.port)  # the PACS still gets the one place
        assert r.scp.limits.pending == 10
        assert accepted(ac)[0] == {1: 0}
        # a host that is not allowed is refused when it asks, and never holds a place
        with socket.create_connection(("127.0.0.1", r.port), timeout=10, source_address=("127.0.0.2", 0)) as other:
            other.sendall(associate_rq([(1, CT, [EXPLICIT_LE])]))
            pdu_type, body = read_pdu(other)
            assert pdu_type == pdu.A_ASSOCIATE_RJ and tuple(body[1:4]) == (0x01, 0x01, 0x01)
        assert r.scp.limits.associated == 1
        sock.close()
        for s in idle:
            s.close()


def test_pending_connections_are_capped_per_host_and_for_hosts_not_allowed(tmp_path: Path) -> None:
    with Receiver(tmp_path, max_pending_connections="8", max_pending_per_host="3",
                  allowed_hosts='["127.0.0.1"]', artim_timeout_seconds="30") as r:
        flood = [socket.create_connection(("127.0.0.1", r.port), timeout=10, source_address=("127.0.0.2", 0))
                 for _ in range(10)]
        assert wait_until(lambda: r.scp.limits.pending == 3)
        refused = [s for s in flood if _closed_within(s, 0.5)]
        assert len(refused) == 7  # over the per-host cap: closed at once, not after the ARTIM timeout
        other = [socket.create_connection(("127.0.0.1", r.port), timeout=10, source_address=("127.0.0.3", 0))
                 for _ in range(3)]
        # hosts not on the allow-list share half of the 8 pending places: 127.0.0.3 gets the fourth
        assert sum(not _closed_within(s, 0.5) for s in other) == 1
        assert r.scp.limits.pending == 4
        # the allowed host has the other half, and associates
        sock, _ = associate(r.port)
        assert r.scp.limits.associated == 1
        assert _threads() <= 8 + 32  # the worker pool: max_pending_connections + max_associations
        for s in [*flood, *other, sock]:
            s.close()

