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

This module is the HTTP side (handler, bounded server, stop); beside it: who may send
(:mod:`connector.ingest.stow_auth`), the parts' way into the intake (:mod:`connector.ingest.stow_parts`)
and the answer (:mod:`connector.ingest.stow_response`).
"""

from __future__ import annotations

import errno
import json
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any

from connector.ingest.intake import Intake
from connector.ingest.multipart_stream import BodyError, boundary_of, read_multipart
from connector.ingest.negotiation import Admission, Offer
from connector.ingest.stow_auth import Tokens, tls_context
from connector.ingest.stow_parts import LimitedReader, RequestTooLarge, StowReceiver
from connector.ingest.stow_response import JSON_TYPE, XML_TYPE, choose_media_type, response_json, response_xml
from connector.settings.stow import StowConfig

log = logging.getLogger(__name__)

_PATH_RE = re.compile(r"^/dicomweb/studies(?:/([0-9.]{1,64}))?/?$")


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
        self.admission = Admission([], cfg.allowed_hosts)  # the same address allow-list as the SCP's
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
        return self.admission.host_allowed(address)

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
        media_type = choose_media_type(handler.headers.get("Accept", "")) or JSON_TYPE
        chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
        length = None if chunked else int(handler.headers.get("Content-Length", "0"))
        began = time.monotonic()
        receiver = StowReceiver(self.intake, self.offer, match.group(1), handler.peer, self.filer)
        try:
            boundary = boundary_of(handler.headers.get("Content-Type", ""))
            reader = LimitedReader(handler.rfile, limit=self.cfg.max_request_bytes, length=length, chunked=chunked)
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
        body = (response_xml(result).encode() if media_type == XML_TYPE
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
