"""A registry token file others can read stops the start, as an unsafe site key does (issue 24, row 8).

Before, mode 0644 only logged a warning and the uploader pushed with the token. Now the daemon
exits 2 with one line naming the file and the fix, and the registry client never sends such a
token (it is re-read after a 401, so a file made readable later is caught too).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connector.push.client import RegistryClient
from connector.settings.registry import RegistryConfig
from tests.faults.test_startup import assert_failed_start
from tests.support.daemon import ConnectorProcess


def _token(folder: Path, mode: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "registry.token"
    path.write_text(os.urandom(16).hex() + "\n")
    os.chmod(path, mode)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_a_token_file_readable_by_others_stops_the_start(tmp_path: Path, mode: int) -> None:
    token = _token(tmp_path / "secrets", mode)
    daemon = ConnectorProcess(tmp_path / "site", registry__url="http://127.0.0.1:9", registry__token_file=str(token))
    line = assert_failed_start(daemon, 2, "registry token file", str(token), f"mode {mode:04o}",
                               f"chmod 600 {token}")
    assert token.read_text().strip() not in line


def test_the_client_never_sends_a_token_from_an_exposed_file(tmp_path: Path) -> None:
    token = _token(tmp_path / "secrets", 0o600)
    client = RegistryClient(RegistryConfig(url="http://127.0.0.1:9", token_file=token))
    try:
        assert client.auth_headers() == {"Authorization": f"Bearer {token.read_text().strip()}"}
        os.chmod(token, 0o644)  # made readable while running: the next re-read (after a 401) refuses it
        client.reload_token()
        assert client.auth_headers() == {}
    finally:
        client.close()
    exposed = RegistryClient(RegistryConfig(url="http://127.0.0.1:9", token_file=token))
    try:
        assert exposed.auth_headers() == {}
    finally:
        exposed.close()
