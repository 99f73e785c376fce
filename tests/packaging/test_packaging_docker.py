"""The Dockerfile and the compose example, checked without building anything (fast, everywhere).

Checked here: the image's settings are ones the connector accepts, the files it copies exist, the
dependency layers come before the source, it runs as a non-root user with data and keys on
volumes, and its HEALTHCHECK command, run as is, passes against a healthy server and fails against
an unhealthy one. test_container.py builds the image and runs it for real with podman.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from connector.config import load_config
from connector.store.layout import SiteLayout
from connector.site_db import open_state
from connector.web.server import WebServer
from connector.web.site_context import SiteContext

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "packaging" / "Dockerfile"
COMPOSE = ROOT / "packaging" / "compose.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in final_stage():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_runs_as_non_root_with_volumes_and_a_slim_debian_base() -> None:
    stage = final_stage()
    base = next(r for w, r in instructions() if w == "ARG" and r.startswith("PYTHON_IMAGE="))
    assert base.endswith("-slim-bookworm")  # Debian 12 slim
    assert stage[0] == ("FROM", "${PYTHON_IMAGE}")
    users = [r for w, r in stage if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"useradd --system --uid (\d+)", DOCKERFILE.read_text()).group(1) != "0"
    volumes = json.loads(next(r for w, r in stage if w == "VOLUME"))
    env = image_env()
    assert env["SITE_CONNECTOR__STORAGE__DATA_DIR"] in volumes
    assert env["SITE_CONNECTOR__KEYS__DIR"] in volumes
    assert env["SITE_CONNECTOR__STORAGE__DATA_DIR"] != env["SITE_CONNECTOR__KEYS__DIR"]
    assert [r for w, r in stage if w == "ENTRYPOINT"] == ['["site-connector"]']


def test_copied_paths_exist_and_env_is_valid_config() -> None:
    for word, rest in instructions():
        if word == "COPY" and "--from" not in rest:
            for src in shlex.split(rest)[:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    env = image_env()
    config = load_config(None, environ={k: v for k, v in env.items() if k.startswith("SITE_CONNECTOR__")})
    assert str(config.storage.data_dir) == "/var/lib/site-connector"
    # the dashboard stays on loopback unless the operator says otherwise (never 0.0.0.0 silently,
    # which host networking would put on every interface of the server)
    assert "SITE_CONNECTOR__HTTP__HOST" not in env
    assert config.http.host == "127.0.0.1" and config.http.port == 8080
    # the model pip installs from pyproject's data-files (rules/ and models/ are in the build context)
    model_dir = env["SITE_CONNECTOR__CAC__MODEL_DIR"].replace("/opt/site-connector/share/", "share/")
    with open(ROOT / "pyproject.toml", "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    assert model_dir in data_files and all((ROOT / p).exists() for p in data_files[model_dir])


def test_dependency_layers_come_before_the_source() -> None:
    """A code change must not download every dependency again: pyproject.toml alone is copied before
    the dependencies' wheels are made, the source only after."""
    build = instructions()[:max(i for i, (word, _) in enumerate(instructions()) if word == "FROM")]
    copies = [rest for word, rest in build if word == "COPY"]
    assert copies[0] == "pyproject.toml ./"
    wheel_deps = next(i for i, (w, r) in enumerate(build) if w == "RUN" and "--wheel-dir /build/deps" in r)
    first_source = next(i for i, (w, r) in enumerate(build) if w == "COPY" and r.startswith("connector"))
    assert wheel_deps < first_source
    assert {"rules ./rules", "models ./models"} <= set(copies)  # pyproject's data-files
    text = DOCKERFILE.read_text()
    assert "rm -rf /var/lib/apt/lists/*" in text and "--no-cache-dir" in text


def _healthcheck_command() -> list[str]:
    rest = next(r for w, r in final_stage() if w == "HEALTHCHECK")
    assert "--interval=" in rest and "--timeout=" in rest
    return json.loads(rest[rest.index("CMD") + 3:].strip())


def test_healthcheck_command_against_a_real_server(tmp_path: Path) -> None:
    cmd = _healthcheck_command()
    assert cmd[0] == "python"
    state: dict[str, str | None] = {"scp": None}
    config = load_config(None, environ={"SITE_CONNECTOR__STORAGE__DATA_DIR": str(tmp_path / "data"),
                                        "SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES": "0",
                                        "SITE_CONNECTOR__HTTP__PORT": "0"})
    layout = SiteLayout.from_config(config)
    layout.ensure()
    store = open_state(layout.state_db)
    server = WebServer(SiteContext(config, store, layout, {"scp": lambda: state["scp"]}))
    server.start()
    try:
        env = {**os.environ, "SITE_CONNECTOR__HTTP__PORT": str(server.port)}
        run = [sys.executable, *cmd[1:]]
        assert subprocess.run(run, env=env, timeout=30, capture_output=True).returncode == 0
        state["scp"] = "DICOM port not listening"
        assert subprocess.run(run, env=env, timeout=30, capture_output=True).returncode != 0
    finally:
        server.stop()
        store.close()
    # and nothing listening at all
    assert subprocess.run([sys.executable, *cmd[1:]], env={**os.environ, "SITE_CONNECTOR__HTTP__PORT": "9"},
                          timeout=30, capture_output=True).returncode != 0


def test_compose_example() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"pacs", "connector", "registry"} <= set(services)
    assert "orthanc" in services["pacs"]["image"]
    connector = services["connector"]
    env = {k: str(v) for k, v in connector["environment"].items()}
    config = load_config(None, environ=env)  # every key is one the connector knows
    modalities = json.loads(services["pacs"]["environment"]["ORTHANC__DICOM_MODALITIES"])
    aet, host, port = modalities["connector"]
    assert (aet, port) == (config.dicom.ae_title, config.dicom.port) and host == "connector"
    assert services["pacs"]["environment"]["ORTHANC__DICOM_AET"] in config.dicom.allowed_ae_titles
    assert f"127.0.0.1:{config.http.port}:{config.http.port}" in connector["ports"]
    mounts = {v.split(":")[1] for v in connector["volumes"]}
    assert {"/var/lib/site-connector", "/var/lib/site-connector-keys"} <= mounts
    assert config.registry.url == "http://registry:8042"
    assert (ROOT / "packaging" / connector["build"]["dockerfile"].split("/")[-1]).exists()
