"""Building blocks for the typed config sections of :mod:`connector.settings`.

Each section (e.g. :mod:`connector.settings.deid`) is a frozen dataclass whose fields use
:func:`setting`; :mod:`connector.config` validates them generically.
Supported field types: str, int, float, bool, Path, ``X | None`` and ``list[X]``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any

Validator = Callable[[Any], "str | None"]


def check(predicate: Callable[[Any], bool], message: str) -> Validator:
    """A validator: returns ``message`` when ``predicate(value)`` is false."""
    return lambda value: None if predicate(value) else message


def setting(default: Any, validator: Validator | None = None, doc: str = "", **kw: Any) -> Any:
    """A dataclass field with an optional validator and a one-line ``doc`` (shown in generated configs)."""
    metadata = {"check": validator, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no control chars


def valid_ae(value: str) -> bool:
    return bool(_AE_RE.match(value)) and value.strip() != ""


def valid_host_entry(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
        return True
    except ValueError:
        return False
