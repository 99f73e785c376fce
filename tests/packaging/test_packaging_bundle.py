"""The offline bundle end to end: build it (this needs PyPI or pip's cache), unpack it, install it
into a fresh virtual environment with ``--no-index``, and run the installed command.

About a minute on this machine with a warm pip cache. Network use is limited to the build step;
the install step would fail if any wheel were missing from the bundle.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_offline_bundle_installs_without_network(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    build = subprocess.run(["bash", str(ROOT / "packaging" / "build-offline-bundle.sh"), "--out", str(out)],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert build.returncode == 0, build.stderr[-3000:]
    (bundle,) = out.glob("site-connector-*.tar.gz")
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    top = tmp_path / "unpacked" / names[0].split("/")[0]
    wheels = sorted(p.name for p in (top / "wheelhouse").iterdir())
    assert any(w.startswith("site_connector-") for w in wheels)
    assert all(w.endswith(".whl") for w in wheels)  # nothing to compile on the server
    assert (top / "share" / "site-connector" / "rules" / "registry-default.yaml").exists()

    prefix = tmp_path / "opt" / "site-connector"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # no site-wide index or find-links: only the bundle
    install = subprocess.run([str(top / "install.sh"), "--prefix", str(prefix), "--python", sys.executable],
                             capture_output=True, text=True, timeout=600, env=env)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]

    exe = prefix / "bin" / "site-connector"
    helped = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "users" in helped.stdout and "run" in helped.stdout
    # the installed copy finds the shipped rules (no source tree next to it)
    probe = subprocess.run([str(prefix / "bin" / "python"), "-c",
                            "from connector.deid.profile import default_rules_path as p; import connector; "
                            "print(p().is_file(), connector.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    found, location = probe.stdout.split()
    assert found == "True" and location.startswith(str(prefix))

    # the bundled CAC model is found, or the installer says where it is and how to point at it
    model = subprocess.run([str(prefix / "bin" / "python"), "-c",
                            "from connector.infer.manifest import BUNDLED_MODEL_DIR as d; print(d.is_dir())"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    shared_model = prefix / "share" / "site-connector" / "models" / "cac-synthetic-v2" / "manifest.json"
    assert shared_model.is_file()
    assert model.stdout.strip() == "True" or "set [cac] model_dir" in install.stdout

    # a damaged bundle is refused before anything is installed
    wheel = next((top / "wheelhouse").glob("site_connector-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-10])
    damaged = subprocess.run([str(top / "install.sh"), "--prefix", str(tmp_path / "other")],
                             capture_output=True, text=True, timeout=120, env=env)
    assert damaged.returncode != 0 and "damaged" in damaged.stderr
    assert not (tmp_path / "other").exists()
