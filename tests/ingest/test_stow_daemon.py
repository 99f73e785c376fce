"""The ``stow`` role inside the real daemon: started only when [stow] is enabled, refused at start with an
unsafe token file, and stopped within [service] stop_timeout even with an upload hanging mid-body."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from tests.faults.support import TEST_STOP_TIMEOUT, plain_lines, start_and_wait_exit, stop_timed
from tests.support.daemon import ConnectorProcess
from tests.support.net import free_port, wait_port

TOKEN = "daemon-" + "d" * 30


def tokens(folder: Path, mode: int = 0o600) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stow.tokens"
    path.write_text(TOKEN + "\n")
    os.chmod(path, mode)
    return path


def test_stow_role_stops_within_stop_timeout_with_an_upload_hanging_mid_body(tmp_path: Path,
                                                                            small_study) -> None:
    _, files = small_study
    port = free_port()
    daemon = ConnectorProcess(tmp_path / "site", stow__enabled=True, stow__host="127.0.0.1", stow__port=port,
                              stow__token_file=str(tokens(tmp_path / "etc")),
                              service__stop_timeout=TEST_STOP_TIMEOUT).start()
    try:
        wait_port(port, timeout=30)
        assert "stow" in daemon.wait_for_log('"role": "stow"')
        part = files[0].read_bytes()
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = ("--b\r\nContent-Type: application/dicom\r\n\r\n").encode()
        sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=b"
                     + b"\r\nContent-Length: 100000000\r\n\r\n" + head + part[: len(part) // 2])
        partial = daemon.spool / "partial" / "stow"
        deadline = time.monotonic() + 10
        while not any(partial.glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(partial.glob("*")), "the part being received is not on disk"
        code, seconds = stop_timed(daemon)
        sock.close()
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
    assert code == 0
    assert seconds < TEST_STOP_TIMEOUT, seconds
    assert not any(partial.glob("*")), "the half-received part was left behind"


def test_start_refused_when_the_stow_token_file_is_readable_by_others(tmp_path: Path) -> None:
    path = tokens(tmp_path / "etc", mode=0o644)
    daemon = ConnectorProcess(tmp_path / "site", stow__enabled=True, stow__port=free_port(),
                              stow__token_file=str(path))
    code, output, _ = start_and_wait_exit(daemon)
    assert code == 2, output[-2000:]
    assert any(f"chmod 600 {path}" in line for line in plain_lines(output)), output[-2000:]


def test_start_refused_when_stow_is_enabled_without_any_authentication(tmp_path: Path) -> None:
    daemon = ConnectorProcess(tmp_path / "site", stow__enabled=True, stow__port=free_port())
    code, output, _ = start_and_wait_exit(daemon)
    assert code == 2, output[-2000:]
    assert "[stow] token_file" in output


def test_stow_is_off_by_default(tmp_path: Path) -> None:
    with ConnectorProcess(tmp_path / "site") as daemon:
        logs = daemon.wait_for_log('"event": "daemon_started"')
    assert '"event": "daemon_started"' in logs
    assert '"role": "stow"' not in logs and "stow_listening" not in logs


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from connector.synthetic import SyntheticStudy, write_pet_ct_study

    return write_pet_ct_study(tmp_path_factory.mktemp("stow-daemon-study"), SyntheticStudy(), ct_count=2,
                              pet_count=0, ct_rows=256)
