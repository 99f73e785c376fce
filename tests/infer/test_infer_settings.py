"""The [cac] config section: defaults, TOML, environment overrides and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import ConfigError, load_config
from connector.infer.runner import CacRunner, choose_providers


def test_defaults_use_the_bundled_model_and_automatic_providers() -> None:
    cac = load_config(None, environ={}).cac
    assert cac.enabled and cac.model_dir is None and cac.providers == []
    assert (cac.min_slice_thickness_mm, cac.max_slice_thickness_mm) == (2.0, 5.0)


def test_toml_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "connector.toml"
    cfg.write_text('[cac]\nmodel_dir = "models/site-v2"\nbatch_size = 4\nproviders = ["CPUExecutionProvider"]\n')
    cac = load_config(cfg, environ={"SITE_CONNECTOR__CAC__MAX_SLICE_THICKNESS_MM": "6.5"}).cac
    assert cac.model_dir == (tmp_path / "models" / "site-v2").resolve()  # relative to the config file
    assert cac.batch_size == 4 and cac.providers == ["CPUExecutionProvider"]
    assert cac.max_slice_thickness_mm == 6.5


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("PROVIDERS", '["GPU"]', "must be one of"),
        ("BATCH_SIZE", "0", "between 1 and 256"),
        ("ENABLED", "maybe", "true or false"),
    ],
)
def test_bad_values_are_one_line_errors(key: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={f"SITE_CONNECTOR__CAC__{key}": value})
    assert problem in str(err.value) and "[cac]" in str(err.value)


def test_runner_from_root_config_uses_its_cac_section(tmp_path: Path) -> None:
    config = load_config(None, environ={"SITE_CONNECTOR__CAC__BATCH_SIZE": "3"})
    runner = CacRunner.from_config(config)
    assert runner.config.batch_size == 3
    assert runner.provider == choose_providers([])[0]
