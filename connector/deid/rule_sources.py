"""Where the configured rule files and vocabulary files are: ``[deid]`` names resolved against the config file.

Why not in :mod:`connector.settings.deid`: the section is a leaf of plain values; finding the files
needs the whole configuration (its file's folder) and the shipped rules.
"""

from __future__ import annotations

from pathlib import Path

from connector.config import Config
from connector.deid.profile import default_rules_path, resolve_rule_path


def vocabulary_files(config: Config) -> list[Path]:
    """The configured vocabulary files, relative names resolved against the configuration file's folder."""
    source = Path(config.source)
    base = source.parent if source.suffix == ".toml" and source.exists() else Path.cwd()
    return [p if Path(p).is_absolute() else base / p for p in config.deid.vocabulary_files]


def rule_paths(config: Config) -> list[Path]:
    """The configured rule files, relative names resolved against the configuration file's folder."""
    if not config.deid.rules:
        return [default_rules_path()]
    source = Path(config.source)
    base = source.parent if source.suffix == ".toml" and source.exists() else None
    return [resolve_rule_path(p, base) for p in config.deid.rules]
