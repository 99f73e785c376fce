"""The CLI as an operator meets it: init, --help everywhere, status, echo and their exit codes."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from connector.cli.main import COMMAND_MODULES, build_parser
from tests.support.daemon import ConnectorProcess, init_site
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "connector", *args], cwd=ROOT, capture_output=True, text=True)


def _all_command_paths() -> list[list[str]]:
    parser = build_parser()
    paths: list[list[str]] = []

    def walk(p: object, prefix: list[str]) -> None:
        for action in getattr(p, "_actions", []):
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for name, child in choices.items():
                    paths.append(prefix + [name])
                    walk(child, prefix + [name])

    walk(parser, [])
    return paths


def test_every_command_has_help() -> None:
    paths = _all_command_paths()
    assert len(paths) >= len(COMMAND_MODULES)
    for path in [[]] + paths:
        out = cli(*path, "--help")
        assert out.returncode == 0, (path, out.stderr)
        assert "usage:" in out.stdout


def test_init_writes_config_and_private_folders_and_refuses_overwrite(tmp_path: Path) -> None:
    site = tmp_path / "site"
    out = cli("init", str(site), "--site-id", "ZZ9", "--ae-title", "MYAE", "--port", "11555",
              "--registry-url", "https://registry.example.org")
    assert out.returncode == 0, out.stderr
    text = (site / "connector.toml").read_text()
    assert 'id = "ZZ9"' in text and 'ae_title = "MYAE"' in text and "port = 11555" in text
    assert "registry.example.org" in text
    for folder in (site / "data", site / "keys", site / "data" / "spool"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    again = cli("init", str(site))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert (site / "connector.toml").read_text() == text


def test_init_rejects_bad_values_with_exit_2(tmp_path: Path) -> None:
    out = cli("init", str(tmp_path / "s"), "--site-id", "bad id!")
    assert out.returncode == 2 and "[site] id" in out.stderr
    assert not (tmp_path / "s" / "connector.toml").exists()


def test_status_without_state_db_exits_3(tmp_path: Path) -> None:
    config = init_site(tmp_path / "site")
    (tmp_path / "site" / "data" / "state").rmdir()
    out = cli("-c", str(config), "status", "--json")
    assert out.returncode == 3


def test_echo_and_status_against_running_daemon(tmp_path: Path, small_study) -> None:
    _, files = small_study
    with ConnectorProcess(tmp_path / "site") as daemon:
        ok = daemon.cli("echo", "--json")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout)["ok"] is True
        from tests.support.tools import dcmtk

        subprocess.run([dcmtk("storescu"), "-aec", "SITECONN", "127.0.0.1", str(daemon.port),
                        *map(str, files)], check=True, capture_output=True)
        status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        assert status["instances_received"] == len(files)
        assert sum(status["studies"].values()) == 1
        for key in ("quarantined", "outbox_pending", "pushed"):
            assert key in status
    closed = subprocess.run([sys.executable, "-m", "connector", "echo", "--port", str(free_port()), "--timeout", "2"],
                            cwd=ROOT, capture_output=True, text=True)
    assert closed.returncode == 3 and "FAILED" in closed.stdout


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_daemon_stops_cleanly_on_signal(tmp_path: Path, signal_name: str) -> None:
    import signal

    daemon = ConnectorProcess(tmp_path / "site").start()
    assert daemon.proc is not None
    daemon.proc.send_signal(getattr(signal, signal_name))
    assert daemon.proc.wait(timeout=60) == 0
    events = [json.loads(line).get("event") for line in daemon.logs().splitlines() if line.startswith("{")]
    assert "daemon_stopped" in events
