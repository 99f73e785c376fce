"""Where the files shipped beside the code live (rule files, the free-text vocabulary).

Neutral on purpose: the de-identification engine and the independent PHI guard both read shipped
data, and neither may import the other.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_RULES_DIR = "SITE_CONNECTOR_RULES_DIR"


def shipped_rules_dir() -> Path:
    """``$SITE_CONNECTOR_RULES_DIR``, the source tree's ``rules/``, or ``<prefix>/share/site-connector/rules``
    for an installed copy."""
    env = os.environ.get(ENV_RULES_DIR)
    if env:
        return Path(env)
    in_tree = Path(__file__).resolve().parents[1] / "rules"
    if in_tree.is_dir():
        return in_tree
    return Path(sys.prefix) / "share" / "site-connector" / "rules"
