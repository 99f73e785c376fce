"""Start-up is all or nothing: every way the daemon can fail to start, against the real daemon.

Each case asserts the exit code (2 when the operator must change configuration, files or
permissions; 1 otherwise), one plain line naming what failed and the setting or command that fixes
it, no traceback, an exit within seconds, and that no process of the daemon survives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import (TEST_STOP_TIMEOUT, plain_lines, start_and_wait_exit, stop_timed,
                                  wait_group_gone)
from tests.support.daemon import ConnectorProcess
from tests.support.net import free_port

pytestmark = pytest.mark.slow

START_FAILS_WITHIN = 15.0  # seconds, on a loaded 2-core CI machine (about 1 s when idle)


def assert_failed_start(daemon: ConnectorProcess, code: int, *needles: str) -> str:
    rc, output, seconds = start_and_wait_exit(daemon)
    assert daemon.proc is not None
    survivors = wait_group_gone(daemon.proc.pid)
    assert not survivors, f"processes left running after a failed start: {survivors}"
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in plain_lines(output) if line.startswith("site-connector: cannot start")]
    assert len(lines) == 1, output[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert rc == code, (rc, lines[0])
    assert seconds < START_FAILS_WITHIN, seconds
    assert '"daemon_started"' not in output
    return lines[0]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Another program listening on a port (plain socket, no SO_REUSEPORT)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(8)
    yield sock
    sock.close()


def test_http_port_in_use(tmp_path: Path, listener: socket.socket) -> None:
    """The reported bug: roles left running, AttributeError in server_close, SIGTERM ignored."""
    port = listener.getsockname()[1]
    line = assert_failed_start(ConnectorProcess(tmp_path / "site", http__port=port), 1,
                               f"HTTP port {port} is already in use", "[http] port")
    assert "AttributeError" not in line


def test_dicom_port_in_use(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert_failed_start(ConnectorProcess(tmp_path / "site", dicom__port=port), 1,
                        f"DICOM port {port} is already in use", "[dicom] port")


def test_second_daemon_on_the_same_dicom_port_is_refused(tmp_path: Path) -> None:
    """Receivers use SO_REUSEPORT: without the start-up check a second daemon (another data folder)
    would silently share the port, and the kernel would spread the PACS's objects over both."""
    with ConnectorProcess(tmp_path / "first", service__stop_timeout=TEST_STOP_TIMEOUT) as first:
        second = ConnectorProcess(tmp_path / "second", dicom__port=first.port)
        assert_failed_start(second, 1, f"DICOM port {first.port} is already in use")
        assert first.cli("echo").returncode == 0  # the first one is untouched
        code, _ = stop_timed(first)
        assert code == 0


def test_data_folder_is_not_a_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_failed_start(ConnectorProcess(tmp_path / "site", storage__data_dir=str(blocker / "data")), 2,
                        "data folder", "not writable", "[storage] data_dir")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root (the CI runs as root)")
def test_data_folder_on_a_read_only_file_system(tmp_path: Path) -> None:
    data = tmp_path / "ro-data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(data)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        assert_failed_start(ConnectorProcess(tmp_path / "site", storage__data_dir=str(data)), 2,
                            f"data folder {data} is not writable", "Read-only file system", "chown")
    finally:
        subprocess.run(["umount", str(data)], check=True)


def test_damaged_key_file(tmp_path: Path) -> None:
    daemon = ConnectorProcess(tmp_path / "site")
    key = tmp_path / "site" / "keys" / "site.key"
    assert key.exists()
    key.write_text("garbage\n")
    assert_failed_start(daemon, 2, "linkage key problem", "site.key")


def test_key_file_readable_by_others(tmp_path: Path) -> None:
    daemon = ConnectorProcess(tmp_path / "site")
    key = tmp_path / "site" / "keys" / "site.key"
    key.chmod(0o644)
    assert_failed_start(daemon, 2, "linkage key problem", "chmod 600")


def test_corrupt_state_database(tmp_path: Path) -> None:
    daemon = ConnectorProcess(tmp_path / "site")
    db = daemon.data_dir / "state" / "state.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not an SQLite database\n" * 200)
    assert_failed_start(daemon, 1, f"state database {db} cannot be used", "file is not a database",
                        "move it aside")


def test_unreadable_tls_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    key.write_text("nor this\n")
    assert_failed_start(ConnectorProcess(tmp_path / "site", dicom__tls_cert_file=str(cert),
                                         dicom__tls_key_file=str(key)), 2, "DICOM TLS files", "tls_cert_file")


def test_tls_key_not_matching_the_certificate(tmp_path: Path) -> None:
    from tests.ingest.test_ingest_tls import self_signed

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    assert_failed_start(ConnectorProcess(tmp_path / "site", dicom__tls_cert_file=str(cert),
                                         dicom__tls_key_file=str(other_key)), 2, "DICOM TLS files",
                        "matching private key")


def test_missing_tls_file(tmp_path: Path) -> None:
    assert_failed_start(ConnectorProcess(tmp_path / "site", dicom__tls_cert_file=str(tmp_path / "none.pem"),
                                         dicom__tls_key_file=str(tmp_path / "none.key")), 2,
                        "DICOM TLS files", "No such file")


def test_bad_stop_timeout_is_a_configuration_error(tmp_path: Path) -> None:
    rc, output, _ = start_and_wait_exit(ConnectorProcess(tmp_path / "site", service__stop_timeout=1))
    assert rc == 2
    assert "[service] stop_timeout: must be between 5 and 3600" in output


def test_sigterm_while_starting_stops_everything(tmp_path: Path) -> None:
    """SIGTERM as soon as the first role runs (receivers started, pipeline not yet, or just after)."""
    daemon = ConnectorProcess(tmp_path / "site", service__stop_timeout=TEST_STOP_TIMEOUT)
    daemon.start(wait=False)
    assert daemon.proc is not None
    deadline = time.monotonic() + 60
    while '"role_pid"' not in daemon.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    began = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    rc = daemon.proc.wait(timeout=TEST_STOP_TIMEOUT + 10)
    assert time.monotonic() - began < TEST_STOP_TIMEOUT
    assert not wait_group_gone(daemon.proc.pid)
    assert rc == 0, daemon.log_path.read_text()[-2000:]
    assert "Traceback" not in daemon.log_path.read_text()


def test_port_freed_after_a_failed_start_lets_the_next_start_succeed(tmp_path: Path) -> None:
    """systemd's Restart=on-failure: exit 1, the other program goes away, the next start works."""
    port = free_port()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", port))
    blocker.listen(1)
    daemon = ConnectorProcess(tmp_path / "site", http__port=port, service__stop_timeout=TEST_STOP_TIMEOUT)
    assert_failed_start(daemon, 1, "HTTP port")
    blocker.close()
    daemon.start()
    try:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            assert resp.status == 200
    finally:
        code, _ = stop_timed(daemon)
    assert code == 0


def test_unusable_dashboard_tls_files(tmp_path: Path) -> None:
    """[http] TLS problems are configuration (exit 2) and said as such, not "port in use"."""
    from tests.ingest.test_ingest_tls import self_signed

    cert, key = self_signed(tmp_path)
    os.chmod(key, 0o644)  # readable by every local user
    assert_failed_start(ConnectorProcess(tmp_path / "site", http__tls_cert=str(cert), http__tls_key=str(key)), 2,
                        "over HTTPS", "[http] tls_key is readable by every local user")
    os.chmod(key, 0o600)
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    assert_failed_start(ConnectorProcess(tmp_path / "site2", http__tls_cert=str(broken), http__tls_key=str(key)), 2,
                        "over HTTPS", "[http] tls_cert/tls_key unusable")
