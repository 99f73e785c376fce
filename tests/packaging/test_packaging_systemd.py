"""``systemd-analyze verify`` on the shipped unit, in a scratch root so nothing is installed.

The scratch root holds the system's own unit folder (for the targets the unit names) and a stand-in
for ``/opt/site-connector/bin/site-connector`` (verify checks that ExecStart is executable).
Skipped, with the reason, where systemd-analyze is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "service" / "site-connector.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze not installed (Debian package 'systemd'); the unit cannot be verified here",
)


def _verify(tmp_path: Path, unit_text: str, name: str = "site-connector.service") -> subprocess.CompletedProcess[str]:
    root = tmp_path / "root"
    exec_start = next(line.split("=", 1)[1].split()[0] for line in unit_text.splitlines()
                      if line.startswith("ExecStart="))
    binary = root / exec_start.lstrip("/")
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    (root / "usr" / "lib" / "systemd").mkdir(parents=True, exist_ok=True)
    if not (root / "usr" / "lib" / "systemd" / "system").exists():
        shutil.copytree(SYSTEM_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
        (root / "lib").symlink_to("usr/lib")
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    (units / name).write_text(unit_text)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", name],
                          capture_output=True, text=True, timeout=60)


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    r = _verify(tmp_path, UNIT.read_text())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr  # not even a warning


def test_unit_has_the_hardening_the_issue_asks_for() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["User"] == ["site-connector"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["Restart"] == ["on-failure"]
    assert "CAP_NET_BIND_SERVICE" in settings["AmbientCapabilities"][0]
    assert any("/var/lib/site-connector" in v for v in settings["ReadWritePaths"])


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    broken = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilegez=yes")
    r = _verify(tmp_path, broken)
    assert "Unknown key" in r.stderr and "NoNewPrivilegez" in r.stderr
