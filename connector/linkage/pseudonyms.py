"""Pseudonyms and date offsets: random, never derived from anything about the patient.

A pseudonym is ``PREFIX-XXXXXXXX`` with a Crockford base32 suffix (no I, L, O, U: nothing to misread
when a coordinator types it). 8 characters give 32^8 ~ 1.1e12 values, so collisions are rare; the
store still retries on one. Offsets are whole days so times of day stay valid and intervals between
a patient's dates are preserved.
"""

from __future__ import annotations

import re
import secrets
from datetime import date, datetime

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE_ALIASES = str.maketrans({"I": "1", "L": "1", "O": "0"})
_PSEUDONYM_RE = re.compile(r"^([A-Za-z0-9]{1,16})-([0-9A-Za-z]{6,16})$")


def new_pseudonym(prefix: str, length: int = 8) -> str:
    return f"{prefix}-" + "".join(secrets.choice(CROCKFORD) for _ in range(length))


def normalise_pseudonym(text: str) -> str | None:
    """Canonical form of a typed pseudonym (case-insensitive, Crockford aliases), or None if malformed."""
    m = _PSEUDONYM_RE.match(text.strip())
    if not m:
        return None
    suffix = m.group(2).upper().translate(_DECODE_ALIASES)
    if any(c not in CROCKFORD for c in suffix):
        return None
    return f"{m.group(1)}-{suffix}"


def new_date_offset(max_days: int) -> int:
    """A random shift into the past, in whole days: -max_days .. -1."""
    return -(secrets.randbelow(max_days) + 1)


def parse_study_date(value: str) -> str | None:
    """A DICOM DA (``YYYYMMDD``; the old ``YYYY.MM.DD`` accepted) as canonical ``YYYYMMDD``, else None."""
    text = (value or "").strip().replace(".", "")
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return text


def shift_date(value: str, offset_days: int) -> str:
    """Apply a subject's offset to a ``YYYYMMDD`` date (used by follow-up events)."""
    parsed = datetime.strptime(value, "%Y%m%d").date()
    return date.fromordinal(parsed.toordinal() + offset_days).strftime("%Y%m%d")
