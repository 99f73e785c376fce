"""Configuration: typed, validated, overridable from the environment, one clear line on error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from connector.config import ConfigError, load_config, render_template

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connector.toml"
    path.write_text(text)
    return path


def test_defaults_are_usable_and_relative_paths_follow_the_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[storage]\ndata_dir = "data"\n'), environ={})
    assert cfg.dicom.port == 11112
    assert cfg.assemble.stable_seconds == 90
    assert cfg.storage.data_dir == (tmp_path / "data").resolve()
    assert cfg.key_dir == (tmp_path / "data" / "keys").resolve()


def test_environment_overrides_file_including_json_lists(tmp_path: Path) -> None:
    path = write(tmp_path, '[dicom]\nport = 4242\nallowed_ae_titles = ["A"]\n')
    cfg = load_config(path, environ={
        "SITE_CONNECTOR__DICOM__PORT": "11113",
        "SITE_CONNECTOR__DICOM__ALLOWED_AE_TITLES": '["PACS1", "PACS2"]',
        "SITE_CONNECTOR__STORAGE__FSYNC": "true",
    })
    assert cfg.dicom.port == 11113
    assert cfg.dicom.allowed_ae_titles == ["PACS1", "PACS2"]


@pytest.mark.parametrize(
    ("text", "env", "key", "words"),
    [
        ("[dicom]\nport = 70000\n", {}, "[dicom] port", "between 1 and 65535"),
        ('[dicom]\nport = "x"\n', {}, "[dicom] port", "integer"),
        ("[dicom]\nporrt = 1\n", {}, "[dicom] porrt", "unknown key"),
        ("[dicomm]\n", {}, "[dicomm]", "unknown section"),
        ('[dicom]\nallowed_hosts = ["not-an-ip"]\n', {}, "[dicom] allowed_hosts", "IP address"),
        ('[dicom]\nae_title = "WAY-TOO-LONG-AE-TITLE"\n', {}, "[dicom] ae_title", "1-16"),
        ("", {"SITE_CONNECTOR__DICOM__ALLOWED_AE_TITLES": "PACS1"}, "[dicom] allowed_ae_titles", "JSON list"),
        ("", {"SITE_CONNECTOR__DICOM__PORT": "eleven"}, "[dicom] port", "integer"),
    ],
)
def test_bad_values_name_source_key_and_problem(tmp_path: Path, text: str, env: dict[str, str], key: str,
                                                words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    message = str(info.value)
    assert key in message and words in message
    expected_source = next(iter(env)) if env else str(path)
    assert expected_source in message
    assert "\n" not in message


def test_cli_reports_config_error_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[dicom]\nport = 0\n")
    out = subprocess.run([sys.executable, "-m", "connector", "-c", str(path), "status"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "[dicom] port" in lines[0]


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[dicom]\nport = 0\n")
    env = {"SITE_CONNECTOR_CONFIG": str(path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "connector", "status"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and str(path) in out.stderr


def test_rendered_template_loads_and_lists_every_key(tmp_path: Path) -> None:
    text = render_template({"site": {"id": "AB12"}})
    cfg = load_config(write(tmp_path, text), environ={})
    assert cfg.site.id == "AB12"
    for key in ("ae_title", "port", "allowed_ae_titles", "allowed_hosts", "data_dir", "min_free_bytes",
                "stable_seconds", "path"):
        assert f"{key} =" in text


def test_fast_file_meta_is_byte_identical_to_pydicom() -> None:
    import io

    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import JPEGLSLossless
    from pynetdicom.dsutils import create_file_meta

    from connector.ingest.file_meta import encode_file_meta

    for sop_class, sop_inst, ts in [("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5.6.7.8.9", "1.2.840.10008.1.2.1"),
                                    ("1.2.840.10008.5.1.4.1.1.128", "2.25.1234567890123", JPEGLSLossless)]:
        ref = io.BytesIO()
        write_file_meta_info(ref, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_inst,
                                                   transfer_syntax=ts))
        assert encode_file_meta(sop_class, sop_inst, ts) == ref.getvalue()


def test_service_example_config_loads_and_lists_every_key() -> None:
    import dataclasses
    import typing

    from connector.config import Config

    path = ROOT / "service" / "connector.example.toml"
    cfg = load_config(path, environ={})
    assert cfg.dicom.allowed_ae_titles == ["HOSPITALPACS"]
    text = path.read_text()
    hints = typing.get_type_hints(Config)
    for section in (f for f in dataclasses.fields(Config) if f.name != "source"):
        assert f"[{section.name}]" in text, section.name
        for key in dataclasses.fields(hints[section.name]):
            assert f"{key.name} =" in text, f"[{section.name}] {key.name} missing from the example"
