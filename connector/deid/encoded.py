"""Rule actions applied to an element's encoded value (bytes), without building a pydicom element.

Most of what the engine changes is strings (dates, UIDs, descriptions, names), and most elements
it sees are still encoded: decoding one into a DataElement, validating it and encoding it again
costs far more than the change itself. The string-level semantics are the same functions the
DataElement path uses (:mod:`connector.deid.values`); only decoding and encoding live here.
``NeedsPydicom`` means "this one is unusual, let pydicom do it".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from connector.deid.values import (
    BINARY_VRS,
    NUMERIC_VRS,
    cap_age,
    dummy_value,
    fit,
    shift_da,
    shift_dt,
    valid_tm,
)

if TYPE_CHECKING:
    from connector.deid.rulefile import Rule

REMOVE = object()  # sentinel: drop the element
ASCII_VRS = frozenset({"DA", "DT", "TM", "UI", "AS"})
TEXT_CLEAN_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT"})
_SINGLE_VALUED_TEXT = frozenset({"LT", "ST", "UT", "UR"})  # a backslash is text here, not a separator
_NUMERIC_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "SV": 8, "UV": 8}


class NeedsPydicom(Exception):
    """The encoded path cannot do this safely (charset, VR, structure): use pydicom's elements."""


class NotApplicable(Exception):
    """The action makes no sense for this VR (e.g. pseudonym on a number): a rule error."""


class ObjectContext(Protocol):
    pseudonym: str
    offset: int
    site: str

    def scrub(self, text: str) -> str: ...

    def note_removed(self, tag: int) -> None: ...


def ascii_function(vr: str, action: str, rule: Rule | None, ctx: ObjectContext,
                   uid: Callable[[str], str]) -> Callable[[str], str | None] | None:
    """The per-value function of an action on an ASCII-only VR (None: not such an action)."""
    if action in ("shift_date", "clean"):
        if vr == "DA":
            return lambda v: shift_da(v, ctx.offset)
        if vr == "DT":
            return lambda v: shift_dt(v, ctx.offset)
        if vr == "TM":
            return lambda v: v if valid_tm(v) else None  # whole-day offsets leave times unchanged
    if vr == "UI" and action in ("remap_uid", "dummy", "clean"):
        return uid
    if vr == "AS" and action in ("cap_age", "clean"):
        years = rule.max_years if rule is not None and action == "cap_age" else 89
        return lambda v: cap_age(v, years)
    return None


def replacement_text(rule: Rule | None, ctx: ObjectContext) -> str:
    assert rule is not None
    if rule.value is not None:
        return rule.value
    return (rule.template or "").format(pseudonym=ctx.pseudonym, site=ctx.site)


def _map_ascii(value: bytes, vr: str, fn: Callable[[str], str | None]) -> bytes:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise NeedsPydicom("non-ascii") from None
    stripped = text.rstrip(" \x00")
    if not stripped.strip(" \x00"):
        return value
    out = [fn(v) for v in stripped.split("\\")]
    new = "" if any(v is None for v in out) else "\\".join(out)  # type: ignore[arg-type]
    if new == stripped:
        return value
    data = new.encode("ascii")
    return data + (b"\x00" if vr == "UI" else b" ") if len(data) % 2 else data


def _decode(value: bytes, codec: str | None) -> str:
    if codec is None:  # several character sets (ISO 2022): escape sequences switch between them
        if not value.isascii() or b"\x1b" in value:
            raise NeedsPydicom("charset")
        return value.decode("ascii")
    try:
        return value.decode(codec)
    except (UnicodeDecodeError, LookupError):
        raise NeedsPydicom("charset") from None


def _encode(text: str, codec: str | None) -> bytes:
    try:
        data = text.encode("ascii" if codec is None else codec)
    except (UnicodeEncodeError, LookupError):
        raise NeedsPydicom("charset") from None
    return data + b" " if len(data) % 2 else data


def transform(value: bytes, vr: str, action: str, rule: Rule | None, ctx: ObjectContext,
              uid: Callable[[str], str], codec: str | None) -> bytes | object:
    """The new encoded value, ``value`` itself when nothing changes, or :data:`REMOVE`."""
    if action == "remove":
        return REMOVE
    if action == "keep":
        return value
    if action == "empty":
        return b""
    if action == "dummy":
        if vr == "UI":
            return _map_ascii(value, vr, uid)
        if vr in _NUMERIC_SIZES:
            return bytes(_NUMERIC_SIZES[vr])
        if vr in BINARY_VRS:
            return b"\x00\x00"
        return _encode(str(dummy_value(vr)), codec)
    if action in ("pseudonym", "replace"):
        if vr in NUMERIC_VRS or vr in BINARY_VRS:
            if action == "pseudonym" or vr not in ("DS", "IS"):
                raise NotApplicable("not-a-text-element")
        text = ctx.pseudonym if action == "pseudonym" else replacement_text(rule, ctx)
        return _encode(fit(text, vr), codec)
    fn = ascii_function(vr, action, rule, ctx, uid)
    if fn is not None:
        return _map_ascii(value, vr, fn)
    # clean, or a date/UID/age action on a VR it does not fit: clean by VR
    if vr in TEXT_CLEAN_VRS:
        text = _decode(value, codec).rstrip(" \x00")
        values = [text] if vr in _SINGLE_VALUED_TEXT else text.split("\\")
        cleaned = "\\".join(fit(ctx.scrub(v), vr) for v in values)
        return value if cleaned == text else _encode(cleaned, codec)
    if vr in NUMERIC_VRS:
        return value
    if vr in ("PN", "UR"):
        return b""  # a person's name or a link has no safe equivalent
    return REMOVE  # binary content cannot be inspected
