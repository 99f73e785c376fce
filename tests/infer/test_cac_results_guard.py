"""[results] return_to_pacs refuses to start with a CAC model whose manifest says it is not validated
for clinical use (exit 2, one line saying why and how to override), unless the site sets
[results] allow_unvalidated_model (research use); a validated model starts without the override."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connector.config import load_config
from connector.preflight import DaemonStartError, check_results_model
from connector.infer.manifest import BUNDLED_MODEL_DIR, load_manifest
from tests.support.daemon import ConnectorProcess
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def _config_text(port: int, extra: str = "") -> str:
    return (f'[site]\nid = "GUARD"\n[storage]\ndata_dir = "data"\nmin_free_bytes = 0\n[dicom]\nport = {port}\n'
            f'[http]\nenabled = false\n[pacs]\nhost = "127.0.0.1"\nport = {free_port()}\nae_title = "HOSPPACS"\n'
            f'[results]\nreturn_to_pacs = true\n{extra}')


def test_bundled_models_are_not_validated() -> None:
    for name in ("cac-synthetic-v1", "cac-synthetic-v2"):
        assert load_manifest(ROOT / "models" / name).validated_for_clinical_use is False


def test_return_to_pacs_with_an_unvalidated_model_refuses_to_start_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text(_config_text(free_port()))
    run = subprocess.run([sys.executable, "-m", "connector", "-c", str(config), "run"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("site-connector: cannot start")]
    assert len(lines) == 1, run.stderr[-2000:]
    line = lines[0]
    assert "return_to_pacs" in line and "not validated" in line and "cac-synthetic 2.0.0" in line
    assert "allow_unvalidated_model = true" in line and "research use" in line
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "data" / "state").exists()  # refused before anything was created


def test_a_validated_manifest_passes_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    validated = tmp_path / "validated-model"
    shutil.copytree(BUNDLED_MODEL_DIR, validated)
    manifest = json.loads((validated / "manifest.json").read_text())
    manifest["validated_for_clinical_use"] = True  # the hash covers the model bytes only: still loads
    (validated / "manifest.json").write_text(json.dumps(manifest))
    port = free_port()
    config = tmp_path / "connector.toml"
    config.write_text(_config_text(port, f'[cac]\nmodel_dir = "{validated}"\n'))
    check_results_model(load_config(config, environ={}))  # no exception
    config.write_text(_config_text(port, f'[cac]\nmodel_dir = "{tmp_path / "nowhere"}"\n'))
    with pytest.raises(DaemonStartError) as info:
        check_results_model(load_config(config, environ={}))
    assert info.value.code == 2 and "cannot tell whether the CAC model is validated" in str(info.value)
    config.write_text(_config_text(port, "[cac]\nenabled = false\n"))  # nothing scored, nothing returned
    check_results_model(load_config(config, environ={}))


def test_the_research_override_starts_the_daemon(tmp_path: Path) -> None:
    daemon = ConnectorProcess(tmp_path / "site", pacs__host="127.0.0.1", pacs__port=free_port(),
                              pacs__ae_title="HOSPPACS", results__return_to_pacs=True,
                              results__allow_unvalidated_model=True, http__enabled=False)
    with daemon:
        assert daemon.proc is not None and daemon.proc.poll() is None  # listening: it started
    assert daemon.proc.returncode == 0
    assert "return_to_pacs refused" not in daemon.log_path.read_text()
