"""The ``[deid]`` configuration section.

```toml
[deid]
rules = ["registry-default.yaml", "/etc/site-connector/site-overrides.yaml"]
```

``rules`` empty (the default) means the shipped ``rules/registry-default.yaml``. Entries are loaded
in order, like includes: a later file overrides an earlier one at the same level of precedence.
A bare name is looked up next to the configuration file, then among the shipped rule files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from connector.config_fields import check, setting

if TYPE_CHECKING:
    from connector.config import Config


@dataclass(frozen=True)
class DeidConfig:
    rules: list[Path] = setting(
        [], check(lambda v: all(str(p).endswith((".yaml", ".yml")) for p in v), "every entry must be a .yaml file"),
        doc="de-identification rule files, later ones override earlier; empty = the shipped registry-default.yaml",
    )


def rule_paths(config: Config) -> list[Path]:
    """The configured rule files, relative names resolved against the configuration file's folder."""
    from connector.deid.profile import default_rules_path, resolve_rule_path

    if not config.deid.rules:
        return [default_rules_path()]
    source = Path(config.source)
    base = source.parent if source.suffix == ".toml" and source.exists() else None
    return [resolve_rule_path(p, base) for p in config.deid.rules]
