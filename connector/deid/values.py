"""Value transformations used by the rule actions: dummy values, UIDs, dates, ages, text cleaning.

Pure functions of (value, per-object context) so they can be tested one by one. None means "the
value cannot be transformed safely": the caller empties the element (fail closed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re

from pydicom.datadict import private_dictionary_VR
from pydicom.uid import UID_dictionary

DUMMY_TEXT = "ANONYMIZED"
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"})
BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "SH": 16, "TM": 14,
              "UI": 64, "ST": 1024}


def dummy_value(vr: str) -> object:
    """A VR-appropriate value that carries no information (PS3.15 action D)."""
    if vr in _TEXT_VRS:
        return DUMMY_TEXT
    return {
        "AS": "000D",
        "DA": "19000101",
        "DT": "19000101000000",
        "TM": "000000",
        "DS": "0",
        "IS": "0",
        "UR": "http://anonymized.invalid",
    }.get(vr, 0 if vr in NUMERIC_VRS else b"\x00\x00" if vr in BINARY_VRS else DUMMY_TEXT)


def fit(value: str, vr: str) -> str:
    """Trim a string to the VR's maximum length (cleaning and templates may lengthen values)."""
    limit = MAX_LENGTH.get(vr)
    return value[:limit] if limit and len(value) > limit else value


_NUMBER_STRING = re.compile(rb"^[0-9+\-.eE \\]*$")
_BINARY_NUMBER_SIZE = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8}


def kept_private_vr(vr: str | None, tag: int, creator: str, value: bytes | None = None) -> bool:
    """Whether a private element listed as safe may really be kept.

    With its VR in the data (explicit VR): any VR but the opaque ones (OB, OW, UN, ...) and SQ.
    Untyped (implicit VR, or UN): only when pydicom's private dictionary says it is a number and the
    bytes really are one (a DS/IS string of digits, or whole binary numbers); an untyped value
    could otherwise be any text or blob, and nobody can say what it contains.
    """
    if vr not in (None, "UN"):
        return vr not in BINARY_VRS and vr != "SQ"
    try:
        known = private_dictionary_VR(tag, creator)
    except KeyError:
        return False
    if value is None:
        return False
    if known in ("DS", "IS"):
        return bool(_NUMBER_STRING.match(value))
    size = _BINARY_NUMBER_SIZE.get(known)
    return size is not None and len(value) % size == 0


# ---------------------------------------------------------------------------------------------
# UIDs


def is_well_known_uid(uid: str) -> bool:
    """SOP classes, transfer syntaxes, coding schemes: public constants, never identifying."""
    return uid in UID_dictionary


class UidMapper:
    """``2.25.`` + the integer of the first 128 bits of HMAC-SHA256(site secret, UID).

    Stable across restarts and machines of the same site (the secret is), unguessable without the
    secret (unlike an unsalted hash), at most 44 characters, and references remap alike.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the UID secret must be at least 16 bytes")
        self._secret = secret

    def __call__(self, uid: str) -> str:
        uid = uid.strip(" \x00")
        if not uid or is_well_known_uid(uid):
            return uid
        digest = hmac.new(self._secret, uid.encode("ascii", "replace"), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))


# ---------------------------------------------------------------------------------------------
# Dates and times

_DA_RE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_DT_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?((?:\d{2}){0,3}(?:\.\d{1,6})?)([+-]\d{4})?$")
_TM_RE = re.compile(r"^\d{2}(?::?\d{2}(?::?\d{2}(?:\.\d{1,6})?)?)?$")


def _shift(d: dt.date, days: int) -> dt.date | None:
    try:
        return d + dt.timedelta(days=days)
    except OverflowError:
        return None


def shift_da(value: str, days: int) -> str | None:
    """Shift a DA value by whole days; None when it is not a date."""
    v = value.strip(" \x00")
    if not v:
        return ""
    m = _DA_RE.match(v)
    if not m:
        return None
    try:
        d = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
    out = _shift(d, days)
    return out.strftime("%Y%m%d") if out and out.year >= 1 else None


def shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of a DT value; time, fraction and UTC offset stay as they were.

    Whole-day offsets and unchanged times keep every interval exact, time zones included.
    A value with only a year or a month is shifted from the first day of that period.
    """
    v = value.strip(" \x00")
    if not v:
        return ""
    m = _DT_RE.match(v)
    if not m:
        return None
    year, month, day, rest, tz = m.groups()
    if day is not None and month is None:
        return None
    try:
        d = dt.date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    out = _shift(d, days)
    if out is None or out.year < 1:
        return None
    head = out.strftime("%Y%m%d") if day else out.strftime("%Y%m") if month else out.strftime("%Y")
    return head + (rest or "") + (tz or "")


def valid_tm(value: str) -> bool:
    v = value.strip(" \x00")
    return not v or bool(_TM_RE.match(v))


# ---------------------------------------------------------------------------------------------
# Ages

_AS_RE = re.compile(r"^\s*(\d{1,4})\s*([DWMY]?)\s*$", re.IGNORECASE)  # lenient: devices write 4 digits too
_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}


def cap_age(value: str, max_years: int = 89) -> str | None:
    """Ages above ``max_years`` become ``(max_years + 1)Y`` (``090Y``); others are normalised."""
    v = value.strip(" \x00")
    if not v:
        return ""
    m = _AS_RE.match(v)
    if not m:
        return None
    number, unit = int(m.group(1)), m.group(2).upper()
    years = number * _UNIT_YEARS[unit]
    if years > max_years:
        return f"{max_years + 1:03d}Y"
    if number > 999:  # AS holds three digits: say it in years
        return f"{int(years):03d}Y"
    return f"{number:03d}{unit or 'Y'}"


# ---------------------------------------------------------------------------------------------
# Person names (the allow-list cleaner refuses them even where the vocabulary has the word)

_NAME_PART = re.compile(r"[^\W\d_]+")


def name_parts(person_name: str) -> list[str]:
    """Family, given and middle names of a PN value (prefixes and suffixes like MR, JR are not names)."""
    parts: list[str] = []
    for group in person_name.split("="):  # alphabetic, ideographic, phonetic
        components = group.split("^")[:3]
        for comp in components:
            parts.extend(_NAME_PART.findall(comp))
    return parts
