"""What a model manifest records about how it was built, without naming the machine it was built on."""

from __future__ import annotations

import os
from pathlib import Path


def portable_argv(argv: list[str]) -> list[str]:
    """The command line as a manifest records it: absolute paths cut to their last part (issue 29: a
    bundled manifest named a path of the machine that trained it)."""
    return [Path(a).name if os.path.isabs(a) else a for a in argv]
