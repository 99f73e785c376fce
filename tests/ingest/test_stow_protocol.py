"""The STOW-RS door over real loopback sockets: answers, refusals and what is left on disk.

The server is the real :class:`connector.ingest.stow.StowServer` with a real Intake and state
database in a temporary site folder; requests are written with http.client (or raw sockets where
the HTTP framing itself is under test). End-to-end runs through the daemon and Orthanc are in
test_stow_orthanc.py.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from connector.ingest.intake import Intake
from connector.ingest.negotiation import Offer
from connector.ingest.stow import StowServer
from connector.settings.stow import StowConfig
from connector.site_db import open_state
from connector.store.layout import SiteLayout
from connector.synthetic import SyntheticStudy, write_pet_ct_study

TOKEN = "t-" + "a" * 30


def multipart(parts: list[bytes], boundary: str = "b0undary-x", *, part_type: str = "application/dicom") -> bytes:
    out = bytearray()
    for data in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


class Door:
    """A StowServer on an ephemeral loopback port over a fresh site folder."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0, **settings: object) -> None:
        tokens = root / "stow.tokens"
        tokens.write_text(TOKEN + "\n")
        os.chmod(tokens, 0o600)
        settings.setdefault("token_file", tokens)
        self.cfg = StowConfig(enabled=True, host="127.0.0.1", port=0, **settings)  # type: ignore[arg-type]
        self.layout = SiteLayout(root / "data", root / "keys")
        self.layout.ensure()
        self.store = open_state(self.layout.state_db)
        self.intake = Intake(self.layout, self.store, partial_dir=self.layout.partial / "stow",
                             min_free_bytes=min_free_bytes)
        self.server = StowServer(self.cfg, self.intake, Offer(max_pdu_length=1 << 20))
        self.server.start()

    def post(self, body: bytes, *, token: str | None = TOKEN, path: str = "/dicomweb/studies",
             ctype: str = 'multipart/related; type="application/dicom"; boundary=b0undary-x',
             accept: str = "application/dicom+json") -> tuple[int, bytes, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        headers = {"Content-Type": ctype, "Accept": accept}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data, resp.getheader("Content-Type", "")

    def stored_rows(self) -> int:
        db = sqlite3.connect(self.layout.state_db)
        try:
            return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
        finally:
            db.close()

    def files_left(self) -> list[Path]:
        """Every file under the spool (partial and incoming)."""
        return [p for p in self.layout.spool.rglob("*") if p.is_file()]

    def close(self) -> None:
        self.server.stop(drain_seconds=2)
        self.intake.close()
        self.store.close()


@pytest.fixture
def door(tmp_path: Path) -> Iterator[Door]:
    d = Door(tmp_path)
    yield d
    d.close()


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    _, files = write_pet_ct_study(tmp_path_factory.mktemp("stow-study"), SyntheticStudy(), ct_count=4, pet_count=2,
                                  ct_rows=64)
    return files


def test_all_parts_stored_gives_200_with_referenced_sop_sequence(door: Door, study_files: list[Path]) -> None:
    status, body, ctype = door.post(multipart([p.read_bytes() for p in study_files]))
    assert status == 200, body
    assert ctype == "application/dicom+json"
    answer = json.loads(body)
    referenced = answer["00081199"]["Value"]
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study_files}
    assert {item["00081155"]["Value"][0] for item in referenced} == sent
    assert "00081198" not in answer
    assert door.stored_rows() == len(study_files)
    # filed exactly like C-STORE: under spool/incoming, nothing left in partial
    assert not [p for p in (door.layout.partial / "stow").iterdir()]
    # a re-send of the same instances is harmless: 200 again, still one row each
    status, _, _ = door.post(multipart([p.read_bytes() for p in study_files]))
    assert status == 200 and door.stored_rows() == len(study_files)


def test_mixed_good_and_bad_parts_give_202_naming_the_failed_ones(door: Door, study_files: list[Path]) -> None:
    good = study_files[0].read_bytes()
    unsupported = pydicom.dcmread(study_files[1])
    unsupported.SOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND: not a storage class
    unsupported.file_meta.MediaStorageSOPClassUID = unsupported.SOPClassUID
    bad_uid = str(unsupported.SOPInstanceUID)
    path = door.layout.data_dir / "unsupported.dcm"
    unsupported.save_as(path)
    status, body, _ = door.post(multipart([good, b"this is not DICOM at all" * 10, path.read_bytes()]))
    assert status == 202, body
    answer = json.loads(body)
    failed = answer["00081198"]["Value"]
    reasons = sorted(item["00081197"]["Value"][0] for item in failed)
    assert reasons == [0xA900, 0xC000]
    assert [i["00081155"]["Value"][0] for i in failed if i["00081197"]["Value"][0] == 0xA900] == [bad_uid]
    assert len(answer["00081199"]["Value"]) == 1
    assert door.stored_rows() == 1
    # the unreadable part is kept in quarantine like an unreadable C-STORE object; the refused class is not kept
    assert len(list((door.layout.quarantine / "ingest").glob("*.json"))) == 1


def test_xml_response_when_asked(door: Door, study_files: list[Path]) -> None:
    status, body, ctype = door.post(multipart([study_files[0].read_bytes()]), accept="application/dicom+xml")
    assert status == 200 and ctype == "application/dicom+xml"
    assert b'keyword="ReferencedSOPSequence"' in body and b"NativeDicomModel" in body


def test_instance_of_another_study_than_the_url_is_refused(door: Door, study_files: list[Path]) -> None:
    other = "1.2.3." + str(uuid.uuid4().int)[:20]
    status, body, _ = door.post(multipart([study_files[0].read_bytes()]), path=f"/dicomweb/studies/{other}")
    assert status == 409, body
    assert json.loads(body)["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert door.stored_rows() == 0


def test_wrong_or_missing_token_gives_401_and_nothing_stored(door: Door, study_files: list[Path]) -> None:
    body = multipart([study_files[0].read_bytes()])
    for token in ("wrong-token", None):
        status, _, _ = door.post(body, token=token)
        assert status == 401
    assert door.stored_rows() == 0 and door.files_left() == []


def test_unknown_client_refused_before_the_body_is_read(tmp_path: Path, study_files: list[Path]) -> None:
    door = Door(tmp_path, allowed_hosts=["10.99.0.0/16"])
    try:
        # Expect: 100-continue lets us see the refusal comes before the body: none of it is sent
        sock = socket.create_connection(("127.0.0.1", door.server.port), timeout=10)
        sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=b"
                     + b"\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
        answer = sock.recv(4096)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 403"), answer[:60]
        assert door.stored_rows() == 0 and door.files_left() == []
    finally:
        door.close()


def test_body_over_the_limit_gives_413_and_leaves_no_file(tmp_path: Path, study_files: list[Path]) -> None:
    door = Door(tmp_path, max_request_bytes=1024**2)
    try:
        big = multipart([os.urandom(1_200_000)])
        status, _, _ = door.post(big)
        assert status == 413
        # chunked, without a Content-Length: refused when the count crosses the limit
        sock = socket.create_connection(("127.0.0.1", door.server.port), timeout=10)
        sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=b0undary-x"
                     + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        answer = b""
        try:
            for i in range(0, len(big), 65536):
                chunk = big[i:i + 65536]
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server stopped reading: expected
        sock.settimeout(10)
        try:
            while b"\r\n" not in answer:
                got = sock.recv(4096)
                if not got:
                    break
                answer += got
        except OSError:
            pass
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:60]
        time.sleep(0.2)
        assert door.files_left() == [] and door.stored_rows() == 0
        assert not (door.layout.quarantine / "ingest").exists() or not any((door.layout.quarantine / "ingest").iterdir())
    finally:
        door.close()


def test_malformed_multipart_gives_400_and_the_listener_stays_up(door: Door, study_files: list[Path]) -> None:
    good = study_files[0].read_bytes()
    cut = multipart([good])[:-40]  # the closing boundary is missing: body ends inside the part
    status, _, _ = door.post(cut)
    assert status == 400
    status, _, _ = door.post(b"no boundary anywhere in here")
    assert status == 400
    status, _, _ = door.post(multipart([good]), ctype="multipart/related; type=\"application/dicom\"")  # no boundary
    assert status == 400
    assert [p for p in (door.layout.partial / "stow").iterdir()] == []
    status, _, _ = door.post(multipart([good]))
    assert status == 200 and door.stored_rows() == 1


def test_wrong_media_types_give_415_and_406(door: Door, study_files: list[Path]) -> None:
    body = multipart([study_files[0].read_bytes()])
    assert door.post(body, ctype="application/dicom")[0] == 415
    assert door.post(body, ctype='multipart/related; type="application/dicom+json"; boundary=b0undary-x')[0] == 415
    assert door.post(body, accept="text/html")[0] == 406
    assert door.stored_rows() == 0


def test_config_refuses_a_stow_door_without_authentication() -> None:
    from connector.settings.stow import cross_check

    assert cross_check(StowConfig(enabled=True)) is not None
    assert cross_check(replace(StowConfig(enabled=True), tls_cert_file=Path("c"), tls_key_file=Path("k"),
                               tls_ca_file=Path("ca"))) is None
    assert cross_check(StowConfig()) is None  # off by default: nothing to check


def test_mutual_tls_admits_a_sender_with_a_certificate_and_refuses_one_without(tmp_path: Path,
                                                                             study_files: list[Path]) -> None:
    import ssl

    from tests.security.web_support import self_signed

    server_cert, server_key = self_signed(tmp_path / "server")
    client_cert, client_key = self_signed(tmp_path / "client")  # self-signed: its own CA for the test
    door = Door(tmp_path, token_file=None, tls_cert_file=server_cert, tls_key_file=server_key,
                tls_ca_file=client_cert)
    body = multipart([study_files[0].read_bytes()])
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary-x'}
    try:
        with_cert = ssl.create_default_context(cafile=str(server_cert))
        with_cert.load_cert_chain(str(client_cert), str(client_key))
        conn = http.client.HTTPSConnection("127.0.0.1", door.server.port, context=with_cert, timeout=30)
        conn.request("POST", "/dicomweb/studies", body=body, headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        conn.close()
        without = ssl.create_default_context(cafile=str(server_cert))
        conn = http.client.HTTPSConnection("127.0.0.1", door.server.port, context=without, timeout=30)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            conn.request("POST", "/dicomweb/studies", body=body, headers=headers)
            conn.getresponse()
        conn.close()
        assert door.stored_rows() == 1
    finally:
        door.close()


def test_two_requests_on_one_kept_alive_connection(door: Door, study_files: list[Path]) -> None:
    """The body's epilogue (after the closing boundary) is consumed, so a second request on the same
    connection is read from its first byte (Orthanc and most clients keep connections open). The
    epilogue arrives late, after the parser has seen the closing boundary."""
    def request(body: bytes, extra: bytes = b"") -> bytes:
        return (b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                + b"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=b0undary-x"
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)

    epilogue = b"an epilogue, ignored\r\n"
    first = request(multipart([study_files[0].read_bytes()]) + epilogue)
    sock = socket.create_connection(("127.0.0.1", door.server.port), timeout=30)
    sock.sendall(first[:-len(epilogue)])
    time.sleep(0.5)
    sock.sendall(epilogue + request(multipart([study_files[1].read_bytes()]), b"Connection: close\r\n"))
    answers = b""
    while chunk := sock.recv(65536):
        answers += chunk
    sock.close()
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers[:400]
    assert door.stored_rows() == 2


def test_disk_below_the_floor_fails_every_part_with_a700_and_keeps_nothing(tmp_path: Path,
                                                                          study_files: list[Path]) -> None:
    """The same free-space floor as C-STORE ([storage] min_free_bytes): the sender is told to retry."""
    door = Door(tmp_path, min_free_bytes=1 << 62)
    try:
        status, body, _ = door.post(multipart([p.read_bytes() for p in study_files[:3]]))
        assert status == 409, body
        reasons = [i["00081197"]["Value"][0] for i in json.loads(body)["00081198"]["Value"]]
        assert reasons == [0xA700] * 3
        assert door.stored_rows() == 0 and door.files_left() == []
    finally:
        door.close()
