"""DICOMweb STOW-RS: the second door in, beside C-STORE (issue 28).

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` with a ``multipart/related;
type="application/dicom"`` body. Decisions, and why:

- **Same intake as C-STORE.** Each part is streamed from the socket to a ``.part`` file under
  ``spool/partial/stow`` (never held in memory), then filed by :class:`connector.ingest.intake.Intake`:
  fsync, rename, folder fsync, state row, group commit, free-space floor. So an instance joins its
  study exactly as one received by C-STORE would, whichever door it came through, and a re-send is
  harmless. The response is written only after every part was filed.
- **Refused before the body is read.** Address allow-list (403), authentication (401), media type
  (415), Accept (406) and a Content-Length over ``max_request_bytes`` (413) are decided from the
  request line and headers alone, and also in answer to ``Expect: 100-continue``, so a refused
  sender never uploads its body. A chunked body is counted as it arrives; crossing the limit stops
  reading, deletes the part in progress and answers 413.
- **Bounded.** At most ``max_connections`` requests are served at once (a semaphore in front of
  ``accept``: more wait in the kernel's queue, as they would at a busy web server), each with one
  1 MiB parser buffer (:mod:`connector.ingest.multipart_stream`) and a read timeout.
- **Answers per PS3.18 10.5.** 200 with a ReferencedSOPSequence when every part was stored; 202
  with a FailedSOPSequence naming the failed ones (FailureReason 0xA700 out of resources, 0xC000
  cannot understand, 0xA900 SOP class not accepted or instance not of the study in the URL) when
  some were; 409 when none was; 400 for a malformed body; ``application/dicom+json`` or
  ``application/dicom+xml`` as the Accept header asks.
- **SOP classes.** The same allow-list as the SCP's negotiation
  (:class:`connector.ingest.negotiation.Offer`): standard storage classes plus
  ``[dicom] extra_storage_sop_classes``.
- **Privacy.** Request paths carry Study Instance UIDs: http.server's own request log is silenced,
  and our log lines carry counts, statuses and the peer address only.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import socketserver
import ssl
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from connector.ingest.intake import DiskFull, Intake, UnreadableObject, read_header
from connector.ingest.multipart_stream import BodyError, BodyReader, boundary_of, read_multipart
from connector.ingest.negotiation import Offer
from connector.settings.stow import StowConfig
from connector.store.durable import PART_SUFFIX, start_writeback

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700
SOP_CLASS_REFUSED = 0xA900  # "Data Set does not match SOP Class": here, a class we do not accept
CANNOT_UNDERSTAND = 0xC000
_PATH_RE = re.compile(r"^/dicomweb/studies(?:/([0-9.]{1,64}))?/?$")
_JSON = "application/dicom+json"
_XML = "application/dicom+xml"


class TokenFileUnsafe(Exception):
    """The token file is open to group or others; ``str()`` says what to ``chmod``."""


def check_token_file(cfg: StowConfig) -> None:
    """Raise :class:`TokenFileUnsafe` when ``[stow] token_file`` exists and group or others may access it.

    Why: whoever reads a token can post data that ends up at the registry as this site's.
    """
    if cfg.token_file is None:
        return
    try:
        mode = stat.S_IMODE(cfg.token_file.stat().st_mode)
    except OSError:
        return  # a missing file refuses every token (logged); the start does not depend on it
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileUnsafe(f"STOW-RS token file {cfg.token_file} is accessible by group or others (mode "
                              f"{mode:04o}): run chmod 600 {cfg.token_file} ([stow] token_file)")


class Tokens:
    """The accepted bearer tokens, re-read when the file changes (so a token can be revoked without a restart)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return self.path is not None

    def _load(self) -> tuple[bytes, ...]:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return ()
        with self._lock:
            if self._seen != (st.st_mtime_ns, st.st_size):
                if stat.S_IMODE(st.st_mode) & (stat.S_IRWXG | stat.S_IRWXO):
                    log.error("STOW-RS token file readable by others: every token refused",
                              extra={"event": "stow_token_file_unsafe"})
                    self._tokens = ()
                else:
                    lines = self.path.read_text().splitlines()
                    self._tokens = tuple(t.strip().encode() for t in lines if t.strip() and not t.startswith("#"))
                self._seen = (st.st_mtime_ns, st.st_size)
            return self._tokens

    def accepts(self, header: str) -> bool:
        """Whether an ``Authorization`` header value carries one of the tokens (constant-time compare)."""
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False
        given = value.strip().encode()
        ok = False
        for token in self._load():
            ok |= hmac.compare_digest(given, token)
        return ok


def tls_context(cfg: StowConfig) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain HTTP. Raises OSError/ssl.SSLError on bad files."""
    if not cfg.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
    if cfg.tls_ca_file:
        ctx.load_verify_locations(str(cfg.tls_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: only senders holding a certificate from this CA
    return ctx


# -- the answer --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one part: stored (``reason`` None) or failed with a PS3.18 FailureReason."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    reason: int | None = None


@dataclass
class StowResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def stored(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.reason is None]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.reason is not None]

    @property
    def status(self) -> int:
        """200 all stored, 202 some, 409 none (PS3.18 table 10.5.3-1)."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409


def _item(o: Outcome) -> list[tuple[str, str, str, Any]]:
    elems: list[tuple[str, str, str, Any]] = []
    if o.sop_class_uid:
        elems.append(("00081150", "UI", "ReferencedSOPClassUID", o.sop_class_uid))
    if o.sop_instance_uid:
        elems.append(("00081155", "UI", "ReferencedSOPInstanceUID", o.sop_instance_uid))
    if o.reason is not None:
        elems.append(("00081197", "US", "FailureReason", o.reason))
    return elems


def response_json(result: StowResult) -> dict[str, Any]:
    """The Store Instances Response Module in the DICOM JSON model (PS3.18 F.2)."""
    body: dict[str, Any] = {}
    for tag, items in (("00081198", result.failed), ("00081199", result.stored)):
        if items:
            body[tag] = {"vr": "SQ", "Value": [{t: {"vr": vr, "Value": [v]} for t, vr, _, v in _item(o)}
                                               for o in items]}
    return body


def response_xml(result: StowResult) -> str:
    """The same response in the PS3.19 Native DICOM Model (``application/dicom+xml``)."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">']
    for tag, keyword, items in (("00081198", "FailedSOPSequence", result.failed),
                                ("00081199", "ReferencedSOPSequence", result.stored)):
        if not items:
            continue
        out.append(f'<DicomAttribute tag="{tag}" vr="SQ" keyword="{keyword}">')
        for n, o in enumerate(items, 1):
            out.append(f'<Item number="{n}">')
            for t, vr, kw, v in _item(o):
                out.append(f'<DicomAttribute tag="{t}" vr="{vr}" keyword="{kw}"><Value number="1">'
                           f'{escape(str(v))}</Value></DicomAttribute>')
            out.append("</Item>")
        out.append("</DicomAttribute>")
    out.append("</NativeDicomModel>")
    return "\n".join(out)


def choose_media_type(accept: str) -> str | None:
    """The response type for an Accept header: dicom+json (default), dicom+xml, or None (406)."""
    if not accept.strip():
        return _JSON
    for entry in accept.split(","):
        kind = entry.split(";")[0].strip().lower()
        if kind in (_JSON, "application/json", "*/*", "application/*"):
            return _JSON
        if kind in (_XML, "application/xml", "text/xml"):
            return _XML
    return None


# -- receiving one request ---------------------------------------------------------------------


class RequestTooLarge(Exception):
    """The body crossed ``max_request_bytes`` while it was read."""


class _LimitedReader(BodyReader):
    """A :class:`BodyReader` that stops at ``limit`` raw bytes (for bodies without a Content-Length)."""

    def __init__(self, rfile: Any, *, limit: int, **kw: Any) -> None:
        super().__init__(rfile, **kw)
        self.limit = limit

    def readinto(self, view: memoryview) -> int:
        got = super().readinto(view)
        if self.raw_bytes > self.limit:
            raise RequestTooLarge()
        return got

    def read(self, n: int = 1024 * 1024) -> bytes:
        data = super().read(n)
        if self.raw_bytes > self.limit:
            raise RequestTooLarge()
        return data


class _PartFile:
    """One part on its way to a ``.part`` file; keeps reading (and dropping) the bytes after a failure."""

    def __init__(self, folder: Path, headers: dict[str, str], *, writeback: bool) -> None:
        self.path: Path | None = None
        self.fd: int | None = None
        self.written = 0
        self.reason: int | None = None
        self.writeback = writeback
        kind = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if kind != "application/dicom":
            self.reason = CANNOT_UNDERSTAND  # metadata or bulk data parts: not a DICOM instance
            return
        try:
            import tempfile

            self.fd, name = tempfile.mkstemp(dir=folder, suffix=PART_SUFFIX)
            self.path = Path(name)
        except OSError:
            self.reason = OUT_OF_RESOURCES

    def write(self, data: memoryview) -> None:
        if self.fd is None:
            return
        view = memoryview(data)
        start = self.written
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.written += n
        except OSError:  # disk full or failing: drop this part, go on reading the body
            self.reason = OUT_OF_RESOURCES
            self.discard()
            return
        if self.writeback:
            start_writeback(self.fd, start, self.written - start)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class StowReceiver:
    """Files the parts of one request through the intake; collects the per-part outcomes."""

    def __init__(self, intake: Intake, offer: Offer, study: str | None, peer: str, filer: ThreadPoolExecutor,
                 *, window: int = 8) -> None:
        self.intake, self.offer, self.study, self.peer = intake, offer, study, peer
        self.filer = filer
        self.current: _PartFile | None = None
        self._outcomes: list[Outcome | Future[Outcome]] = []
        self._window = threading.Semaphore(window)  # parts being filed at once for this request

    @property
    def parts(self) -> int:
        return len(self._outcomes)

    def finish(self) -> StowResult:
        """Wait until every part handed to the filer is filed (or refused); their outcomes in order.

        Called before any answer, including 400/413: the answer must follow the fsyncs, and no
        part may still be on its way when the sender hears back.
        """
        result = StowResult()
        for item in self._outcomes:
            result.outcomes.append(item.result() if isinstance(item, Future) else item)
        return result

    def on_part(self, headers: dict[str, str]) -> _PartFile:
        part = _PartFile(self.intake.partial_dir, headers, writeback=self.intake.fsync)
        if part.reason is None:
            try:
                self.intake.check_space()
            except DiskFull:
                part.reason = OUT_OF_RESOURCES
                part.discard()
        self.current = part
        return part

    def on_end(self, sink: Any) -> None:
        part: _PartFile = sink
        self.current = None
        part.close()
        if part.reason is not None or part.path is None:
            if part.reason == OUT_OF_RESOURCES:
                log.error("STOW-RS part not stored: out of resources", extra={"event": "disk_low"})
            self._outcomes.append(Outcome(reason=part.reason or OUT_OF_RESOURCES))
            part.discard()
            return
        # Filed on another thread while the next part streams in: the fsyncs and the commit of
        # one part overlap the network reading of the next (and concurrent parts share commits).
        self._window.acquire()
        self._outcomes.append(self.filer.submit(self._file_and_release, part.path))

    def _file_and_release(self, path: Path) -> Outcome:
        try:
            return self._file(path)
        finally:
            self._window.release()

    def _file(self, path: Path) -> Outcome:
        """The durability protocol for one complete part; never raises."""
        try:
            header = read_header(path, verify_complete=True)  # a part may be anything: check it whole
        except UnreadableObject as exc:
            try:
                self.intake.quarantine_partial(path, exc, source="stow")
            except OSError:
                path.unlink(missing_ok=True)
            return Outcome(reason=CANNOT_UNDERSTAND)
        outcome = Outcome(header.sop_class_uid, header.sop_instance_uid)
        if not self.offer.stores(header.sop_class_uid) or (self.study and header.study_uid != self.study):
            path.unlink(missing_ok=True)  # refused as the SCP refuses the class at negotiation
            outcome.reason = SOP_CLASS_REFUSED
            return outcome
        try:
            self.intake.check_space()
            # lazy_digest as for C-STORE: the dataset is hashed only to tell a re-send from changed bytes
            self.intake.ingest_partial(path, source="stow", calling_aet="", verify_complete=True, header=header,
                                       lazy_digest=True)
        except DiskFull:
            log.error("spool disk below free-space floor; STOW-RS part refused", extra={"event": "disk_low"})
            outcome.reason = OUT_OF_RESOURCES
        except UnreadableObject:
            outcome.reason = CANNOT_UNDERSTAND
        except Exception as exc:  # any storage failure: never claim success
            log.error("could not store a STOW-RS part", extra={"event": "store_failed", "error": type(exc).__name__})
            outcome.reason = OUT_OF_RESOURCES
        finally:
            path.unlink(missing_ok=True)  # consumed by the intake when stored; removed otherwise
        return outcome

    def abandon(self) -> None:
        """The body ended badly: remove the part being written (parts already filed stay stored)."""
        if self.current is not None:
            self.current.discard()
            self.current = None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "site-connector-stow"
    sys_version = ""

    # -- http.server hooks -------------------------------------------------------------------

    def setup(self) -> None:
        self.request.settimeout(self.server.stow.cfg.network_timeout)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silenced: http.server's line quotes the request path, which holds a Study Instance UID."""

    def handle_expect_100(self) -> bool:
        refusal = self._refusal()
        if refusal is not None:
            self._error(*refusal)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:  # noqa: N802
        self._error(405, "only POST (STOW-RS) is served here")

    do_PUT = do_DELETE = do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        refusal = self._refusal()
        if refusal is not None:
            self._error(*refusal)
            return
        self.server.stow.serve_post(self)

    # -- checks from the headers alone ---------------------------------------------------------

    @property
    def peer(self) -> str:
        return str(self.client_address[0])

    def _refusal(self) -> tuple[int, str] | None:
        """(status, reason) when the request is refused from its request line and headers; else None."""
        stow = self.server.stow
        if not stow.host_allowed(self.peer):
            log.warning("STOW-RS sender address not allowed", extra={"event": "stow_refused", "peer": self.peer,
                                                                     "status": 403})
            return 403, "address not allowed"
        if self.command != "POST":
            return 405, "only POST (STOW-RS) is served here"
        if _PATH_RE.match(self.path.split("?")[0]) is None:
            return 404, "not found: POST to /dicomweb/studies"
        if stow.tokens.required and not stow.tokens.accepts(self.headers.get("Authorization", "")):
            log.warning("STOW-RS request without a valid token", extra={"event": "stow_refused", "peer": self.peer,
                                                                        "status": 401})
            return 401, "a valid bearer token is required"
        ctype = self.headers.get("Content-Type", "")
        if not ctype.lower().startswith("multipart/related"):
            return 415, "Content-Type must be multipart/related; type=\"application/dicom\""
        m = re.search(r'type="?([^";]+)"?', ctype, re.IGNORECASE)
        if m and m.group(1).strip().lower() != "application/dicom":
            return 415, "only application/dicom parts are accepted (no metadata + bulk data)"
        if self.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
            return 415, "Content-Encoding not supported"
        if choose_media_type(self.headers.get("Accept", "")) is None:
            return 406, "responses are application/dicom+json or application/dicom+xml"
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = self.headers.get("Content-Length")
        if not chunked:
            if length is None or not length.strip().isdigit():
                return 411, "Content-Length or chunked transfer encoding required"
            if int(length) > stow.cfg.max_request_bytes:
                log.warning("STOW-RS request over max_request_bytes", extra={"event": "stow_refused",
                                                                             "peer": self.peer, "status": 413})
                return 413, "request body larger than [stow] max_request_bytes"
        return None

    # -- answering -----------------------------------------------------------------------------

    def _error(self, status: int, reason: str) -> None:
        """A short plain-text error; the connection is closed (its body, if any, was not read)."""
        body = (reason + "\n").encode()
        self.close_connection = True
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="site-connector STOW-RS"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def reply(self, status: int, body: bytes, media_type: str, *, close: bool = False) -> None:
        if close:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.TCPServer):
    """TCP acceptor that takes a connection only when one of ``max_connections`` places is free."""

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], stow: StowServer) -> None:
        self.stow = stow
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        threading.Thread(target=self._run, args=(request, client_address), name="stow-request", daemon=True).start()

    def _run(self, request: Any, client_address: Any) -> None:
        try:
            if self.stow.tls is not None:
                request.settimeout(self.stow.cfg.network_timeout)
                try:
                    request = self.stow.tls.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    log.warning("STOW-RS TLS handshake failed", extra={"event": "tls_handshake_failed",
                                                                       "peer": str(client_address[0]),
                                                                       "error": type(exc).__name__})
                    request.close()
                    return
            self.stow.track(request, True)
            try:
                self.finish_request(request, client_address)
            except Exception as exc:  # a dropped connection or a bug of ours: this request only
                if not isinstance(exc, OSError):
                    log.error("STOW-RS request failed", extra={"event": "stow_failed", "error": type(exc).__name__})
            finally:
                self.stow.track(request, False)
                self.shutdown_request(request)
        finally:
            self.stow.places.release()

    def shutdown_request(self, request: Any) -> None:
        """Half-close, then read briefly what the sender still sends before closing.

        Why: closing a socket with unread bytes makes the kernel send a reset, and the sender's
        TCP stack may then drop our 4xx answer unread. The drain is bounded (1 s, 4 MiB) and
        nothing of it is kept.
        """
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(0.2)
            deadline, budget = time.monotonic() + 1.0, 4 * 1024**2
            while budget > 0 and time.monotonic() < deadline:
                chunk = request.recv(65536)
                if not chunk:
                    break
                budget -= len(chunk)
        except (OSError, ValueError):
            pass
        self.close_request(request)

    def _handle_request_noblock(self) -> None:
        # one place per connection, taken before accept: at most max_connections threads at once
        if not self.stow.places.acquire(timeout=0.2):
            return
        try:
            request, client_address = self.get_request()
        except OSError:
            self.stow.places.release()
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.stow.places.release()
            self.shutdown_request(request)


class StowServer:
    """The running STOW-RS listener. ``start()`` listens; ``stop()`` drains, then aborts, requests."""

    def __init__(self, cfg: StowConfig, intake: Intake, offer: Offer) -> None:
        self.cfg = cfg
        self.intake = intake
        self.offer = offer
        self.tokens = Tokens(cfg.token_file)
        self.tls = tls_context(cfg)
        self.networks = [ipaddress.ip_network(h, strict=False) for h in cfg.allowed_hosts]
        self.places = threading.BoundedSemaphore(cfg.max_connections)
        # files complete parts (fsync, rename, commit) while their requests read on; bounded
        self.filer = ThreadPoolExecutor(max_workers=min(16, 2 * cfg.max_connections), thread_name_prefix="stow-file")
        self._server: _Server | None = None
        self._active: dict[int, socket.socket] = {}
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def host_allowed(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def start(self) -> None:
        self.intake.partial_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        server = _Server((self.cfg.host, self.cfg.port), self)
        threading.Thread(target=server.serve_forever, args=(0.1,), name="stow-acceptor", daemon=True).start()
        self._server = server
        log.info("STOW-RS listening", extra={"event": "stow_listening", "port": self.port,
                                             "tls": self.tls is not None, "mutual_tls": bool(self.cfg.tls_ca_file)})

    def track(self, sock: socket.socket, active: bool) -> None:
        with self._lock:
            if active:
                self._active[id(sock)] = sock
            else:
                self._active.pop(id(sock), None)

    def stop(self, drain_seconds: float = 15.0) -> None:
        """Stop accepting; requests still uploading get ``drain_seconds``, then their sockets are shut.

        An aborted request was never answered, so its sender was not told "stored" for the parts
        of it still in flight and sends them again; parts already filed stay stored (harmless).
        """
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.server_close()
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if self._busy == 0:
                    break
            time.sleep(0.05)
        with self._lock:
            left = list(self._active.values())
        for sock in left:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        end = time.monotonic() + 2.0
        while time.monotonic() < end:  # let the aborted handlers remove their part files
            with self._lock:
                if self._busy == 0:
                    break
            time.sleep(0.02)
        self._server = None
        self.filer.shutdown(wait=True)  # parts in hand are filed (each takes milliseconds), then the intake closes
        log.info("STOW-RS stopped", extra={"event": "stow_stopped", "aborted": len(left)})

    # -- one POST ------------------------------------------------------------------------------

    def serve_post(self, handler: _Handler) -> None:
        """Read the body part by part into the intake, then answer. Runs on the request's thread."""
        with self._lock:
            self._busy += 1
        try:
            self._serve_post(handler)
        finally:
            with self._lock:
                self._busy -= 1

    def _serve_post(self, handler: _Handler) -> None:
        match = _PATH_RE.match(handler.path.split("?")[0])
        assert match is not None  # checked by _refusal
        media_type = choose_media_type(handler.headers.get("Accept", "")) or _JSON
        chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
        length = None if chunked else int(handler.headers.get("Content-Length", "0"))
        began = time.monotonic()
        receiver = StowReceiver(self.intake, self.offer, match.group(1), handler.peer, self.filer)
        try:
            boundary = boundary_of(handler.headers.get("Content-Type", ""))
            reader = _LimitedReader(handler.rfile, limit=self.cfg.max_request_bytes, length=length, chunked=chunked)
            read_multipart(reader, boundary, receiver.on_part, receiver.on_end)
            reader.drain()  # the epilogue after the closing boundary: the next request starts after it
            size = reader.raw_bytes
        except RequestTooLarge:
            receiver.abandon()
            receiver.finish()
            log.warning("STOW-RS body crossed max_request_bytes", extra={"event": "stow_refused",
                                                                         "peer": handler.peer, "status": 413})
            handler._error(413, "request body larger than [stow] max_request_bytes")
            return
        except (BodyError, UnicodeDecodeError) as exc:
            receiver.abandon()
            receiver.finish()
            log.warning("STOW-RS body malformed", extra={"event": "stow_bad_body", "peer": handler.peer,
                                                         "parts_filed": receiver.parts, "reason": str(exc)[:80]})
            handler._error(400, f"malformed multipart/related body: {exc}")
            return
        except OSError:  # the sender went away or went silent: nothing to answer
            receiver.abandon()
            receiver.finish()
            handler.close_connection = True
            log.warning("STOW-RS sender dropped the request", extra={"event": "stow_dropped", "peer": handler.peer,
                                                                     "parts_filed": receiver.parts})
            return
        result = receiver.finish()
        if not result.outcomes:
            handler._error(400, "the multipart body holds no part")
            return
        body = (response_xml(result).encode() if media_type == _XML
                else json.dumps(response_json(result)).encode())
        handler.reply(result.status, body, media_type)
        seconds = time.monotonic() - began
        log.info("STOW-RS request served", extra={"event": "stow_request", "peer": handler.peer,
                                                  "status": result.status, "stored": len(result.stored),
                                                  "failed": len(result.failed), "bytes": size,
                                                  "seconds": round(seconds, 3)})


def bind_error_reason(exc: OSError) -> str:
    """A short reason for a failed bind, for the role's log line."""
    return "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or type(exc).__name__)
