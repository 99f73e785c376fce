"""Parsing single cells: dates, event types, sources, retract flags.

Each parser returns None for a value it cannot read; the caller turns that into a row rejection
with a reason code. Ambiguous day/month orders (03/04/2021) are refused unless the site names its
format in ``[followup] date_formats``: guessing would silently move events by months.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from datetime import date, datetime

from connector.followup.events import EVENT_TYPES
from connector.settings.followup import FollowupConfig

_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$")
_COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TRUE = {"1", "y", "yes", "true", "x", "retract", "retracted", "withdraw", "withdrawn"}
_FALSE = {"", "0", "n", "no", "false"}


def parse_date(value: str | date | None, formats: list[str] | tuple[str, ...] = ()) -> date | None:
    """ISO 8601 (a time part is ignored), YYYYMMDD, a spreadsheet date cell, or one of ``formats``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = value.strip()
    match = _ISO.match(text) or _COMPACT.match(text)
    if match:
        try:
            return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        except ValueError:
            return None
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


_SEPARATORS = re.compile(r"[\s\-/]+")


@functools.lru_cache(maxsize=4096)  # cells of these columns come from a small vocabulary
def _word(text: str) -> str:
    """Lower case, NFKC, runs of spaces/hyphens/slashes as one underscore: "Heart-failure admission"."""
    text = unicodedata.normalize("NFKC", text).strip().casefold()
    return _SEPARATORS.sub("_", text)


def alias_table(config: FollowupConfig) -> dict[str, str]:
    """Normalised site word -> event type (aliases naming an unknown event type are ignored)."""
    table = {e: e for e in EVENT_TYPES}
    for entry in config.event_aliases:
        alias, _, target = entry.partition("=")
        target_word = _word(target)
        if target_word in EVENT_TYPES:
            table[_word(alias)] = target_word
    return table


def parse_event(value: str, aliases: dict[str, str]) -> str | None:
    return aliases.get(_word(value)) if value.strip() else None


def parse_retract(value: str) -> bool | None:
    """True / False for the usual spellings; None for anything else (the row is rejected, not guessed)."""
    word = _word(value)
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


def parse_source(value: str, config: FollowupConfig) -> str | None:
    """The source code sent; a blank cell gives the first configured source.

    Without ``"source"`` in ``allowed_free_text`` the value must be one of the configured codes
    (a source typed as free text could name a doctor or a ward). With it, the text is kept as typed.
    """
    text = " ".join(value.split())
    if not text:
        return config.sources[0]
    if "source" in config.allowed_free_text:
        return text
    word = _word(text)
    return word if word in config.sources else None
