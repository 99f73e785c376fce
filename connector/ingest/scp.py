"""C-STORE / C-ECHO SCP: the PACS-facing door of the connector (pynetdicom).

Decisions, and why:
- Every storage SOP class with every transfer syntax is accepted; compressed data is stored as
  received (decoding is later stages' business, and re-encoding would alter what we received).
- Datasets are streamed by pynetdicom to a file under ``spool/partial`` while they arrive
  (``STORE_RECV_CHUNKED_DATASET``), so a 1 GB object never sits in memory; the handler then runs
  the durability protocol in :mod:`connector.ingest.intake` and only then answers 0x0000.
- Callers are filtered at association time: a calling AE title or IP address that is not on the
  allow-list gets an A-ASSOCIATE-RJ, never an accepted association whose data is thrown away.
- TCP_NODELAY on every accepted socket: without it each C-STORE response waits ~40 ms on
  Nagle's algorithm and delayed ACKs; and event-driven reactor waits
  (:mod:`connector.ingest.pynetdicom_speedups`) instead of pynetdicom's fixed 1 ms sleeps.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import AE, _config, evt
from pynetdicom.acse import ACSE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from connector.config import DicomConfig
from connector.ingest.intake import DiskFull, Intake, UnreadableObject
from connector.ingest.pynetdicom_speedups import install_fast_file_meta, make_prompt

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # the sender should retry later
STATUS_CANNOT_UNDERSTAND = 0xC210  # the object is unusable; it is kept in quarantine


def configure_pynetdicom(partial_dir: Path) -> None:
    """Process-wide pynetdicom settings the receiver depends on.

    pynetdicom keeps these as module globals; the daemon is their only user in its process.
    The chunked temporary files are created with :mod:`tempfile`, so its folder is pointed at the
    spool's partial folder: same disk as the final files (renames stay atomic), cleared at start-up.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    _config.LOG_HANDLER_LEVEL = "none"
    tempfile.tempdir = str(partial_dir)
    install_fast_file_meta()
    # pydicom's value-validation warnings quote the values (names, IDs): never let them reach logs
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


class _Admission:
    """Calling-AE and IP allow-lists; empty lists admit anyone."""

    def __init__(self, ae_titles: list[str], hosts: list[str]) -> None:
        self.ae_titles = {a.strip() for a in ae_titles}
        self.networks = [ipaddress.ip_network(h, strict=False) for h in hosts]

    def reason_to_reject(self, calling_aet: str, address: str) -> tuple[int, int, int] | None:
        """(result, source, diagnostic) for A-ASSOCIATE-RJ, or None to admit."""
        if self.networks:
            try:
                ip = ipaddress.ip_address(address.split("%")[0])
            except ValueError:
                return (0x01, 0x01, 0x01)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            if not any(ip in net for net in self.networks):
                return (0x01, 0x01, 0x01)  # rejected-permanent, service-user, no-reason-given
        if self.ae_titles and calling_aet.strip() not in self.ae_titles:
            return (0x01, 0x01, 0x03)  # calling-AE-title-not-recognized
        return None


class _AdmissionACSE(ACSE):
    """ACSE that applies the allow-lists before the normal acceptor negotiation."""

    admission: _Admission

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        calling = str(rq.calling_ae_title).strip() if rq is not None else ""
        address = str(self.assoc.requestor.address)
        verdict = self.admission.reason_to_reject(calling, address)
        if verdict is not None:
            self.requestor.ae_title = calling
            log.warning("association rejected", extra={"event": "association_rejected", "calling_aet": calling,
                                                        "peer": address, "diagnostic": verdict[2]})
            self.send_reject(*verdict)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


class _Handler(RequestHandler):
    def _create_association(self) -> Any:
        assoc = super()._create_association()
        acse = assoc.acse
        acse.__class__ = _AdmissionACSE
        acse.admission = self.server.admission  # type: ignore[attr-defined]
        make_prompt(assoc)  # event-driven waits instead of pynetdicom's fixed 1 ms sleeps
        return assoc


class _Server(ThreadedAssociationServer):
    """Association server with TCP_NODELAY and allow-list admission."""

    admission: _Admission
    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port:  # several receiver processes share the port; the kernel balances them
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # type: ignore[union-attr]
        super().server_bind()


class _SharedPortServer(_Server):
    reuse_port = True

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()  # type: ignore[union-attr]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(sock, server_side=True)
        return sock, address


def tls_context(cfg: DicomConfig) -> ssl.SSLContext | None:
    if not cfg.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
    if cfg.tls_ca_file:
        ctx.load_verify_locations(str(cfg.tls_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: only PACS holding a cert from this CA
    return ctx


class StoreSCP:
    """The running receiver. ``start()`` listens; ``stop()`` stops accepting and drains associations."""

    def __init__(self, cfg: DicomConfig, intake: Intake, *, reuse_port: bool = False) -> None:
        self.cfg = cfg
        self.intake = intake
        self.reuse_port = reuse_port
        self._server: _Server | None = None
        self.ae = AE(ae_title=cfg.ae_title)
        self.ae.maximum_pdu_size = 0  # unlimited: fewer, larger PDUs
        self.ae.maximum_associations = cfg.max_associations
        self.ae.network_timeout = cfg.network_timeout
        self.ae.dimse_timeout = cfg.network_timeout
        self.ae.acse_timeout = 30
        self.ae.require_called_aet = False
        # Storage contexts need no list: with UNRESTRICTED_STORAGE_SERVICE every storage (and
        # private) SOP class is accepted with the first transfer syntax the sender proposes.
        self.ae.add_supported_context(Verification)
        self.stats_lock = threading.Lock()
        self.stored = 0
        self.failed = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        server = self.ae.make_server(
            (self.cfg.host, self.cfg.port), ae_title=self.cfg.ae_title, evt_handlers=handlers,
            ssl_context=tls_context(self.cfg), server_class=_SharedPortServer if self.reuse_port else _Server,
        )
        server.admission = _Admission(self.cfg.allowed_ae_titles, self.cfg.allowed_hosts)
        server.RequestHandlerClass = _Handler
        self.ae._servers.append(server)  # so pynetdicom's own shutdown bookkeeping finds it
        thread = threading.Thread(target=server.serve_forever, name="scp-acceptor", daemon=True)
        thread.start()
        self._server = server
        log.info("DICOM receiver listening", extra={"event": "scp_listening", "port": self.port,
                                                    "ae_title": self.cfg.ae_title, "tls": bool(self.cfg.tls_cert_file)})

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, then let in-flight associations finish (up to ``drain_seconds``)."""
        server = self._server
        if server is None:
            return
        server.shutdown()  # stops serve_forever and closes the listening socket
        deadline = time.monotonic() + drain_seconds
        # Established associations may be mid-transfer: let them finish. Connections that never
        # sent an A-ASSOCIATE-RQ (port probes) have nothing to lose and are dropped at once.
        while any(a.is_established for a in server.active_associations) and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            if assoc.is_established:
                assoc.abort()  # still sending after the drain period: the sender retries later
            else:
                assoc.kill()  # never negotiated: nothing to tell the peer
        self._server = None
        log.info("DICOM receiver stopped", extra={"event": "scp_stopped"})

    # -- event handlers ------------------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        part = Path(event.dataset_path)
        try:
            self.intake.check_space()
            # complete by construction: pynetdicom saw the last fragment of the dataset
            self.intake.ingest_partial(part, source="scp", calling_aet=calling, verify_complete=False)
        except DiskFull:
            log.error("spool disk below free-space floor; asking sender to retry",
                      extra={"event": "disk_low"})
            return self._fail(STATUS_OUT_OF_RESOURCES)
        except UnreadableObject as exc:
            try:
                self.intake.quarantine_partial(part, exc, source="scp")
            except OSError:
                log.exception("could not quarantine an unreadable object", extra={"event": "quarantine_failed"})
                return self._fail(STATUS_OUT_OF_RESOURCES)
            return self._fail(STATUS_CANNOT_UNDERSTAND)
        except Exception as exc:  # any storage failure: never claim success
            log.error("could not store instance; asking sender to retry",
                      extra={"event": "store_failed", "error": type(exc).__name__})
            return self._fail(STATUS_OUT_OF_RESOURCES)
        with self.stats_lock:
            self.stored += 1
        return STATUS_SUCCESS

    def _fail(self, status: int) -> int:
        with self.stats_lock:
            self.failed += 1
        return status

