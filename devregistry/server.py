"""The dev registry: a real HTTP server implementing the registry contract (docs/registry-api.yaml).

    POST /dicomweb/studies[/{study}]                  STOW-RS (multipart/related; type="application/dicom")
    GET  /dicomweb/studies, .../{study}/series, .../{series}/instances    QIDO-RS (application/dicom+json)
    GET  /dicomweb/studies/{study}/series/{series}/instances/{sop}        WADO-RS (one instance)
    PUT  /api/v1/subjects/{pseudonym}     POST /api/v1/studies/{study}/manifest
    POST /api/v1/results                  POST /api/v1/events
    GET  /api/v1/subjects[/{pseudonym}], /api/v1/results, /api/v1/events, /api/v1/manifests,
         /api/v1/studies/{study}/manifest, /api/v1/instances/{sop} (content hash), /api/v1/stats
    POST /dev/sink[/studies]              dev only: writes a body to disk and drops it (benchmark baseline)

Every endpoint, reads included, needs ``Authorization: Bearer <token>``. Every write needs an
``Idempotency-Key``; a JSON request repeated with the same key and body gets the first answer
again (``Idempotent-Replayed: true``). Instances are deduplicated by SOP Instance UID and content.

Why stdlib ``ThreadingHTTPServer``: no extra dependency, one thread per connection, keep-alive
(HTTP/1.1), and bodies are streamed (Content-Length or chunked, optionally gzip), so the server
holds at most a few MB per request however large the upload. It is a development and test peer,
not a production registry.

Why one module, long as it is: a test peer, kept to one file per side (this HTTP side, and
:mod:`devregistry.storage`) so a registry developer reads the contract in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from devregistry.auth import bearer_ok
from devregistry.dicomjson import (
    instance_json,
    series_json,
    stow_response,
    study_json,
)
from connector.ingest.multipart_stream import (
    BodyError,
    BodyReader,
    boundary_of,
    read_multipart,
)
from devregistry.storage import CANNOT_UNDERSTAND, RegistryStore

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 8 * 1024**2
IDENTIFYING_KEYS = {"patient_name", "patient_id", "name", "birth_date", "date_of_birth", "mrn", "address",
                    "patientname", "patientid", "patientbirthdate"}
_UID = r"[0-9.]+"
_SEG = r"[^/]+"


class Faults:
    """Hooks a test may install to make the registry misbehave on purpose (defaults: behave)."""

    def before_request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        """Answer (status, headers, body) instead of handling the request; None = handle normally."""
        return None

    def instance_failure(self, sop_instance_uid: str) -> int | None:
        """A STOW-RS FailureReason to report for this instance instead of storing it; None = store."""
        return None


class _PartFile:
    """Sink for one multipart part: a temporary file (fsync'd later, with its batch) and its first bytes."""

    HEAD = 64 * 1024  # the start of the part, kept to read the header without reopening the file

    def __init__(self, path: Path, fd: int, fsync: bool = False) -> None:
        self.path = path
        self.fd: int | None = fd
        self.fsync = fsync
        self.size = 0
        self.head = bytearray()

    def write(self, data: memoryview) -> None:
        assert self.fd is not None
        view = data
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(data)
        if len(self.head) < self.HEAD:
            self.head += data[: self.HEAD - len(self.head)]

    def detach(self) -> int | None:
        """The open file descriptor, now the caller's to close."""
        fd, self.fd = self.fd, None
        return fd

    def close(self) -> None:
        if self.fd is not None:
            if self.fsync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.path.unlink(missing_ok=True)


class RegistryHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], store: RegistryStore, token: str, *, on_duplicate: str = "accept",
                 faults: Faults | None = None) -> None:
        self.store = store
        self.token = token
        self.on_duplicate = on_duplicate
        self.faults = faults or Faults()
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, RegistryHandler)

    def close_connections(self) -> None:
        """Cut open keep-alive connections (a stopped registry must look down to its clients)."""
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RegistryHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RegistryHTTPServer
    server_version = "site-connector-dev-registry"

    # -- plumbing ------------------------------------------------------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Method and status only: request paths name pseudonyms and UIDs.
        log.debug("registry request", extra={"event": "registry_request", "method": self.command,
                                             "status": str(code)})

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("registry http message", extra={"event": "registry_http_message"})

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def _reader(self) -> BodyReader:
        length = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        return BodyReader(self.rfile, length=int(length) if length and not chunked else (None if chunked else 0),
                          chunked=chunked, encoding=self.headers.get("Content-Encoding", ""))

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self._send(status, json.dumps(doc, sort_keys=True).encode(), content_type, headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def _drain_or_close(self) -> None:
        """Before answering early: read the body away, or close the connection if it is unusable."""
        try:
            self._reader().drain()
        except (BodyError, OSError, ValueError):
            self.close_connection = True

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path).rstrip("/") or "/"
        try:
            if not bearer_ok(self.headers.get("Authorization"), self.server.token):
                if method in ("POST", "PUT"):
                    self._drain_or_close()
                self._error(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="registry"'})
                return
            fault = self.server.faults.before_request(method, path)
            if fault is not None:
                if method in ("POST", "PUT"):
                    self._drain_or_close()
                status, headers, body = fault
                self._send(status, body, headers.pop("Content-Type", "application/json"), headers)
                return
            for route_method, pattern, handler in ROUTES:
                if route_method == method:
                    m = pattern.fullmatch(path)
                    if m:
                        handler(self, *m.groups())
                        return
            if method in ("POST", "PUT"):
                self._drain_or_close()
            known = any(pattern.fullmatch(path) for _, pattern, _ in ROUTES)
            self._error(405 if known else 404, "method not allowed" if known else "no such endpoint")
        except (TimeoutError, ConnectionError, BrokenPipeError):
            self.close_connection = True
        except BodyError as exc:
            self.close_connection = True
            try:
                self._error(400, f"bad request body: {exc}")
            except OSError:
                pass
        except Exception as exc:  # a bug or a disk problem: answer 500 (the site retries), keep serving
            log.error("registry request failed", extra={"event": "registry_error", "error": type(exc).__name__})
            self.close_connection = True
            try:
                self._error(500, "internal error")
            except OSError:
                pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    @property
    def _dicomweb_base(self) -> str:
        address = self.server.server_address
        host = self.headers.get("Host") or f"{address[0]!s}:{address[1]!s}"
        return f"http://{host}/dicomweb"

    # -- STOW-RS -------------------------------------------------------------------------------

    def stow(self, study_uid: str | None = None) -> None:
        store = self.server.store
        ctype = self.headers.get("Content-Type", "")
        if not self.headers.get("Idempotency-Key"):
            self._drain_or_close()
            self._error(400, "Idempotency-Key header required")
            return
        if not ctype.lower().startswith("multipart/related") or (
                "type=" in ctype.lower() and "application/dicom" not in ctype.lower()):
            self._drain_or_close()
            self._error(415, 'expected multipart/related; type="application/dicom"')
            return
        stored: list[tuple[str, str, str]] = []
        failed: list[tuple[str, str, int]] = []
        current: list[_PartFile] = []
        base = self._dicomweb_base
        batch = store.batch()
        batch.counts["stow_requests"] = 1
        started = time.monotonic()

        def on_part(headers: dict[str, str]) -> _PartFile:
            sink = _PartFile(*store.new_temp_file())
            current.append(sink)
            return sink

        outcomes = []

        def on_end(sink: Any) -> None:
            current.remove(sink)
            outcomes.append(batch.add(sink.path, sink.size, fd=sink.detach(), head=sink.head,
                                      study_uid=study_uid,
                                      on_duplicate=self.server.on_duplicate,
                                      veto=self.server.faults.instance_failure))

        try:
            boundary = boundary_of(ctype)
            parts = read_multipart(self._reader(), boundary, on_part, on_end)
        except (BodyError, ValueError) as exc:
            for sink in current:
                sink.abort()
            batch.abort()
            self.close_connection = True
            log.info("STOW-RS body incomplete; nothing stored from it",
                     extra={"event": "registry_stow_cut", "error": str(exc)[:80]})
            try:
                self._error(400, "incomplete or malformed multipart body")
            except OSError:
                pass
            return
        except BaseException:
            for sink in current:
                sink.abort()
            batch.abort()
            raise
        received = time.monotonic()
        batch.commit()  # durable before anything is acknowledged
        committed = time.monotonic()
        for outcome in map(batch.final, outcomes):
            if outcome.ok:
                stored.append((outcome.sop_class_uid, outcome.sop_instance_uid,
                               f"{base}/studies/{outcome.study_instance_uid}/series/{outcome.series_instance_uid}"
                               f"/instances/{outcome.sop_instance_uid}"))
            else:
                failed.append((outcome.sop_class_uid, outcome.sop_instance_uid, outcome.reason or CANNOT_UNDERSTAND))
        if parts == 0:
            self._error(400, "no instances in the request")
            return
        status = 200 if not failed else (202 if stored else 409)
        doc = stow_response(f"{base}/studies/{study_uid}" if study_uid else f"{base}/studies", stored, failed)
        log.info("STOW-RS", extra={"event": "registry_stow", "stored": len(stored), "failed": len(failed),
                                   "status": status, "receive_s": round(received - started, 3),
                                   "commit_s": round(committed - received, 3)})
        self._json(status, doc, content_type="application/dicom+json")

    def sink(self) -> None:
        """Dev only: receive a body to a temporary file (fsync'd, like instances), then delete it."""
        store = self.server.store
        part = _PartFile(*store.new_temp_file(), fsync=store.fsync)
        reader = self._reader()
        try:
            while chunk := reader.read():
                part.write(memoryview(chunk))
            part.close()
        finally:
            part.abort()
        self._json(200, {"bytes": part.size})

    # -- QIDO-RS / WADO-RS ---------------------------------------------------------------------

    def qido_studies(self) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        where, args = [], []
        for param, column in (("PatientID", "patient_id"), ("StudyInstanceUID", "study_instance_uid"),
                              ("00100020", "patient_id"), ("0020000D", "study_instance_uid")):
            if param in query:
                where.append(f"{column}=?")
                args.append(query[param])
        rows = self.server.store.studies(("WHERE " + " AND ".join(where)) if where else "", tuple(args))
        offset, limit = int(query.get("offset", 0) or 0), int(query.get("limit", 0) or 0)
        rows = rows[offset: offset + limit] if limit else rows[offset:]
        self._json(200, [study_json(r, self._dicomweb_base) for r in rows], content_type="application/dicom+json")

    def qido_series(self, study_uid: str) -> None:
        rows = self.server.store.series(study_uid)
        self._json(200, [series_json(r, self._dicomweb_base) for r in rows], content_type="application/dicom+json")

    def qido_instances(self, study_uid: str, series_uid: str) -> None:
        rows = self.server.store.instances_of(study_uid, series_uid)
        self._json(200, [instance_json(r, self._dicomweb_base) for r in rows],
                   content_type="application/dicom+json")

    def wado_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> None:
        row = self.server.store.instance(sop_uid)
        if row is None or row["study_instance_uid"] != study_uid or row["series_instance_uid"] != series_uid:
            self._error(404, "no such instance")
            return
        data = self.server.store.instance_file(row).read_bytes()
        boundary = "wado-" + hashlib.sha256(data[-64:]).hexdigest()[:24]
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
                + f"\r\n--{boundary}--\r\n".encode())
        self._send(200, body, f'multipart/related; type="application/dicom"; boundary={boundary}')

    # -- JSON API ------------------------------------------------------------------------------

    def _json_write(self, handler: Callable[[dict[str, Any], str], tuple[int, Any]]) -> None:
        """Common part of JSON writes: size limit, Idempotency-Key replay, JSON object body."""
        key = self.headers.get("Idempotency-Key", "").strip()
        reader = self._reader()
        raw = bytearray()
        while chunk := reader.read():
            raw.extend(chunk)
            if len(raw) > MAX_JSON_BYTES:
                self.close_connection = True
                self._error(413, "JSON body too large")
                return
        if not key:
            self._error(400, "Idempotency-Key header required")
            return
        body_sha = hashlib.sha256(bytes(raw)).hexdigest()
        prior = self.server.store.idempotent_response(key)
        if prior is not None:
            if (prior["method"], prior["path"], prior["body_sha256"]) == (self.command, self.path, body_sha):
                self.server.store.bump("idempotent_replays")
                self._send(prior["status"], prior["response"].encode(), headers={"Idempotent-Replayed": "true"})
            else:
                self._error(422, "Idempotency-Key already used for a different request")
            return
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(400, "body is not JSON")
            return
        if not isinstance(doc, dict):
            self._error(400, "body must be a JSON object")
            return
        leaked = sorted(k for k in doc if k.lower() in IDENTIFYING_KEYS)
        if leaked:
            self._error(422, "identifying fields are not accepted: " + ", ".join(leaked))
            return
        status, response = handler(doc, key)
        payload = json.dumps(response, sort_keys=True).encode()
        if 200 <= status < 300:
            self.server.store.remember_response(key, self.command, self.path, body_sha, status, payload)
        self._send(status, payload)

    def put_subject(self, pseudonym: str) -> None:
        def handle(doc: dict[str, Any], _key: str) -> tuple[int, Any]:
            created = self.server.store.put_subject(pseudonym, doc)
            return (201 if created else 200), {"pseudonym": pseudonym, "created": created}
        self._json_write(handle)

    def post_manifest(self, study_uid: str) -> None:
        def handle(doc: dict[str, Any], _key: str) -> tuple[int, Any]:
            if not isinstance(doc.get("sop_instance_uids"), list):
                return 400, {"error": "sop_instance_uids (a list) is required"}
            return 200, self.server.store.put_manifest(study_uid, doc)
        self._json_write(handle)

    def _post_record(self, table: str) -> None:
        def handle(doc: dict[str, Any], key: str) -> tuple[int, Any]:
            created, sha = self.server.store.add_record(table, key, doc)
            if not created and sha != hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest():
                return 409, {"error": "a different record holds this Idempotency-Key", "sha256": sha}
            return (201 if created else 200), {"created": created}
        self._json_write(handle)

    def post_result(self) -> None:
        self._post_record("results")

    def post_event(self) -> None:
        self._post_record("events")

    def get_subjects(self) -> None:
        self._json(200, {"subjects": self.server.store.subjects()})

    def get_subject(self, pseudonym: str) -> None:
        found = [s for s in self.server.store.subjects() if s["pseudonym"] == pseudonym]
        self._json(200, found[0]) if found else self._error(404, "no such subject")

    def get_results(self) -> None:
        self._json(200, {"results": self.server.store.records("results")})

    def get_events(self) -> None:
        self._json(200, {"events": self.server.store.records("events")})

    def get_manifests(self) -> None:
        self._json(200, {"manifests": self.server.store.manifests()})

    def get_manifest(self, study_uid: str) -> None:
        found = self.server.store.manifests(study_uid)
        self._json(200, found[0]) if found else self._error(404, "no manifest for this study")

    def get_instance(self, sop_uid: str) -> None:
        row = self.server.store.instance(sop_uid)
        if row is None:
            self._error(404, "no such instance")
            return
        row["sha256"] = self.server.store.instance_sha256(sop_uid)
        self._json(200, {k: row[k] for k in ("sop_instance_uid", "study_instance_uid", "series_instance_uid",
                                             "sha256", "size")})

    def get_stats(self) -> None:
        self._json(200, self.server.store.stats())


ROUTES: list[tuple[str, re.Pattern[str], Callable[..., None]]] = [
    (m, re.compile(p), cast(Callable[..., None], h)) for m, p, h in [
        ("POST", r"/dicomweb/studies", RegistryHandler.stow),
        ("POST", rf"/dicomweb/studies/({_UID})", RegistryHandler.stow),
        ("GET", r"/dicomweb/studies", RegistryHandler.qido_studies),
        ("GET", rf"/dicomweb/studies/({_UID})/series", RegistryHandler.qido_series),
        ("GET", rf"/dicomweb/studies/({_UID})/series/({_UID})/instances", RegistryHandler.qido_instances),
        ("GET", rf"/dicomweb/studies/({_UID})/series/({_UID})/instances/({_UID})", RegistryHandler.wado_instance),
        ("PUT", rf"/api/v1/subjects/({_SEG})", RegistryHandler.put_subject),
        ("GET", r"/api/v1/subjects", RegistryHandler.get_subjects),
        ("GET", rf"/api/v1/subjects/({_SEG})", RegistryHandler.get_subject),
        ("POST", rf"/api/v1/studies/({_UID})/manifest", RegistryHandler.post_manifest),
        ("GET", rf"/api/v1/studies/({_UID})/manifest", RegistryHandler.get_manifest),
        ("GET", r"/api/v1/manifests", RegistryHandler.get_manifests),
        ("POST", r"/api/v1/results", RegistryHandler.post_result),
        ("GET", r"/api/v1/results", RegistryHandler.get_results),
        ("POST", r"/api/v1/events", RegistryHandler.post_event),
        ("GET", r"/api/v1/events", RegistryHandler.get_events),
        ("GET", rf"/api/v1/instances/({_UID})", RegistryHandler.get_instance),
        ("GET", r"/api/v1/stats", RegistryHandler.get_stats),
        ("POST", r"/dev/sink", RegistryHandler.sink),
        ("POST", r"/dev/sink/studies", RegistryHandler.sink),  # a STOW-RS client pointed at the sink
    ]
]


class RegistryServer:
    """The dev registry on ``host:port`` over ``data_dir``; ``start()`` runs it on a thread."""

    def __init__(self, data_dir: Path, *, token: str, host: str = "127.0.0.1", port: int = 8042, fsync: bool = True,
                 on_duplicate: str = "accept", faults: Faults | None = None) -> None:
        if on_duplicate not in ("accept", "conflict"):
            raise ValueError("on_duplicate must be 'accept' or 'conflict'")
        self.store = RegistryStore(Path(data_dir), fsync=fsync)
        self.httpd = RegistryHTTPServer((host, port), self.store, token, on_duplicate=on_duplicate, faults=faults)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port!s}"

    @property
    def faults(self) -> Faults:
        return self.httpd.faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        self.httpd.faults = value or Faults()

    def start(self) -> RegistryServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="dev-registry", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd.close_connections()
        self.store.close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
