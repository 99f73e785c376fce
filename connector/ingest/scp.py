"""C-STORE / C-ECHO SCP: the PACS-facing door of the connector.

Decisions, and why:
- Every standard storage SOP class (and those in ``extra_storage_sop_classes``) is accepted with
  the first transfer syntax proposed; any other abstract syntax is refused for its presentation
  context (:mod:`connector.ingest.negotiation`). Compressed data is stored as received (decoding
  is later stages' business, and re-encoding would alter what we received).
- A worker thread per connection runs the DIMSE loop in :mod:`connector.ingest.association`:
  datasets stream from the socket to a file under ``spool/partial`` (a 1 GB object never sits in
  memory), then :meth:`StoreSCP._on_store` runs the durability protocol of
  :mod:`connector.ingest.intake` and only then answers 0x0000. The workers come from a pool of at
  most ``max_associations + max_pending_connections`` threads (:mod:`connector.ingest.worker_pool`).
- Capacity is counted by :mod:`connector.ingest.connection_limits` (issue 24): a connection is
  pending (capped in total and per source, closed after the ARTIM timeout) until its A-ASSOCIATE-RQ
  passes the allow-lists; only then does it take an association place, so a host that is not
  allowed cannot lock the PACS out with idle connections. Over a cap, a connection is closed at
  accept, before a thread is spent on it.
- Callers are filtered at association time: a calling AE title or IP address that is not on the
  allow-list gets an A-ASSOCIATE-RJ, never an accepted association whose data is thrown away.
- TCP_NODELAY on every accepted socket: without it each C-STORE response waits ~40 ms on
  Nagle's algorithm and delayed ACKs.
- TLS handshakes run on the connection's worker thread, within the ARTIM timeout, so a stalled
  client never blocks accepting nor holds a worker for long.
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
from connector.ingest.connection_limits import ConnectionLimits, Limits, Ticket
from connector.ingest.dimse import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from connector.ingest.intake import DiskFull, Intake, UnreadableObject, header_from_head
from connector.ingest.negotiation import Admission, Offer
from connector.ingest.worker_pool import WorkerPool
from connector.store.spare_files import SpareFiles

log = logging.getLogger(__name__)


def configure_receiver_process() -> None:
    """Process-wide settings the receiver depends on.

    pydicom's value-validation warnings quote the values (names, IDs): never let them reach logs.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


class _Server(socketserver.TCPServer):
    """TCP acceptor: TCP_NODELAY, optional SO_REUSEPORT; each connection goes to :meth:`StoreSCP.dispatch`."""

    allow_reuse_address = True
    request_queue_size = 128  # a burst of connections waits in the kernel, not refused there

    def __init__(self, address: tuple[str, int], scp: StoreSCP, *, reuse_port: bool) -> None:
        self.scp = scp
        self.reuse_port = reuse_port
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, socketserver.BaseRequestHandler)

    def server_bind(self) -> None:
        if self.reuse_port:  # several receiver processes share the port; the kernel balances them
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.scp.dispatch(request, str(client_address[0])):
            request.close()  # over a cap: closed before anything is read or a thread is spent


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
        self.offer = Offer(max_pdu_length=cfg.max_pdu_length,
                           extra_storage_classes=frozenset(cfg.extra_storage_sop_classes))
        self.settings = AssociationSettings(network_timeout=cfg.network_timeout,
                                            artim_timeout=cfg.artim_timeout_seconds, early_writeback=intake.fsync)
        self.limits = ConnectionLimits(
            Limits(max_associations=cfg.max_associations, max_pending=cfg.max_pending_connections,
                   max_pending_per_host=cfg.max_pending_per_host, artim_timeout=cfg.artim_timeout_seconds),
            is_known=self.admission.host_allowed if self.admission.networks else None)
        self._pool: WorkerPool | None = None
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
        self._pool = WorkerPool(self.limits.limits.max_connections, name="scp-conn")
        self.limits.start()
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
        # sent an A-ASSOCIATE-RQ (port probes, TLS handshakes) have nothing to lose: dropped at once.
        self.limits.drop_pending()
        while any(a.established for a in self._snapshot()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self._snapshot():
            assoc.abort()  # still sending after the drain period: the sender retries later
        self.limits.stop()
        if self._pool is not None:
            self._pool.close()
        self._server = None
        if self._spares is not None:
            self._spares.close()
        log.info("DICOM receiver stopped", extra={"event": "scp_stopped"})

    def _snapshot(self) -> list[Association]:
        with self._active_lock:
            return list(self._active)

    # -- connections ---------------------------------------------------------------------------

    def dispatch(self, sock: socket.socket, address: str) -> bool:
        """Take a just-accepted connection if the limits allow (acceptor thread); False: close it."""
        ticket = self.limits.open(sock, address)
        if ticket is None:
            return False
        try:
            assert self._pool is not None
            self._pool.submit(lambda: self.serve_connection(sock, address, ticket))
        except RuntimeError:  # the pool is closing, or no thread could be started
            self.limits.release(ticket)
            return False
        return True

    def serve_connection(self, sock: socket.socket, address: str, ticket: Ticket) -> None:
        """Run one connection to its end (on a worker thread), then give its place back."""
        try:
            self._serve(sock, address, ticket)
        finally:
            self.limits.release(ticket)

    def _serve(self, sock: socket.socket, address: str, ticket: Ticket) -> None:
        if self._tls is not None:
            try:
                sock.settimeout(self.settings.artim_timeout)
                sock = self._tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                if not ticket.expired:  # an expiry was logged by the ARTIM watchdog
                    log.warning("TLS handshake failed", extra={"event": "tls_handshake_failed", "peer": address,
                                                               "error": type(exc).__name__})
                sock.close()
                return
        assert self._spares is not None
        assoc = Association(sock, address, self.settings, self.admission, self.offer, self._on_store,
                            self._spares.take, claim_slot=lambda: self.limits.associate(ticket))
        with self._active_lock:
            self._active.add(assoc)
        try:
            assoc.run()
        finally:
            with self._active_lock:
                self._active.discard(assoc)

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
