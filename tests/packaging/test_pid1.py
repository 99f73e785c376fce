"""The supervisor as PID 1, as in a container started without an init, without a container:
``unshare --pid --fork --mount-proc`` makes the test's Python PID 1 of a new PID namespace.

- the roles' orphan check takes a parent of pid 1 for the supervisor it is (it used to compare
  with 1 and made every role exit at once: "the DICOM receiver exited while starting (exit code 1)");
- the supervisor waits for orphans re-parented to it, and leaves its own roles to multiprocessing.

test_container.py runs the real daemon as a container's PID 1; these run where podman cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def as_pid1(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here (needs root): {probe.stderr.strip()}")
    script = tmp_path / "pid1.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SITE_CONNECTOR__STORAGE__DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_roles_started_by_a_pid1_supervisor_stay_up(tmp_path: Path) -> None:
    out = as_pid1("""
        import multiprocessing, os
        from connector.roles import _die_with_parent, spawn_context

        if __name__ == "__main__":
            assert os.getpid() == 1
            role = spawn_context().Process(target=_die_with_parent)  # the check every role runs first
            role.start()
            role.join(60)
            print("exitcode", role.exitcode)
        """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "exitcode 0" in out.stdout, out.stdout + out.stderr


def test_pid1_supervisor_reaps_orphans_but_not_its_roles(tmp_path: Path) -> None:
    out = as_pid1("""
        import os, subprocess, time
        from connector.config import load_config
        from connector.daemon import Supervisor, _Role, _zombie_children

        if __name__ == "__main__":
            sup = Supervisor(load_config(None, environ=dict(os.environ)))
            subprocess.run(["sh", "-c", "sleep 0.2 & exit 0"])  # its sleep is orphaned, handed to PID 1
            role = sup._ctx.Process(target=os.getpid)  # a role that exits at once, not yet joined
            role.start()
            sup.roles.append(_Role("r", "receiver", ()))
            sup.roles[-1].process = role
            deadline = time.monotonic() + 60  # until both have exited (a spawned Python starts slowly)
            while len(_zombie_children(1)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            before = sorted(_zombie_children(1))
            sup._reap_orphans()
            after = sorted(_zombie_children(1))
            print("role", role.pid, "before", before, "after", after)
            assert len(before) == 2 and after == [role.pid], (before, after)
            role.join(5)
            assert role.exitcode == 0 and _zombie_children(1) == []
            print("ok")
        """, tmp_path)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr
