"""Whatever umask the daemon is started with, what it writes is the service user's alone (issue 24, row 7).

Before, ``site-connector run`` from a shell with umask 022 left PHI world-readable: quarantined
originals, ``state.db*``, ``results/*/cac-*.npz``, ``logs/connector.log`` 0644 and ``data/results``
0755. Now the commands and every role run with umask 0077. A study with coronary calcium (CAC on:
scored-calcium maps and SR/SEG originals in ``results/``) and a secondary capture (quarantined by
de-identification) goes from storescu through the daemon, started with umask 022, to the dev registry;
then every file under the data and key folders must be 0600 and every folder 0700.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from devregistry import RegistryServer
from connector.synthetic import SyntheticStudy, write_demo_study
from tests.support.waiting import wait_for
from tests.push.test_push_daemon import push_settings, storescu, token_file
from tests.security.purge_support import secondary_capture
from tests.support.daemon import ConnectorProcess

pytestmark = pytest.mark.slow

CT_SLICES = 32


def modes_not_private(*roots: Path) -> list[str]:
    """'mode path' of every folder not 0700 and every file not 0600 under ``roots``."""
    wide = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                path = Path(folder) / name
                st = path.lstat()
                want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
                if stat.S_IMODE(st.st_mode) != want:
                    wide.append(f"{stat.S_IMODE(st.st_mode):04o} {path.relative_to(root.parent)}")
    return wide


def test_a_study_through_a_daemon_started_with_umask_022_leaves_only_private_files(tmp_path: Path) -> None:
    study = SyntheticStudy()
    files = write_demo_study(tmp_path / "pacs", ct_slices=CT_SLICES, study=study)
    files.append(secondary_capture(study, tmp_path / "pacs" / "sc.dcm"))
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    site = tmp_path / "site"
    previous = os.umask(0o022)  # as a shell would: `site-connector init` and `run` inherit it
    try:
        settings = push_settings(registry.url, token, cac__enabled=True, registry__reconcile_interval_minutes=0,
                                 logging__file=str(site / "data" / "logs" / "connector.log"))
        with ConnectorProcess(site, **settings) as daemon:
            storescu(daemon.port, files)
            wait_for(lambda: json.loads(daemon.cli("status", "--json", check=True).stdout)["studies"]
                     .get("pushed") == 1, timeout=300, interval=0.5)
        data = daemon.data_dir
        written = {
            "quarantined original": list(data.glob("quarantine/deid/*.bin")),
            "state database": list(data.glob("state/state.db*")),
            "scored-calcium map": list(data.glob("results/*/cac-*.npz")),
            "CAC SR original": list(data.glob("results/*/cac-*-sr.dcm")),
            "log file": list(data.glob("logs/connector.log")),
            "spool original": list(data.glob("spool/incoming/*/*.dcm")),
        }
    finally:
        os.umask(previous)
        registry.stop()
    assert all(written.values()), {k: len(v) for k, v in written.items()}
    wide = modes_not_private(data, site / "keys")
    assert not wide, "written with a wider mode than owner-only:\n" + "\n".join(wide)
