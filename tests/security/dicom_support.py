"""Helpers for the DICOM-door security tests: a receiver in this process, hand-built PDUs (so any
abstract syntax, even one no library would encode, can be proposed), and the receiver process of a
running daemon found through /proc."""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import MaximumLengthNotification

from connector.ingest import pdu
from tests.ingest.test_ingest_protocol import Receiver as ProtocolReceiver

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
MWL_FIND = "1.2.840.10008.5.1.4.31"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


class Receiver(ProtocolReceiver):
    """The protocol tests' in-process StoreSCP on 127.0.0.1, given ``[dicom]`` settings by name and
    used as a context manager."""

    def __init__(self, tmp: Path, **dicom: str) -> None:
        super().__init__(tmp, **{f"SITE_CONNECTOR__DICOM__{k.upper()}": v for k, v in dicom.items()})

    def __enter__(self) -> Receiver:
        self.scp.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- PDUs built by hand ----------------------------------------------------------------------------

def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(body)) + body


def associate_rq(contexts: Iterable[tuple[int, str, list[str]]], calling: str = "RAWSCU",
                 max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing ``(context ID, abstract syntax, transfer syntaxes)``."""
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cid, abstract, syntaxes in contexts:
        body = bytes((cid, 0, 0, 0)) + _item(0x30, abstract.encode("latin-1"))
        body += b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        items += _item(0x20, body)
    items += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.9.9999"))
    head = struct.pack(">HH16s16s32x", 1, 0, b"SITECONN".ljust(16), calling.encode().ljust(16))
    return pdu.encode_pdu(pdu.A_ASSOCIATE_RQ, head + items)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(type, body) of the next PDU; (0, b"") when the peer closed the connection."""
    header = recv_exact(sock, 6)
    if len(header) < 6:
        return 0, b""
    pdu_type, length = struct.unpack(">BxI", header)
    return pdu_type, recv_exact(sock, length)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return data


def accepted(ac_body: bytes) -> tuple[dict[int, int], int]:
    """From an A-ASSOCIATE-AC body: {context ID: result} and the maximum PDU length it announces."""
    ac = A_ASSOCIATE_AC()
    ac.decode(pdu.encode_pdu(pdu.A_ASSOCIATE_AC, ac_body))
    primitive = ac.to_primitive()
    results = {int(cx.context_id): int(cx.result) for cx in primitive.presentation_context_definition_results_list}
    max_pdu = next(int(i.maximum_length_received) for i in primitive.user_information
                   if isinstance(i, MaximumLengthNotification))
    return results, max_pdu


def associate(port: int, contexts: Iterable[tuple[int, str, list[str]]] = ((1, CT, [EXPLICIT_LE]),),
              source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """A connection that sent its A-ASSOCIATE-RQ and got an A-ASSOCIATE-AC: (socket, AC body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(associate_rq(contexts))
    pdu_type, body = read_pdu(sock)
    assert pdu_type == pdu.A_ASSOCIATE_AC, f"expected A-ASSOCIATE-AC, got PDU type {pdu_type:#x}"
    return sock, body


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def store_command(sop_uid: str, message_id: int = 1) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = CT
    ds.CommandField = 0x0001
    ds.MessageID = message_id
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = sop_uid
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    body = bytes(fp.getvalue())
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def response_status(body: bytes) -> int:
    """The Status of the command set in a P-DATA-TF body holding one whole command."""
    from pydicom.filereader import read_dataset

    return int(read_dataset(io.BytesIO(body[6:]), True, True).Status)


# -- a daemon's receiver process ---------------------------------------------------------------------

def listening_pids(port: int, candidates: Iterable[int]) -> list[int]:
    """Which of ``candidates`` hold the socket listening on TCP ``port`` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    found = []
    for pid in candidates:
        try:
            links = [p.readlink().name for p in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
            found.append(pid)
    return found


def children(pid: int) -> list[int]:
    kids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            kids.append(int(status.parent.name))
    return kids


def receiver_pid(supervisor: int, port: int, timeout: float = 30.0) -> int:
    """The one receiver role process (``receiver_processes = 1``) of the daemon ``supervisor``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = listening_pids(port, children(supervisor))
        if len(pids) == 1:
            return pids[0]
        time.sleep(0.1)
    raise AssertionError("no single receiver process listening on the DICOM port")


def proc_status(pid: int, field: str) -> int:
    """An integer field of /proc/<pid>/status (VmRSS and VmHWM in kB, Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)
