"""The MLLP listener: accept, spool durably, ACK, then process from disk (the daemon's ``hl7`` role).

Order per message, and why:

1. frame and parse; what cannot be taken gets AR (malformed, not ADT, unhandled trigger, too large:
   then the connection is closed, since the rest of the stream cannot be trusted), and the
   listener carries on;
2. match PID-3 (or, for A40, MRG-1) through the linkage table's blind index and the recorded
   merges. A message about no linked patient, or saying nothing about a death, is acknowledged AA
   and dropped at once: it is never written anywhere, only counted;
3. a message that matters is written with :func:`~connector.store.durable.write_file_durably`
   (fsync'd file and folder) into ``<data_dir>/hl7/spool/`` *before* AA is sent, so a kill -9
   after the ACK loses nothing: the processor (a thread) takes the file, queues the follow-up event
   (:func:`connector.followup.feeds.import_deaths`) and deletes it; at start it takes the files left
   by a crash. A failure to store is AE (the engine sends the message again).

Spool files are named by arrival time and a counter, never by anything in the message.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import queue
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.followup.feeds import COUNTERS, FeedDeath, add_counts, import_deaths, merge_key, record_merge, resolve
from connector.hl7 import adt
from connector.hl7.mllp import FrameReader, FrameTooLarge, NotMllp, ack, frame
from connector.store.durable import PART_SUFFIX, fsync_dir, write_file_durably

if TYPE_CHECKING:
    from connector.config import Config
    from connector.outbox import Outbox
    from connector.store.state import StateStore

log = logging.getLogger(__name__)

SOURCE = "hl7"
SPOOL_SUFFIX = ".hl7"


def spool_dir(config: Config) -> Path:
    return config.storage.data_dir / "hl7" / "spool"


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server-side TLS context of ``[hl7]``, or None for plain TCP. Raises on unusable files."""
    s = config.hl7
    if s.tls_cert_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(s.tls_cert_file), str(s.tls_key_file) if s.tls_key_file else None)
    if s.tls_ca_file is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(s.tls_ca_file))
    return ctx


class _Counts:
    """In-memory counters the listener threads bump and the processor writes to the state DB, so a
    connection never waits on the database (nor on a lock someone else holds on it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._values[k] += v

    def take(self) -> dict[str, int]:
        with self._lock:
            out, self._values = self._values, dict.fromkeys(COUNTERS, 0)
        return out

    def give_back(self, values: dict[str, int]) -> None:
        self.add(**values)


class Hl7Service:
    """Listener threads plus one processor thread, sharing the linkage provider and the state store."""

    def __init__(self, config: Config, provider: Any, store: StateStore, outbox: Outbox, *,
                 on_processed: Callable[[], None] | None = None) -> None:
        self.config = config
        self.settings = config.hl7
        self.provider = provider
        self.store = store
        self.outbox = outbox
        self.spool = spool_dir(config)
        self.counts = _Counts()
        self.on_processed = on_processed
        self._allowed = [ipaddress.ip_network(h, strict=False) for h in self.settings.allowed_hosts]
        self._tls = tls_context(config)
        self._seq = itertools.count()
        self._wake: queue.Queue[None] = queue.Queue()
        self._stop = threading.Event()
        self._server: socketserver.TCPServer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(1)
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> Hl7Service:
        """Bind (OSError when the port cannot be had), take up a crash's spool, then serve."""
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        for part in self.spool.glob("*" + PART_SUFFIX):  # an unfinished write was never acknowledged
            part.unlink(missing_ok=True)
        service = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                service._serve(self.request, self.client_address)

        class Server(socketserver.TCPServer):
            """Connections are served by a fixed pool of threads: bounded, and each pool thread keeps
            its own database connections for its whole life (a thread per connection would open new
            ones for every reconnect of the engine or probe of a monitor)."""

            allow_reuse_address = True

            def process_request(self, request: Any, client_address: Any) -> None:
                if not service._slots.acquire(blocking=False):
                    log.warning("hl7 connection refused", extra={"event": "hl7_too_many_connections"})
                    self.shutdown_request(request)
                    return
                try:
                    service._pool.submit(self._work, request, client_address)
                except RuntimeError:  # stopping
                    service._slots.release()
                    self.shutdown_request(request)

            def _work(self, request: Any, client_address: Any) -> None:
                try:
                    self.finish_request(request, client_address)
                except Exception as exc:  # noqa: BLE001 - logged without its text (it may quote data)
                    log.error("hl7 connection failed", extra={"event": "hl7_connection_error",
                                                              "error": type(exc).__name__})
                finally:
                    self.shutdown_request(request)
                    service._slots.release()

        self._pool = ThreadPoolExecutor(max_workers=self.settings.max_connections, thread_name_prefix="hl7-conn")
        self._slots = threading.BoundedSemaphore(self.settings.max_connections)
        self._server = Server((self.settings.host, self.settings.port or 0), Handler)
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                 name="hl7-listener", daemon=True)
        work = threading.Thread(target=self._process_loop, name="hl7-processor", daemon=True)
        self._threads = [serve, work]
        for t in self._threads:
            t.start()
        log.info("hl7 listener started", extra={"event": "hl7_listening", "port": self.port,
                                                 "tls": self._tls is not None})
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close open connections (a message not yet ACKed is sent again by the
        engine), let the processor finish its file, flush the counters."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._conns_lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._wake.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._flush_counts()

    # -- connections ---------------------------------------------------------------------------

    def _allowed_peer(self, host: str) -> bool:
        if not self._allowed:
            return True
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._allowed)

    def _serve(self, sock: socket.socket, peer: tuple[Any, ...]) -> None:
        if not self._allowed_peer(str(peer[0])):
            log.warning("hl7 connection refused", extra={"event": "hl7_peer_refused"})
            sock.close()
            return
        sock.settimeout(self.settings.idle_timeout_seconds)
        with self._conns_lock:
            self._conns.add(sock)
        conn: socket.socket = sock
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(sock, server_side=True)
            reader = FrameReader(conn, self.settings.max_message_bytes)
            while not self._stop.is_set():
                try:
                    raw = reader.read()
                except FrameTooLarge as exc:
                    self.counts.add(received=1, errors=1)
                    control = _control_id(exc.head)
                    conn.sendall(frame(self._ack("AR", control, "message_too_large")))
                    log.warning("hl7 message refused", extra={"event": "hl7_refused", "reason": "message_too_large"})
                    return
                if raw is None:
                    return
                conn.sendall(frame(self.handle_message(raw)))
        except NotMllp:
            log.warning("hl7 connection closed", extra={"event": "hl7_not_mllp"})
        except (OSError, ssl.SSLError):
            pass  # peer went away, idle timeout, TLS failure: the engine reconnects and re-sends
        finally:
            with self._conns_lock:
                self._conns.discard(sock)
            try:
                conn.close()
            except OSError:
                pass

    def _ack(self, code: str, control_id: str, reason: str = "", facts: adt.AdtFacts | None = None,
             trigger: str = "") -> bytes:
        return ack(code, control_id, text=reason, application=self.settings.application,
                   facility=self.settings.facility, receiver=facts.sender if facts else ("", ""),
                   trigger=facts.trigger if facts else trigger, version=facts.version if facts else "2.5")

    def handle_message(self, raw: bytes) -> bytes:
        """One framed message in, the ACK out. Never raises for anything the peer sent."""
        self.counts.add(received=1)
        try:
            facts = adt.parse(raw, self.settings, self.config.followup)
        except adt.Rejected as rej:
            self.counts.add(errors=1)
            log.info("hl7 message refused", extra={"event": "hl7_refused", "reason": rej.reason})
            return self._ack(rej.code, rej.control_id, rej.reason, trigger=rej.trigger)
        except Exception as exc:  # noqa: BLE001 - a parser bug must not take the listener down
            self.counts.add(errors=1)
            log.warning("hl7 message refused", extra={"event": "hl7_refused", "reason": type(exc).__name__})
            return self._ack("AR", _control_id(raw), "malformed")
        if facts.kind == adt.NOTHING:
            return self._ack("AA", facts.control_id, facts=facts)
        try:
            wanted = facts.prior if facts.kind == adt.MERGE else facts.identifiers
            linked = resolve(self.provider, self.store.conn, wanted)
        except Exception as exc:  # noqa: BLE001 - linkage unreadable: let the engine retry later
            self.counts.add(errors=1)
            log.error("hl7 linkage lookup failed", extra={"event": "hl7_linkage_failed", "error": type(exc).__name__})
            return self._ack("AE", facts.control_id, "linkage_unavailable", facts=facts)
        if linked is None:
            self.counts.add(unmatched_dropped=1)  # dropped at once: nothing of it is kept
            return self._ack("AA", facts.control_id, facts=facts)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):08d}{SPOOL_SUFFIX}"
        try:
            write_file_durably(self.spool / name, raw, sync=self.config.storage.fsync)
        except OSError as exc:
            self.counts.add(errors=1)
            log.error("hl7 message not stored", extra={"event": "hl7_spool_failed", "error": exc.strerror})
            return self._ack("AE", facts.control_id, "cannot_store", facts=facts)
        self._wake.put(None)
        return self._ack("AA", facts.control_id, facts=facts)

    # -- processing from disk ------------------------------------------------------------------

    def _process_loop(self) -> None:
        while True:
            try:
                self.process_spool()
            except Exception as exc:  # noqa: BLE001 - the database busy or full: try again shortly
                log.error("hl7 spool processing failed", extra={"event": "hl7_process_failed",
                                                                "error": type(exc).__name__})
            self._flush_counts()
            if self._stop.is_set():
                return
            try:
                self._wake.get(timeout=1.0)
            except queue.Empty:
                pass

    def _flush_counts(self) -> None:
        values = self.counts.take()
        if not any(values.values()):
            return
        try:
            with self.store.write() as conn:
                add_counts(conn, SOURCE, **values)
        except Exception:  # noqa: BLE001 - kept for the next flush
            self.counts.give_back(values)

    def process_spool(self) -> int:
        """Process every spooled message, oldest first; returns how many were taken."""
        done = 0
        for path in sorted(self.spool.glob("*" + SPOOL_SUFFIX)):
            if self._stop.is_set():
                break
            try:
                self._process_file(path)
            except Exception as exc:  # noqa: BLE001 - the database busy, a damaged row: left for the next
                # round, and the files after it still go (one bad file must not hold up every later death)
                log.error("hl7 spooled message not processed yet", extra={"event": "hl7_process_failed",
                                                                         "error": type(exc).__name__})
                continue
            path.unlink(missing_ok=True)
            if self.config.storage.fsync:
                fsync_dir(self.spool)
            done += 1
        if done and self.on_processed is not None:
            self.on_processed()
        return done

    def _process_file(self, path: Path) -> None:
        try:
            facts = adt.parse(path.read_bytes(), self.settings, self.config.followup)
        except adt.Rejected:  # configuration changed since it was taken: counted, not retried
            with self.store.write() as conn:
                add_counts(conn, SOURCE, errors=1)
            return
        if facts.kind == adt.MERGE:
            self._record_merge(facts)
            return
        found = resolve(self.provider, self.store.conn, facts.identifiers)
        if found is None:  # unlinked meanwhile (a restored table): nothing to send
            with self.store.write() as conn:
                add_counts(conn, SOURCE, unmatched_dropped=1)
            return
        (patient_id, issuer), _ = found
        death = FeedDeath(patient_id, issuer, facts.death_date, retract=facts.kind == adt.RETRACT)
        import_deaths(self.config, self.provider, self.store, self.outbox, SOURCE, [death], received=0)

    def _record_merge(self, facts: adt.AdtFacts) -> None:
        found = resolve(self.provider, self.store.conn, facts.prior)
        if found is None:
            return
        _, subject = found
        secret = self.provider.uid_secret()
        with self.store.write() as conn:
            for patient_id, issuer in facts.identifiers:
                if self.provider.lookup_patient(patient_id, issuer, audit=False) is None:
                    record_merge(conn, merge_key(secret, patient_id, issuer), subject.pseudonym)
            add_counts(conn, SOURCE, matched=1)
        self.provider.audit("followup.merge", channel=SOURCE, pseudonym=subject.pseudonym)


def _control_id(head: bytes) -> str:
    """MSH-10 from the start of a message we could not parse, for the ACK ('' if not found)."""
    try:
        first = adt.decode(head[:4096]).split("\r", 1)[0]
        if first.startswith("MSH") and len(first) > 4:
            fields = first.split(first[3])
            return fields[9][:64] if len(fields) > 9 else ""
    except Exception:  # noqa: BLE001
        pass
    return ""
