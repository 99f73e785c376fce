"""A registry's answer is read as a stream and given up past a bound (issue 24, row 4).

Before, the uploader read every answer whole (``resp.content``): a registry answering a STOW-RS
request with 1 GiB took the push role from 70 MB to 4.2 GB. Now an answer longer than
``[registry] max_response_bytes`` (1 MiB) is not read: the job fails with ``response-too-large``
(no identifier in the reason), and the push role's peak RSS stays under :data:`PUSH_RSS_BOUND`.
Reconciliation reads series lists under its own, larger bound (``reconcile_max_response_bytes``).

The misbehaving registry is a small HTTP server on 127.0.0.1 that generates its body lazily: the
test process never holds it.
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from connector.config import Config
from connector.push.client import RegistryClient, ResponseRefused
from connector.push.registry_reader import ReconcileError, RegistryReader
from connector.settings.registry import RegistryConfig
from connector.synthetic import SyntheticStudy, write_pet_ct_study
from tests.push.test_push_daemon import push_settings, storescu, token_file
from tests.support.daemon import ConnectorProcess

ONE_GIB = 1024**3
MIB = 1024**2
# The documented bound: the push role's peak RSS (VmHWM) while a registry answers 1 GiB. Measured
# 76 MiB (74 MiB idle) on the 2-core test machine; before the change, over 2 GiB.
PUSH_RSS_BOUND = 128 * MIB
FILLER = b" " * 65536  # JSON whitespace: what a confused proxy or a hostile server might stream


class HugeAnswerRegistry:
    """Answers STOW-RS (or, with ``huge_paths``, any path containing one of them) with ``size`` bytes,
    chunked or with a declared length; JSON API requests get ``{}``."""

    def __init__(self, size: int, *, declare_length: bool = False, gzip_body: bool = False,
                 huge_paths: tuple[str, ...] = ("/dicomweb/studies",), body: bytes | None = None) -> None:
        self.size, self.declare_length, self.gzip_body = size, declare_length, gzip_body
        self.huge_paths, self.body = huge_paths, body
        self.sent = 0  # bytes of huge answers written before the client went away
        self.huge_requests = 0
        self.accept_encodings: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _read_request(self) -> None:
                left = int(self.headers.get("Content-Length") or 0)
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
                owner.accept_encodings.append(self.headers.get("Accept-Encoding", ""))

            def _answer(self) -> None:
                self._read_request()
                if any(p in self.path for p in owner.huge_paths):
                    owner.huge_requests += 1
                    owner.stream(self)
                else:
                    body = b"{}"
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stream(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        if self.body is not None:  # a complete, small body (the reconcile tests)
            data = gzip.compress(self.body) if self.gzip_body else self.body
            if self.gzip_body:
                handler.send_header("Content-Encoding", "gzip")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        if self.declare_length:
            handler.send_header("Content-Length", str(self.size))
        else:
            handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        view = memoryview(FILLER)
        try:
            while self.sent < self.size:
                n = min(len(FILLER), self.size - self.sent)
                if self.declare_length:
                    handler.wfile.write(view[:n])
                else:
                    handler.wfile.write(b"%x\r\n" % n + view[:n] + b"\r\n")
                self.sent += n
            if not self.declare_length:
                handler.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client gave up: what this test wants
            pass

    def __enter__(self) -> HugeAnswerRegistry:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _role_pid(daemon: ConnectorProcess, role: str, timeout: float = 60.0) -> int:
    """The pid a role logged when it started (every role process runs the same command line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in daemon.logs().splitlines():
            if line.startswith("{") and '"role_pid"' in line:
                record = json.loads(line)
                if record.get("role") == role:
                    return int(record["pid"])
        time.sleep(0.2)
    raise AssertionError(f"no pid logged for the {role} role")


@pytest.mark.slow
def test_a_1_gib_stow_answer_fails_the_job_and_the_uploader_stays_small(tmp_path: Path) -> None:
    study = SyntheticStudy()
    _, files = write_pet_ct_study(tmp_path / "pacs", study, ct_count=3, pet_count=2, ct_rows=64)
    token = token_file(tmp_path / "secrets")
    with HugeAnswerRegistry(ONE_GIB) as registry:
        settings = push_settings(registry.url, token, registry__reconcile_interval_minutes=0)
        with ConnectorProcess(tmp_path / "site", **settings) as daemon:
            push_pid = _role_pid(daemon, "push")
            daemon.wait_for_log('"push_started"', timeout=60)
            idle_kib = _status_kib(push_pid, "VmRSS")
            began = time.monotonic()
            storescu(daemon.port, files)
            logs = daemon.wait_for_log('"push_failed"', timeout=90)
            seconds = time.monotonic() - began
            peak_kib = _status_kib(push_pid, "VmHWM")
        failed = [json.loads(line) for line in logs.splitlines()
                  if line.startswith("{") and '"push_failed"' in line]
    print(f"REGISTRY_BODY push_rss_idle_mib={idle_kib / 1024:.1f} push_rss_peak_mib={peak_kib / 1024:.1f} "
          f"bound_mib={PUSH_RSS_BOUND / MIB:.0f} answer_written_mib={registry.sent / MIB:.1f} "
          f"of {ONE_GIB / MIB:.0f} send_to_failure_s={seconds:.1f}")
    assert failed, "the job did not fail"
    [stow] = [f for f in failed if f.get("kind") == "stow"]
    assert stow["error"].startswith("response-too-large: ") and "1048576" in stow["error"], stow
    for uid in (study.study_uid, study.patient.patient_id):
        assert uid not in json.dumps(failed)
    assert registry.huge_requests == 1, "the failed job is not retried"
    assert registry.sent < 64 * MIB, "the answer was read far past the bound"
    assert peak_kib * 1024 < PUSH_RSS_BOUND, f"push role peak RSS {peak_kib / 1024:.0f} MiB"


def test_an_announced_length_over_the_bound_is_refused_unread() -> None:
    with HugeAnswerRegistry(64 * MIB, declare_length=True) as registry:
        client = RegistryClient(RegistryConfig(url=registry.url))
        try:
            with pytest.raises(ResponseRefused) as refused:
                client.http.post(registry.url + "/dicomweb/studies", content=b"--x--\r\n")
        finally:
            client.close()
    assert refused.value.code == "response-too-large" and refused.value.status == 200
    assert "[registry] max_response_bytes" in str(refused.value)
    assert registry.sent < 16 * MIB


def test_a_compressed_answer_is_not_asked_for_and_refused() -> None:
    bomb = b"[" + b" " * (8 * MIB) + b"]"  # 8 MiB of JSON in about 8 kB of gzip
    with HugeAnswerRegistry(0, body=bomb, gzip_body=True) as registry:
        client = RegistryClient(RegistryConfig(url=registry.url))
        try:
            with pytest.raises(ResponseRefused) as refused:
                client.http.post(registry.url + "/dicomweb/studies", content=b"--x--\r\n")
        finally:
            client.close()
    assert refused.value.code == "response-compressed"
    assert registry.accept_encodings == ["identity"]


def _qido(instances: int) -> bytes:
    return json.dumps([{"00080018": {"vr": "UI", "Value": [f"2.25.{i}"]}} for i in range(instances)]).encode()


def test_reconcile_reads_a_long_series_list_and_refuses_a_longer_one() -> None:
    listing = _qido(60_000)  # about 3 MiB: over the upload bound, well under reconciliation's 32 MiB
    assert MIB < len(listing) < 32 * MIB
    with HugeAnswerRegistry(0, body=listing, huge_paths=("/instances",)) as registry:
        reader = RegistryReader(Config(registry=RegistryConfig(url=registry.url)))
        try:
            assert len(reader.instances("1.2.3", "1.2.3.4", expected=60_000)) == 60_000
        finally:
            reader.close()
    with HugeAnswerRegistry(64 * MIB, huge_paths=("/instances",)) as registry:
        reader = RegistryReader(Config(registry=RegistryConfig(url=registry.url)))
        try:
            with pytest.raises(ReconcileError) as refused:
                reader.instances("1.2.3", "1.2.3.4", expected=1)
        finally:
            reader.close()
    assert str(refused.value).startswith("response-too-large: ")
    assert "reconcile_max_response_bytes" in str(refused.value)
    assert registry.sent < 48 * MIB
