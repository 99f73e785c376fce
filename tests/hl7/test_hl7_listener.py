"""The HL7 listener in-process, over real sockets, with a real linkage table, outbox, push worker and
dev registry: deaths become the same follow-up events a coordinator's CSV would produce."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.config import Config
from connector.followup.feeds import read_counts
from connector.hl7.listener import Hl7Service, spool_dir
from connector.outbox import Outbox
from connector.push.worker import PushWorker
from devregistry import RegistryServer
from tests.followup.conftest import FollowupSite, days_between, make_site, write_csv
from tests.hl7.support import MllpClient, ack_code, adt
from tests.support.waiting import wait_for


class Site:
    """A follow-up site with the HL7 listener and the push worker running."""

    def __init__(self, tmp: Path, hl7_extra: str = "") -> None:
        self.token = secrets.token_urlsafe(24)
        token_file = tmp / "registry.token"
        token_file.write_text(self.token + "\n")
        os.chmod(token_file, 0o600)
        self.registry = RegistryServer(tmp / "registry", token=self.token, port=0, fsync=False).start()
        self.fs: FollowupSite = make_site(
            tmp / "site", f'[registry]\nurl = "{self.registry.url}"\ntoken_file = "{token_file}"\n'
            "poll_seconds = 0.1\nbackoff_min_seconds = 0.2\nbackoff_max_seconds = 2\n"
            f'[hl7]\nport = 0\nhost = "127.0.0.1"\nmax_message_bytes = 4096\n{hl7_extra}')
        self.fs.layout.ensure()
        self.config: Config = self.fs.config
        self.store = self.fs.store()
        self.worker = PushWorker(self.config, self.store, self.fs.layout)
        self.worker.start()
        self.service = Hl7Service(self.config, self.fs.provider(), self.store, Outbox(self.store),
                                  on_processed=self.worker.wake).start()

    def client(self, **kw: Any) -> MllpClient:
        return MllpClient(self.service.port, **kw)

    def events(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.registry.url}/api/v1/events", headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return list(r.json()["events"])

    def settle(self) -> None:
        """Wait until the spool is empty and the outbox delivered."""
        wait_for(lambda: not list(spool_dir(self.config).glob("*.hl7")), 30, what="the spool processed")
        self.worker.wake()
        assert self.worker.drain(30)

    def counts(self) -> dict[str, int]:
        self.service._flush_counts()
        return read_counts(self.store.conn).get("hl7", {})

    def close(self) -> None:
        self.service.stop()
        self.worker.stop()
        self.fs.close()
        self.registry.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    yield s
    s.close()


def _shift(value: str, offset: int) -> str:
    v = value.replace("-", "")
    return (dt.date(int(v[:4]), int(v[4:6]), int(v[6:])) + dt.timedelta(days=offset)).isoformat()


def test_a08_death_is_one_event_with_the_real_interval(site: Site) -> None:
    s = site.fs.add_patient("HL7-100", issuer="HOSP-A", study_date="20190310")
    message = adt("A08", "HL7-100", death="202402291415", indicator="Y")
    with site.client() as c:
        assert ack_code(c.send(message))[:2] == ("AA", "MSG00001")
        assert ack_code(c.send(message))[0] == "AA"  # the engine re-sends: still one event
    site.settle()
    (event,) = site.events()
    assert event["pseudonym"] == s.pseudonym and event["event"] == "death"
    assert event["days_from_index"] == days_between("20190310", "2024-02-29")
    assert days_between(_shift(s.index_date, s.date_offset_days), event["event_date"]) == event["days_from_index"]
    assert (event["version"], event["retracted"], event["source"]) == (1, False, "hospital_discharge")
    assert "HL7-100" not in str(event) and "2024-02-29" not in str(event)
    counts = site.counts()
    assert counts["received"] == 2 and counts["matched"] == 2 and counts["sent"] == 1 and counts["errors"] == 0
    audit = [e for e in site.service.provider.audit_log.entries() if e.get("action") == "followup.import"]
    assert [e["details"]["channel"] for e in audit] == ["hl7", "hl7"] and audit[0]["details"]["matched"] == 1
    assert "HL7-100" not in str(audit)


def test_unknown_patient_leaves_no_trace_on_disk(site: Site) -> None:
    site.fs.add_patient("KNOWN-1")
    mrn, family = "ZQX-UNKNOWN-93817", "VORTIGANZA"
    message = adt("A08", mrn, death="20240101", indicator="Y").replace(b"SYNTHFAMILY", family.encode())
    with site.client() as c:
        assert ack_code(c.send(message))[0] == "AA"
    assert site.counts()["unmatched_dropped"] == 1
    site.settle()
    assert site.events() == []
    for path in site.fs.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in (mrn.encode(), family.encode(), mrn.encode("utf-16-le")):
                assert needle not in data, f"{needle!r} found in {path.name}"


def test_bad_input_gets_ar_or_a_closed_connection_and_the_listener_stays_up(site: Site) -> None:
    site.fs.add_patient("OK-1", study_date="20200101")
    with site.client() as c:
        code, control, reason = ack_code(c.send(b"MSH|^~\\&|X|Y|Z|W|2025||ADT^A08|BROKEN|P|2.5\rPID|\x00\xff"))
        assert code in ("AR", "AE")
        assert ack_code(c.send(adt("R01", "OK-1", message_type="ORU", control="C2")))[::2] == (
            "AR", "unsupported_message_type")
        assert ack_code(c.send(adt("A01", "OK-1", control="C3")))[::2] == ("AR", "unsupported_event")
        assert ack_code(c.send(adt("A08", "OK-1", indicator="Y", control="C4")))[::2] == ("AR", "death_without_date")
        assert ack_code(c.send(b"this is not HL7 at all"))[0] == "AR"
    with site.client() as c:  # larger than max_message_bytes (4096): AR, then the connection is closed
        big = adt("A08", "OK-1", control="BIG1").replace(b"SYNTHFAMILY", b"X" * 8000)
        code, control, reason = ack_code(c.send(big))
        assert (code, control, reason) == ("AR", "BIG1", "message_too_large")
        assert c.read_ack() is None
    with site.client() as c:  # not MLLP at all (a browser, a scanner): closed without an answer
        c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_ack() is None
    with site.client() as c:  # a frame cut off by the peer
        c.send_raw(b"\x0bMSH|^~\\&|half")
    with site.client() as c:  # still serving
        assert ack_code(c.send(adt("A08", "OK-1", death="20240505", indicator="Y", control="OK")))[:2] == ("AA", "OK")
    site.settle()
    assert len(site.events()) == 1
    assert site.counts()["errors"] >= 6


def test_csv_and_hl7_of_one_death_are_one_event(site: Site, tmp_path: Path) -> None:
    a = site.fs.add_patient("BOTH-1", study_date="20180601")
    b = site.fs.add_patient("BOTH-2", study_date="20180601")
    csv = write_csv(tmp_path / "deaths.csv", [
        {"patient_id": "BOTH-1", "issuer": "HOSP-A", "event": "death", "event_date": "2023-07-04",
         "source": "death_index"}])
    assert site.fs.run(csv, today=dt.date.today()).queued == 1
    with site.client() as c:  # the same death from the ADT feed, then B's death from the feed first
        assert ack_code(c.send(adt("A08", "BOTH-1", death="20230704", indicator="Y", control="A1")))[0] == "AA"
        assert ack_code(c.send(adt("A03", "BOTH-2", disposition="41", discharge="202305010830", control="A2")))[0] == "AA"
    site.settle()
    csv2 = write_csv(tmp_path / "deaths2.csv", [
        {"patient_id": "BOTH-2", "issuer": "HOSP-A", "event": "death", "event_date": "2023-05-01",
         "source": "death_certificate"}])
    again = site.fs.run(csv2, today=dt.date.today())
    assert again.unchanged == 1 and again.queued == 0
    site.settle()
    events = site.events()
    assert sorted((e["pseudonym"], e["version"]) for e in events) == sorted([(a.pseudonym, 1), (b.pseudonym, 1)])
    by = {e["pseudonym"]: e for e in events}
    assert by[a.pseudonym]["source"] == "death_index" and by[b.pseudonym]["source"] == "hospital_discharge"
    assert by[b.pseudonym]["days_from_index"] == days_between("20180601", "2023-05-01")
    files = read_counts(site.store.conn)["file"]
    assert (files["received"], files["matched"], files["sent"], files["errors"]) == (2, 2, 1, 0)


def test_retraction_sends_a_correction_event(site: Site) -> None:
    s = site.fs.add_patient("RET-1", study_date="20200101")
    with site.client() as c:
        assert ack_code(c.send(adt("A08", "RET-1", death="20240110", indicator="Y", control="R1")))[0] == "AA"
        assert ack_code(c.send(adt("A08", "RET-1", indicator="", control="R2")))[0] == "AA"  # says nothing
        assert ack_code(c.send(adt("A08", "RET-1", indicator="N", control="R3")))[0] == "AA"
    site.settle()
    events = sorted(site.events(), key=lambda e: e["version"])
    assert [(e["pseudonym"], e["version"], e["retracted"]) for e in events] == [
        (s.pseudonym, 1, False), (s.pseudonym, 2, True)]
    assert events[0]["event_id"] == events[1]["event_id"]


def test_a13_cancel_of_an_expired_discharge_retracts(site: Site) -> None:
    site.fs.add_patient("CAN-1", study_date="20200101")
    with site.client() as c:
        assert ack_code(c.send(adt("A03", "CAN-1", disposition="20", discharge="20240301", control="D1")))[0] == "AA"
        assert ack_code(c.send(adt("A13", "CAN-1", disposition="20", control="D2")))[0] == "AA"
    site.settle()
    assert [e["retracted"] for e in sorted(site.events(), key=lambda e: e["version"])] == [False, True]


def test_a40_merge_is_recorded_and_a_later_death_on_the_survivor_matches(site: Site) -> None:
    old = site.fs.add_patient("OLD-77", study_date="20210203")
    with site.client() as c:
        assert ack_code(c.send(adt("A40", "NEW-88", prior=("OLD-77", "HOSP-A"), control="M1")))[0] == "AA"
        site.settle()
        assert site.events() == []  # a merge alone moves nothing
        assert ack_code(c.send(adt("A08", "NEW-88", death="20240812", indicator="Y", control="M2")))[0] == "AA"
    site.settle()
    (event,) = site.events()
    assert event["pseudonym"] == old.pseudonym
    assert event["days_from_index"] == days_between("20210203", "2024-08-12")
    merges = site.store.conn.execute("SELECT surviving, pseudonym FROM followup_merges").fetchall()
    assert len(merges) == 1 and "NEW-88" not in merges[0][0]


def test_a_message_spooled_before_a_crash_is_processed_at_start(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        s = site.fs.add_patient("CRASH-1", study_date="20200101")
        site.service.stop()
        spool = spool_dir(site.config)
        (spool / "00000000000000000001-1-00000000.hl7").write_bytes(adt("A08", "CRASH-1", death="20240102",
                                                                          indicator="Y"))
        (spool / "x.hl7.part").write_bytes(b"half written, never acknowledged")
        site.service = Hl7Service(site.config, site.fs.provider(), site.store, Outbox(site.store),
                                  on_processed=site.worker.wake).start()
        site.settle()
        assert [e["pseudonym"] for e in site.events()] == [s.pseudonym]
        assert not list(spool.iterdir())
    finally:
        site.close()


def test_allowed_hosts_refuses_other_peers(tmp_path: Path) -> None:
    site = Site(tmp_path, 'allowed_hosts = ["10.99.0.0/16"]\n')
    try:
        site.fs.add_patient("NOPE-1")
        with site.client() as c:
            assert c.send(adt("A08", "NOPE-1", death="20240101", indicator="Y")) is None
        assert not list(spool_dir(site.config).glob("*"))
    finally:
        site.close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "hl7.crt", folder / "hl7.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_listener(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    site = Site(tmp_path, f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n')
    try:
        site.fs.add_patient("TLS-1", study_date="20200101")
        ctx = ssl.create_default_context(cafile=str(cert))
        with site.client(tls=ctx) as c:
            assert ack_code(c.send(adt("A08", "TLS-1", death="20240303", indicator="Y")))[0] == "AA"
        with socket.create_connection(("127.0.0.1", site.service.port), timeout=5) as plain:  # plain MLLP on TLS port
            plain.sendall(b"\x0b" + adt("A08", "TLS-1", death="20240303", indicator="Y") + b"\x1c\x0d")
            try:
                reply = plain.recv(4096)
            except ConnectionResetError:
                reply = b""
            assert b"MSA|AA" not in reply  # refused: nothing but TLS is spoken on that port
        site.settle()
        assert len(site.events()) == 1
    finally:
        site.close()


def test_connections_beyond_max_connections_are_closed_and_reconnects_reuse_the_pool(tmp_path: Path) -> None:
    site = Site(tmp_path, "max_connections = 1\n")
    try:
        site.fs.add_patient("MAX-1", study_date="20200101")
        first = site.client()
        assert ack_code(first.send(adt("A08", "MAX-1", control="1")))[0] == "AA"
        with site.client() as second:  # the one slot is taken: closed without an answer
            assert second.send(adt("A08", "MAX-1", control="2")) is None
        first.close()
        for i in range(30):  # a monitor's probes or an engine's reconnects: served one after another
            with wait_for(lambda: _connect_and_ack(site, i), 10, what="a free slot"):
                pass
        threads = {t.name for t in threading.enumerate() if t.name.startswith("hl7-conn")}
        assert len(threads) == 1  # one pool thread, reused (its database connections with it)
    finally:
        site.close()


def _connect_and_ack(site: Site, i: int) -> MllpClient | None:
    c = site.client()
    reply = c.send(adt("A08", "MAX-1", control=f"P{i}"))
    if reply is None:  # the previous connection's slot not released yet
        c.close()
        return None
    assert ack_code(reply)[0] == "AA"
    return c
