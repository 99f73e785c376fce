"""The linkage table's files for a configuration: ``[linkage]`` paths, or defaults from other sections.

Why here and not in :mod:`connector.settings.linkage`: the defaults come from ``[storage]``,
``[keys]`` and ``[site]``, so they need the whole configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from connector.config import Config
from connector.settings.linkage import LinkageConfig


@dataclass(frozen=True)
class LinkagePaths:
    db: Path
    key_file: Path
    audit_log: Path


def resolved_paths(config: Config) -> LinkagePaths:
    """The concrete files of the linkage table for ``config`` (unset settings filled with defaults)."""
    lk: LinkageConfig = config.linkage
    db = lk.db_path if lk.db_path is not None else config.storage.data_dir / "linkage" / "linkage.db"
    key_file = lk.key_file if lk.key_file is not None else config.key_dir / "site.key"
    audit = lk.audit_log if lk.audit_log is not None else db.parent / "audit.log"
    return LinkagePaths(db=Path(db), key_file=Path(key_file), audit_log=Path(audit))


def pseudonym_prefix(config: Config) -> str:
    return config.linkage.pseudonym_prefix or config.site.id


def default_key_path(config: Config) -> Path:
    """The key file ``site-connector init`` should create for ``config``."""
    return resolved_paths(config).key_file
