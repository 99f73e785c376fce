"""The receiver's own DIMSE loop: codecs checked against pydicom/pynetdicom, and the upper-layer
protocol driven over a real socket, by pynetdicom as a second, independent sender and by hand-made
PDUs for what no well-behaved sender does (aborts mid-object, bad fragments, unknown commands)."""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom import AE, build_context
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from connector.config import load_config
from connector.ingest import dimse, pdu
from connector.dicom_elements import read_leading
from connector.ingest.intake import FILING_TAGS, Intake, read_header
from connector.ingest.scp import StoreSCP, configure_receiver_process
from connector.store.layout import SiteLayout
from connector.site_db import open_state
from connector.synthetic import SyntheticStudy, ct_slices, write_series
from tests.support.dicomfiles import dataset_bytes, stored_by_sop
from tests.support.net import free_port
from tests.support.waiting import wait_until

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def scan_filing_attributes(head: bytes, *, implicit_vr: bool, whole: bool) -> dict[str, str] | None:
    return read_leading(head, 0, explicit=not implicit_vr, wanted=FILING_TAGS, last_tag=0x0020000E, whole=whole)


# -- codecs -----------------------------------------------------------------------------------------

def _pynetdicom_command(primitive: object) -> bytes:
    from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ

    msg = C_STORE_RQ() if isinstance(primitive, C_STORE) else C_ECHO_RQ()
    msg.primitive_to_message(primitive)
    return encode(msg.command_set, True, True)


def test_command_decoding_matches_pynetdicom_encoding() -> None:
    store = C_STORE()
    store.MessageID = 7
    store.AffectedSOPClassUID = CT
    store.AffectedSOPInstanceUID = "1.2.3.4.5"
    store.Priority = 2
    store.MoveOriginatorApplicationEntityTitle = "MOVER"
    store.MoveOriginatorMessageID = 3
    store.DataSet = io.BytesIO(b"\x08\x00")  # a dataset follows
    cmd = dimse.decode_command(_pynetdicom_command(store))
    assert (cmd.command_field, cmd.message_id, cmd.has_dataset) == (dimse.C_STORE_RQ, 7, True)
    assert (cmd.affected_sop_class_uid, cmd.affected_sop_instance_uid) == (CT, "1.2.3.4.5")
    assert cmd.move_originator_aet == "MOVER"
    echo = C_ECHO()
    echo.MessageID = 65535
    cmd = dimse.decode_command(_pynetdicom_command(echo))
    assert (cmd.command_field, cmd.message_id, cmd.has_dataset) == (dimse.C_ECHO_RQ, 65535, False)


@pytest.mark.parametrize("raw", [b"\x00\x00\x00\x01\x04\x00\x00\x00", b"\x08\x00\x16\x00\x02\x00\x00\x00ab",
                                 b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00"])
def test_malformed_command_sets_are_refused(raw: bytes) -> None:
    with pytest.raises(dimse.CommandError):
        dimse.decode_command(raw)


def test_responses_decode_with_pydicom_to_the_right_fields() -> None:
    request = dimse.Command(dimse.C_STORE_RQ, 513, CT, "1.2.3.45", True)
    ds = read_dataset(io.BytesIO(dimse.encode_store_response(request, 0xA700)), True, True)
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8001, 513, 0xA700)
    assert (ds.AffectedSOPClassUID, ds.AffectedSOPInstanceUID, ds.CommandDataSetType) == (CT, "1.2.3.45", 0x0101)
    body = dimse.encode_store_response(request, 0)
    assert ds.CommandGroupLength == len(body) - 12
    ds = read_dataset(io.BytesIO(dimse.encode_echo_response(dimse.Command(dimse.C_ECHO_RQ, 9))), True, True)
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8030, 9, 0)


@pytest.mark.parametrize("implicit", [False, True])
def test_filing_attribute_scan_agrees_with_pydicom(implicit: bool) -> None:
    compared = 0
    local_files = sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))  # no downloads
    for name in local_files:
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True)
            ds.set_original_encoding(implicit, True)
            raw = _encoded(ds, implicit)
        except Exception:
            continue  # files pydicom itself cannot re-encode
        found = scan_filing_attributes(raw, implicit_vr=implicit, whole=True)
        if found is None:
            continue  # the walk may decline (a wanted value of undefined length): the caller then uses pydicom
        compared += 1
        for keyword in ("SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID"):
            expected = str(ds[keyword].value).strip() if keyword in ds and ds[keyword].value else ""
            assert found.get(keyword, "") == expected, (name, keyword)
    assert compared >= 30


def _encoded(ds: pydicom.Dataset, implicit: bool) -> bytes:
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def test_filing_attribute_scan_declines_what_it_cannot_vouch_for(tmp_path: Path) -> None:
    ds = next(ct_slices(SyntheticStudy(), 1, rows=8, cols=8))
    raw = _encoded(ds, False)
    assert scan_filing_attributes(raw[:40], implicit_vr=False, whole=False) is None  # ends too soon
    assert scan_filing_attributes(raw, implicit_vr=False, whole=True)["Modality"] == "CT"
    not_a_vr = b"\x08\x00\x16\x00\x01\x02" + bytes(range(256))
    assert scan_filing_attributes(not_a_vr, implicit_vr=False, whole=True) is None
    # a sequence of undefined length before the wanted elements is skipped item by item
    sequence = (b"\x08\x00\x05\x01SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
                + b"\x08\x00\x00\x01SH\x04\x00ABCD" + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
                + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    at = raw.index(b"\x08\x00\x16\x00")  # (0008,0016): insert the sequence right before it
    skipped = scan_filing_attributes(raw[:at] + sequence + raw[at:], implicit_vr=False, whole=True)
    assert skipped == scan_filing_attributes(raw, implicit_vr=False, whole=True)
    unterminated = raw[:at] + sequence[:-8] + raw[at:]
    assert scan_filing_attributes(unterminated, implicit_vr=False, whole=True) is None


# -- the receiver on a socket -------------------------------------------------------------------------

class Receiver:
    def __init__(self, tmp: Path, **env: str) -> None:
        self.port = free_port()
        environ = {"SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES": "0", "SITE_CONNECTOR__DICOM__PORT": str(self.port),
                   "SITE_CONNECTOR__DICOM__HOST": "127.0.0.1",
                   "SITE_CONNECTOR__STORAGE__DATA_DIR": str(tmp / "site"), **env}
        cfg = load_config(None, environ=environ)
        self.layout = SiteLayout.from_config(cfg)
        self.layout.ensure()
        self.store = open_state(self.layout.state_db)
        configure_receiver_process()
        self.intake = Intake(self.layout, self.store)
        self.scp = StoreSCP(cfg.dicom, self.intake)

    def close(self) -> None:
        self.scp.stop(drain_seconds=2)
        self.intake.close()
        self.store.close()

    def partial_with_content(self) -> list[Path]:
        return [p for p in self.layout.partial.rglob("*") if p.is_file() and p.stat().st_size]


@pytest.fixture()
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path)
    r.scp.start()
    yield r
    r.close()


def test_pynetdicom_as_sender_stores_and_echoes(receiver: Receiver, tmp_path: Path) -> None:
    files = write_series(ct_slices(SyntheticStudy(), 5, rows=64, cols=64), tmp_path / "in")
    ae = AE(ae_title="PYNETSCU")
    ae.add_requested_context(CT, [EXPLICIT_LE])
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.maximum_pdu_size = 4096  # many small fragments per object
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SITECONN")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    for f in files:
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
    assoc.release()
    stored = stored_by_sop(receiver.layout.spool)
    assert len(stored) == 5
    for f in files:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(stored[uid]) == dataset_bytes(f)
        assert read_header(stored[uid]).transfer_syntax == EXPLICIT_LE
    rows = receiver.store.conn.execute("SELECT calling_aet, modality FROM instances").fetchall()
    assert set(rows) == {("PYNETSCU", "CT")}


def _associate(port: int, contexts: list[tuple[int, str, str]], calling: str = "RAWSCU") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_associate_rq(contexts, calling))
    assert _read_pdu(sock)[0] == pdu.A_ASSOCIATE_AC
    return sock


def _associate_rq(contexts: list[tuple[int, str, str]], calling: str) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "SITECONN"
    items = []
    for cid, abstract, ts in contexts:
        cx = PresentationContext()
        cx.context_id, cx.abstract_syntax, cx.transfer_syntax = cid, abstract, [ts]
        items.append(cx)
    primitive.presentation_context_definition_list = items
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return bytes(rq.encode())


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _recv(sock, 6)
    if not header:
        return 0, b""
    pdu_type, length = struct.unpack(">BxI", header)
    return pdu_type, _recv(sock, length)


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def _store_command(message_id: int, sop_uid: str) -> bytes:
    store = C_STORE()
    store.MessageID = message_id
    store.AffectedSOPClassUID = CT
    store.AffectedSOPInstanceUID = sop_uid
    store.Priority = 0
    store.DataSet = io.BytesIO(b"\x08\x00")
    return _pynetdicom_command(store)


def _one_dataset(tmp_path: Path) -> tuple[bytes, str]:
    f = write_series(ct_slices(SyntheticStudy(), 1, rows=64, cols=64), tmp_path / "one")[0]
    return dataset_bytes(f), str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)


def test_one_pdu_larger_than_the_read_buffer_and_many_pdvs_per_pdu(receiver: Receiver, tmp_path: Path) -> None:
    data, uid = _one_dataset(tmp_path)
    big = write_series(ct_slices(SyntheticStudy(), 1, rows=1024, cols=1024), tmp_path / "big")[0]
    big_data = dataset_bytes(big)
    big_uid = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    sock = _associate(receiver.port, [(1, CT, EXPLICIT_LE)])
    # object 1: command and dataset split into 3 PDVs inside a single P-DATA-TF PDU
    third = len(data) // 3
    body = (_pdv(1, 0x03, _store_command(1, uid)) + _pdv(1, 0x00, data[:third]) + _pdv(1, 0x00, data[third:2 * third])
            + _pdv(1, 0x02, data[2 * third:]))
    sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, body))
    status = read_dataset(io.BytesIO(_read_pdu(sock)[1][6:]), True, True).Status
    assert status == 0
    # object 2: a 2 MB dataset in one PDV of one PDU (the receiver advertised an unlimited PDU size)
    sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x03, _store_command(2, big_uid))))
    sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x02, big_data)))
    assert read_dataset(io.BytesIO(_read_pdu(sock)[1][6:]), True, True).Status == 0
    sock.sendall(pdu.encode_pdu(pdu.A_RELEASE_RQ, bytes(4)))
    assert _read_pdu(sock)[0] == pdu.A_RELEASE_RP
    sock.close()
    stored = stored_by_sop(receiver.layout.spool)
    assert dataset_bytes(stored[uid]) == data and dataset_bytes(stored[big_uid]) == big_data




def test_abort_mid_object_stores_nothing_and_leaves_no_partial(receiver: Receiver, tmp_path: Path) -> None:
    data, uid = _one_dataset(tmp_path)
    sock = _associate(receiver.port, [(1, CT, EXPLICIT_LE)])
    sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x03, _store_command(1, uid)) + _pdv(1, 0x00, data[:1000])))
    assert wait_until(lambda: bool(receiver.partial_with_content()))  # the object was being written
    sock.sendall(pdu.abort(pdu.SOURCE_SERVICE_USER))
    assert _read_pdu(sock) == (0, b"")  # the receiver closed the connection
    sock.close()
    assert wait_until(lambda: not receiver.partial_with_content())
    assert not stored_by_sop(receiver.layout.spool)
    assert receiver.store.conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0


def test_connection_dropped_mid_object_stores_nothing(receiver: Receiver, tmp_path: Path) -> None:
    data, uid = _one_dataset(tmp_path)
    sock = _associate(receiver.port, [(1, CT, EXPLICIT_LE)])
    sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x03, _store_command(1, uid)) + _pdv(1, 0x00, data[:5000])))
    assert wait_until(lambda: bool(receiver.partial_with_content()))
    sock.close()
    assert wait_until(lambda: not receiver.partial_with_content())
    assert not stored_by_sop(receiver.layout.spool)


@pytest.mark.parametrize("case", ["unknown-context", "dataset-without-command", "unknown-pdu-type", "c-find",
                                  "release-mid-object", "garbage-command"])
def test_protocol_violations_get_an_abort_and_store_nothing(receiver: Receiver, tmp_path: Path, case: str) -> None:
    data, uid = _one_dataset(tmp_path)
    sock = _associate(receiver.port, [(1, CT, EXPLICIT_LE)])
    sent = {
        "unknown-context": pdu.encode_pdu(pdu.P_DATA_TF, _pdv(3, 0x03, _store_command(1, uid))),
        "dataset-without-command": pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x02, data)),
        "unknown-pdu-type": pdu.encode_pdu(0x09, bytes(8)),
        "c-find": pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x03, _fix_command_field(_store_command(1, uid), 0x0020))),
        "release-mid-object": pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x03, _store_command(1, uid))
                                             + _pdv(1, 0x00, data[:100])) + pdu.encode_pdu(pdu.A_RELEASE_RQ, bytes(4)),
        "garbage-command": pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x03, b"\x01\x02\x03")),
    }[case]
    sock.sendall(sent)
    pdu_type, body = _read_pdu(sock)
    assert pdu_type == pdu.A_ABORT and body[2] == pdu.SOURCE_SERVICE_PROVIDER
    expected_reason = {"unknown-pdu-type": pdu.REASON_UNRECOGNIZED_PDU,
                       "garbage-command": pdu.REASON_INVALID_PARAMETER}.get(case, pdu.REASON_UNEXPECTED_PDU)
    assert body[3] == expected_reason
    assert _read_pdu(sock) == (0, b"")
    sock.close()
    assert wait_until(lambda: not receiver.partial_with_content())
    assert not stored_by_sop(receiver.layout.spool)


def _fix_command_field(command: bytes, field: int) -> bytes:
    raw = bytearray(command)
    at = raw.index(b"\x00\x00\x00\x01\x02\x00\x00\x00") + 8
    raw[at:at + 2] = struct.pack("<H", field)
    return bytes(raw)


def test_a_port_probe_and_a_non_dicom_client_do_not_disturb_the_receiver(receiver: Receiver, tmp_path: Path) -> None:
    socket.create_connection(("127.0.0.1", receiver.port)).close()
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as http:
        http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_pdu(http)[0] == pdu.A_ABORT
    data, uid = _one_dataset(tmp_path)
    sock = _associate(receiver.port, [(1, CT, EXPLICIT_LE)])
    sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x03, _store_command(1, uid)) + _pdv(1, 0x02, data)))
    assert read_dataset(io.BytesIO(_read_pdu(sock)[1][6:]), True, True).Status == 0
    sock.close()


def test_more_associations_than_allowed_are_rejected_as_busy(tmp_path: Path) -> None:
    """Read as raw bytes: pynetdicom as the caller races its own socket close on a fast reject and
    may report "could not connect" instead of the rejection (seen once in CI on a loaded machine)."""
    r = Receiver(tmp_path, SITE_CONNECTOR__DICOM__MAX_ASSOCIATIONS="1")
    r.scp.start()
    try:
        first = _associate(r.port, [(1, CT, EXPLICIT_LE)])
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as second:
            second.sendall(_associate_rq([(1, CT, EXPLICIT_LE)], "SECOND"))
            pdu_type, body = _read_pdu(second)
            assert pdu_type == pdu.A_ASSOCIATE_RJ
            assert tuple(body[1:4]) == (0x02, 0x03, 0x02)  # transient, provider (presentation), local limit
            assert _read_pdu(second) == (0, b"")  # and the receiver closed the connection
        first.close()
        assert wait_until(lambda: not r.scp._snapshot())  # neither caller holds a slot any more
        third = _associate(r.port, [(1, CT, EXPLICIT_LE)])  # a slot freed is a slot again
        third.close()
    finally:
        r.close()


def test_storage_contexts_accept_the_first_proposed_syntax_and_non_storage_are_refused(receiver: Receiver) -> None:
    ae = AE(ae_title="PYNETSCU")
    ae.add_requested_context(CT, ["1.2.840.10008.1.2.4.80", EXPLICIT_LE])
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.1")  # Study Root Query/Retrieve FIND
    ae.requested_contexts.append(build_context("1.2.840.10008.1.1"))
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SITECONN")
    assert assoc.is_established
    accepted = {str(cx.abstract_syntax): str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    assert accepted == {CT: "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.1": "1.2.840.10008.1.2"}
    assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == ["1.2.840.10008.5.1.4.1.2.2.1"]
    assoc.release()



def test_a_silent_association_is_aborted_after_the_network_timeout(tmp_path: Path) -> None:
    r = Receiver(tmp_path, SITE_CONNECTOR__DICOM__NETWORK_TIMEOUT="1")
    r.scp.start()
    try:
        data, uid = _one_dataset(tmp_path)
        sock = _associate(r.port, [(1, CT, EXPLICIT_LE)])
        sock.sendall(pdu.encode_pdu(pdu.P_DATA_TF, _pdv(1, 0x03, _store_command(1, uid)) + _pdv(1, 0x00, data[:500])))
        started = time.monotonic()
        assert _read_pdu(sock)[0] == pdu.A_ABORT  # then nothing more: the sender went quiet mid-object
        assert 0.9 <= time.monotonic() - started < 5
        sock.close()
        assert wait_until(lambda: not r.partial_with_content())
        assert not stored_by_sop(r.layout.spool)
    finally:
        r.close()
