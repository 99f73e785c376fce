"""The last check on every outgoing follow-up event: none of the patient's identifiers in any value.

It is deliberately independent of how the event was built: it only knows what the coordinator's
row said about the patient (patient ID, issuer, every cell of the columns that are not sent, such
as a name or birth date) and the patient's real dates, and looks for them again in the JSON about
to be queued. Free-text values (a cause, or a source where the site allows free text) are searched
for each identifier as a substring; the other values (pseudonym, event type, shifted date, source
code, opaque id) come from fixed vocabularies or are generated here: they must not *be* the patient
ID or issuer, and no date sent may be the real event date. That keeps a random pseudonym from being
refused for containing three letters of a surname, or a shifted date for falling by chance on the
real date of the index scan.
Findings are field names, never the matched value.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from connector.phi_guard.identifiers import birth_date_renderings

MIN_IDENTIFIER = 3  # characters; shorter values (sex "F", age "72") would match ordinary text
_LETTERS = re.compile(r"[^\W\d_]{3,}")


def _norm(value: str) -> str:
    if not value.isascii():
        value = unicodedata.normalize("NFKC", value)
    return " ".join(value.upper().split())


@functools.lru_cache(maxsize=4096)
def date_renderings(value: date) -> frozenset[str]:
    return frozenset(birth_date_renderings(value.strftime("%Y%m%d")))


@dataclass(frozen=True)
class RowIdentifiers:
    """What one input row says about its patient (never logged or printed)."""

    ids: frozenset[str]  # the patient ID and issuer
    texts: frozenset[str]  # those, and every cell of the columns that are not sent, and name parts
    dates: frozenset[str]  # renderings of every real date the row reveals (searched in free text)
    unshifted: frozenset[str]  # renderings of the real event date: a sent date must never be one

    def __repr__(self) -> str:
        return f"RowIdentifiers(texts={len(self.texts)}, dates={len(self.dates)})"


def row_identifiers(patient_id: str, issuer: str, extra_cells: Iterable[object], real_event: date | None,
                    other_real_dates: Iterable[date] = ()) -> RowIdentifiers:
    """``real_event``: the event's real date; ``other_real_dates``: e.g. the real index-scan date.

    A shifted date may by chance fall on another real date of the patient (the index scan, a birth
    date in another column): that is no leak, so structured dates are compared with the real event
    date only, while free text must contain none of them.
    """
    ids = {_norm(v) for v in (patient_id, issuer) if len(_norm(v)) >= MIN_IDENTIFIER}
    texts: set[str] = set(ids)
    dates: set[str] = set()
    for cell in extra_cells:
        if cell is None:
            continue
        if isinstance(cell, date):
            dates |= date_renderings(cell)
            continue
        text = _norm(str(cell))
        if len(text) >= MIN_IDENTIFIER:
            texts.add(text)
            texts.update(word for word in _LETTERS.findall(text))  # name parts: "DOE^JANE" -> DOE, JANE
            dates |= birth_date_renderings(text.replace("-", "").replace("/", "").replace(".", "")) \
                if len(text) in (8, 10) else set()
    unshifted = date_renderings(real_event) if real_event is not None else frozenset()
    for real in other_real_dates:
        dates |= date_renderings(real)
    return RowIdentifiers(frozenset(ids), frozenset(texts), frozenset(dates | unshifted), frozenset(unshifted))


def find_identifiers(event: dict[str, Any], ids: RowIdentifiers, text_fields: Iterable[str]) -> list[str]:
    """Names of the event's fields that contain (``text_fields``) or are (the rest) an identifier."""
    text_fields = frozenset(text_fields)
    bad = []
    for name, value in event.items():
        if not isinstance(value, str) or not value:
            continue
        text = _norm(value)
        if name in text_fields:
            if any(t in text for t in ids.texts) or any(d in value for d in ids.dates):
                bad.append(name)
        elif text in ids.ids or value in ids.unshifted:
            bad.append(name)
    return bad
