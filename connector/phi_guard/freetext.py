"""The guard's own check of retained free text: nothing it does not recognise may leave.

Written separately from the engine's cleaner (:mod:`connector.deid.freetext`) on purpose, with
its own rules of what a free-text element is and what a safe token looks like; the two share only
the word list (:mod:`connector.vocabulary`). A value fails when it holds

- a token outside the vocabulary (letters), a number of four or more digits, or a letters-and-
  digits token that is not a short technical code (``3mm``, ``B30f``, ``120kV``);
- anything shaped like a date, a time, a phone number, an e-mail address, a URL or a postcode;
- any name token of any person-name element of the study before de-identification.

``***`` (what the cleaner writes for what it removed) carries nothing and is ignored.
"""

from __future__ import annotations

import functools
import re

from pydicom.datadict import keyword_for_tag

# Which elements are free text: text VRs of attributes whose name says a person wrote them
# (descriptions, comments, labels, notes, history, findings, SR text); device and institution
# attributes (LensMake, InstitutionAddress) are not, and are for the identifier checks.
_TEXT_VRS = frozenset({"LO", "SH", "UC", "ST", "LT", "UT"})
_DESCRIPTIVE = re.compile(r"Description|Comment|Label|Text|Note|History|Impression|Diagnos|Allerg|Alert|"
                          r"Occupation|Reason|Finding|Interpretation|Remark|ProtocolName|ContrastBolusAgent")

_MONTHS = ("JANUARY|FEBRUARY|MARCH|APRIL|MAY|JUNE|JULY|AUGUST|SEPTEMBER|OCTOBER|NOVEMBER|DECEMBER|JAN|FEB|MAR|"
           "APR|JUN|JUL|AUG|SEP|SEPT|OCT|NOV|DEC|JANUAR|FEBRUAR|MAERZ|MÄRZ|MAI|JUNI|JULI|OKTOBER|DEZEMBER|"
           "JANVIER|FEVRIER|FÉVRIER|MARS|AVRIL|JUIN|JUILLET|AOUT|AOÛT|SEPTEMBRE|OCTOBRE|NOVEMBRE|DECEMBRE|DÉCEMBRE")
_SHAPES = {
    "date": re.compile(r"\d{1,4}\s?[-/.]\s?\d{1,2}\s?[-/.]\s?\d{1,4}|(?<!\d)\d{1,2}\s?/\s?\d{1,2}(?!\d)|"
                       rf"(?<![A-Z])(?:{_MONTHS})(?![A-Z])\.?[\s,./-]*\d|\d(?:ST|ND|RD|TH)?(?:\s+OF)?[\s,./-]*"
                       rf"(?:{_MONTHS})(?![A-Z])"),
    "time": re.compile(r"(?<!\d)\d{1,2}\s?[:H]\s?\d{2}(?!\d)"),
    "digits": re.compile(r"\d{4}"),
    "phone": re.compile(r"\d(?:[\s().+-]*\d){6}"),
    "email": re.compile(r"@"),
    "url": re.compile(r"://|WWW\.|\.(?:COM|ORG|NET|EDU|GOV|NHS|UK|DE|FR|NL|IO)(?![A-Z])"),
    "postcode": re.compile(r"(?<![A-Z0-9])[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}(?![A-Z])"  # UK
                           r"|(?<![A-Z0-9])[A-Z]\d[A-Z]\s?\d[A-Z]\d"),  # Canada
}
_TOKENS = re.compile(r"[^\W_]+")
_CODE = re.compile(r"(?:[A-Z]{1,4})?(?:\d{1,3}[A-Z]{1,4}){1,2}(?:\d{1,3})?|[A-Z]{1,4}\d{1,3}")


_DEVICE = re.compile(r"Device|Detector|Station|Manufacturer|Lens|Camera|Equipment|Gantry|Generator|Coil|"
                     r"Transducer|Cassette|Plate|Software|Serial|Tube|Collimator|Grid|Source")


@functools.lru_cache(maxsize=4096)
def is_free_text(tag: int, vr: str, device_text: bool = True) -> bool:
    """Whether a standard element holds a description a person typed. ``device_text`` False: the
    profile retains device identity on purpose (PS3.15 option), so device labels are not checked."""
    if tag & 0x10000 or vr not in _TEXT_VRS:
        return False  # private: kept only when listed as safe, and never as text to read
    keyword = keyword_for_tag(tag) or ""
    if not device_text and _DEVICE.search(keyword):
        return False
    return bool(_DESCRIPTIVE.search(keyword))


def _token_ok(token: str, vocabulary: frozenset[str]) -> bool:
    if not token.isascii():
        return False
    if token.isalpha():
        return len(token) == 1 or token in vocabulary
    if token.isdigit():
        return len(token) <= 3
    return len(token) <= 8 and _CODE.fullmatch(token) is not None


def free_text_tokens(text: str) -> set[str]:
    """The upper-cased tokens of a value, as the check reads them."""
    return set(_TOKENS.findall(text.upper()))


def late_name_hits(seen_tokens: frozenset[str], names: frozenset[str]) -> bool:
    """Whether free text checked before all of a study's person names were known holds one of them."""
    return not seen_tokens.isdisjoint(names)


def free_text_problem(text: str, vocabulary: frozenset[str], names: frozenset[str]) -> str | None:
    """The kind of problem in one retained free-text value, or None when every part is known safe."""
    upper = text.upper()
    for kind, pattern in _SHAPES.items():
        if pattern.search(upper):
            return f"free-text-{kind}"
    for token in _TOKENS.findall(upper):
        if token in names:
            return "name"
        if not _token_ok(token, vocabulary):
            return "free-text-unknown-word"
    return None
