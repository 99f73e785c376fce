"""C-STORE / C-ECHO SCP: the PACS-facing door of the connector.

Decisions, and why:
- Every storage SOP class with every transfer syntax is accepted (pynetdicom's unrestricted-storage
  negotiation); compressed data is stored as received (decoding is later stages' business, and
  re-encoding would alter what we received).
- One thread per association runs the DIMSE loop in :mod:`connector.ingest.association`: datasets
  stream from the socket to a file under ``spool/partial`` (a 1 GB object never sits in memory),
  then :meth:`StoreSCP._on_store` runs the durability protocol of :mod:`connector.ingest.intake` and
  only then answers 0x0000.
- Callers are filtered at association time: a calling AE title or IP address that is not on the
  allow-list gets an A-ASSOCIATE-RJ, never an accepted association whose data is thrown away.
- TCP_NODELAY on every accepted socket: without it each C-STORE response waits ~40 ms on
  Nagle's algorithm and delayed ACKs.
- TLS handshakes run in the association's own thread, so a stalled client never blocks accepting.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any

from pydicom import config as pydicom_config

from connector.config import DicomConfig
from connector.ingest.association import Association, AssociationSettings, ReceivedObject
from connector.ingest.dimse import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from connector.ingest.intake import DiskFull, Intake, UnreadableObject, header_from_head
from connector.ingest.negotiation import Admission
from connector.store.spare_files import SpareFiles

log = logging.getLogger(__name__)


def configure_receiver_process() -> None:
    """Process-wide settings the receiver depends on.

    pydicom's value-validation warnings quote the values (names, IDs): never let them reach logs.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


class _Server(socketserver.ThreadingTCPServer):
    """TCP acceptor: one daemon thread per connection, TCP_NODELAY, optional SO_REUSEPORT."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], scp: StoreSCP, *, reuse_port: bool) -> None:
        self.scp = scp
        self.reuse_port = reuse_port
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Connection)

    def server_bind(self) -> None:
        if self.reuse_port:  # several receiver processes share the port; the kernel balances them
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.scp.serve_connection(self.request, str(self.client_address[0]))


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
        self.admission = Admission(cfg.allowed_ae_titles, cfg.allowed_hosts)
        self.settings = AssociationSettings(network_timeout=cfg.network_timeout, early_writeback=intake.fsync)
        self._spares: SpareFiles | None = None
        self._tls = tls_context(cfg)
        self._server: _Server | None = None
        self._active: set[Association] = set()
        self._active_lock = threading.Lock()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        self._spares = SpareFiles(self.intake.partial_dir)
        server = _Server((self.cfg.host, self.cfg.port), self, reuse_port=self.reuse_port)
        thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="scp-acceptor", daemon=True)
        thread.start()
        self._server = server
        log.info("DICOM receiver listening", extra={"event": "scp_listening", "port": self.port,
                                                    "ae_title": self.cfg.ae_title, "tls": self._tls is not None})

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, then let in-flight associations finish (up to ``drain_seconds``)."""
        server = self._server
        if server is None:
            return
        server.shutdown()  # stops serve_forever
        server.server_close()  # and the listening socket
        deadline = time.monotonic() + drain_seconds
        # Established associations may be mid-transfer: let them finish. Connections that never
        # sent an A-ASSOCIATE-RQ (port probes) have nothing to lose and are dropped at once.
        while any(a.established for a in self._snapshot()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self._snapshot():
            assoc.abort()  # still sending after the drain period: the sender retries later
        self._server = None
        if self._spares is not None:
            self._spares.close()
        log.info("DICOM receiver stopped", extra={"event": "scp_stopped"})

    def _snapshot(self) -> list[Association]:
        with self._active_lock:
            return list(self._active)

    # -- connections ---------------------------------------------------------------------------

    def serve_connection(self, sock: socket.socket, address: str) -> None:
        """Run one connection to its end (called in the connection's own thread)."""
        if self._tls is not None:
            try:
                sock.settimeout(self.settings.acse_timeout)
                sock = self._tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS handshake failed", extra={"event": "tls_handshake_failed", "peer": address,
                                                           "error": type(exc).__name__})
                sock.close()
                return
        assert self._spares is not None
        assoc = Association(sock, address, self.settings, self.admission, self._on_store, self._spares.take,
                            is_busy=self._busy)
        with self._active_lock:
            self._active.add(assoc)
        try:
            assoc.run()
        finally:
            with self._active_lock:
                self._active.discard(assoc)

    def _busy(self) -> bool:
        with self._active_lock:  # this association counts itself, as pynetdicom did
            return len(self._active) > self.cfg.max_associations

    # -- C-STORE ---------------------------------------------------------------------------------

    def _on_store(self, obj: ReceivedObject) -> int:
        try:
            self.intake.check_space()
            header = header_from_head(obj.head, whole=obj.whole, sop_class_uid=obj.sop_class_uid,
                                      sop_instance_uid=obj.sop_instance_uid, transfer_syntax=obj.transfer_syntax,
                                      dataset_offset=obj.dataset_offset)
            # complete by construction: the last fragment of the dataset arrived
            self.intake.ingest_partial(obj.part, source="scp", calling_aet=obj.calling_aet, verify_complete=False,
                                       header=header, lazy_digest=True)
        except DiskFull:
            log.error("spool disk below free-space floor; asking sender to retry",
                      extra={"event": "disk_low"})
            obj.part.unlink(missing_ok=True)
            return STATUS_OUT_OF_RESOURCES
        except UnreadableObject as exc:
            try:
                self.intake.quarantine_partial(obj.part, exc, source="scp")
            except OSError:
                log.exception("could not quarantine an unreadable object", extra={"event": "quarantine_failed"})
                return STATUS_OUT_OF_RESOURCES
            return STATUS_CANNOT_UNDERSTAND
        except Exception as exc:  # any storage failure: never claim success
            log.error("could not store instance; asking sender to retry",
                      extra={"event": "store_failed", "error": type(exc).__name__})
            obj.part.unlink(missing_ok=True)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS
