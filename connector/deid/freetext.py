"""Free text cleaned by allow-list: a token stays only when it is known to be safe.

A deny-list (remove the identifiers we know of) cannot be made safe: a name, address or phone
number we were never told about passes. Here every token is replaced by ``***`` unless it is

- a word of the vocabulary (:mod:`connector.vocabulary`), or a single letter;
- a number of at most three digits (``120``, ``0.625`` is ``0``, ``.``, ``625``);
- a technical shape: at most two runs of at most three digits mixed with short runs of letters
  (``3mm``, ``120kV``, ``B30f``, ``Tc99m``, ``3i24s``), eight characters at most;

and never when it is one of this study's known identifiers (name parts, IDs), whatever the
vocabulary says. Before tokens are looked at, whole spans shaped like a date (numeric, with month
names, ISO), a time, a phone number or any run of 7+ digits with separators, an e-mail address, a
URL or a postcode are replaced, so that ``12/03/2024`` cannot pass as three small numbers.

The PHI guard checks the result again with its own code (:mod:`connector.phi_guard.freetext`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

REDACTED = "***"

_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
          r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?|januar|februar|m(?:ä|ae)rz|mai|juni|juli|oktober|dezember|"
          r"janv(?:ier)?|f(?:é|e)vr(?:ier)?|mars|avril|juin|juil(?:let)?|ao(?:û|u)t|sept(?:embre)?|octobre|"
          r"novembre|d(?:é|e)c(?:embre)?)\.?")
_FORBIDDEN_SPANS = [
    # dates: 2024-03-12, 12/03/2024, 12.03.24, 3/12, 20240312 (also caught as a long number)
    r"\d{1,4}\s?[-/.]\s?\d{1,2}\s?[-/.]\s?\d{1,4}",
    r"(?<!\d)\d{1,2}\s?/\s?\d{1,2}(?!\d)",
    # dates with month names: 12 Mar 2024, 12-MAR-2024, March 12, 2024, 12th of March, Mar 2024
    rf"\d{{1,2}}(?:st|nd|rd|th)?(?:\s+of)?[\s./-]*{_MONTH}(?:[\s.,/-]*\d{{2,4}})?",
    rf"(?<![A-Za-z]){_MONTH}[\s,./-]*\d{{1,2}}(?:st|nd|rd|th)?(?:[\s,./-]+\d{{2,4}})?",
    rf"(?<![A-Za-z]){_MONTH}[\s,./-]*\d",
    # times: 10:30, 10:30:15, 10h30
    r"(?<!\d)\d{1,2}\s?[:h]\s?\d{2}(?::\d{2})?(?!\d)",
    # e-mail addresses and URLs
    r"[\w.+-]+\s?@\s?[\w-]+(?:\.[\w-]+)*",
    r"(?<![A-Za-z0-9])(?:https?|ftp|file)://\S+",
    r"(?<![A-Za-z0-9])www\.\S+",
    r"@|://",  # what is left of an address once its words are gone still says "address"
    r"(?<![A-Za-z0-9])[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov|int|mil|info|biz|io|nhs|uk|us|ca|au|de|fr|nl|it|es|ch|be|at|se|"
    r"no|dk|fi|jp|cn|in|br)(?![A-Za-z0-9])",
    # any run of 4 or more digits (IDs, years, ZIP codes, parts of phone numbers)
    r"\d{4,}",
    # postcodes: UK (SW1A 1AA), Canada (K1A 0B1), US ZIP+4 (caught above), Dutch (1234 AB, digits above)
    r"(?<![A-Za-z0-9])[A-Za-z]{1,2}\d[A-Za-z\d]?\s*\d[A-Za-z]{2}(?![A-Za-z])",
    r"(?<![A-Za-z0-9])[A-Za-z]\d[A-Za-z]\s?\d[A-Za-z]\d",
]
# Each shape is searched on its own: in one alternation an early match would hide an overlapping one.
_SPANS = tuple(re.compile(p, re.IGNORECASE) for p in _FORBIDDEN_SPANS)
# A phone number: digits with separators, forbidden once it holds 7 or more digits (555-0199, +1 555
# 867 5309, (555) 867-5309, 0171 946 0958); fewer digits are measurements such as "3 x 3.75".
_PHONE = re.compile(r"[+(]?\d[\d\s().+-]{4,}\d")
_DIGIT = re.compile(r"\d")
_TOKEN = re.compile(r"[^\W_]+")
_NUMBER = re.compile(r"^\d{1,3}$")
_TECHNICAL = re.compile(r"^(?=.{2,8}$)[A-Za-z]{0,4}\d{1,3}[A-Za-z]{0,4}(?:\d{1,3}[A-Za-z]{0,4})?$")
_REDACTED_RUN = re.compile(r"\*\*\*(?:[\s,;:/.()-]*\*\*\*)+")


def forbidden_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, merged (start, end) spans of ``text`` shaped like a date, time, phone number, long
    number, e-mail address, URL or postcode."""
    spans = [m.span() for pattern in _SPANS for m in pattern.finditer(text)]
    spans += [m.span() for m in _PHONE.finditer(text) if len(_DIGIT.findall(m.group())) >= 7]
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


@dataclass
class CleanStats:
    """What the cleaner did in one object: counts only, never values (for the privacy report)."""

    tokens_replaced: int = 0
    spans_replaced: int = 0
    values_cleaned: int = 0


class AllowListCleaner:
    """Cleans free text against a vocabulary. One per object (it carries the object's deny set and
    counts); the vocabulary is shared and never copied."""

    __slots__ = ("_deny", "_vocabulary", "stats")

    def __init__(self, vocabulary: frozenset[str], deny: Iterable[str] = ()) -> None:
        self._vocabulary = vocabulary
        self._deny = frozenset(d.upper() for d in deny if d)
        self.stats = CleanStats()

    def keeps(self, token: str) -> bool:
        """Whether one token (letters and digits only) may stay."""
        upper = token.upper()
        if upper in self._deny:
            return False
        if token.isascii() and token.isalpha():
            return len(token) == 1 or upper in self._vocabulary
        if token.isdigit():
            return bool(_NUMBER.match(token)) and token.isascii()
        return token.isascii() and bool(_TECHNICAL.match(token))

    def clean(self, text: str) -> str:
        """``text`` with every span and token that is not known to be safe replaced by ``***``."""
        if not text or text.isspace():
            return text
        self.stats.values_cleaned += 1
        # Replacing a span changes what its neighbours touch ("0X00Xa" after a phone number is a
        # postcode once the number is gone), so shapes are looked for again until none is left.
        for _round in range(8):
            spans = forbidden_spans(text)
            if not spans:
                break
            out: list[str] = []
            last = 0
            for start, end in spans:
                out.append(text[last:start])
                out.append(REDACTED)
                self.stats.spans_replaced += 1
                last = end
            out.append(text[last:])
            text = "".join(out)
        cleaned = self._tokens(text)
        return _REDACTED_RUN.sub(REDACTED, cleaned) if REDACTED in cleaned else cleaned

    def _tokens(self, text: str) -> str:
        def replace(m: re.Match[str]) -> str:
            if self.keeps(m.group()):
                return m.group()
            self.stats.tokens_replaced += 1
            return REDACTED

        return _TOKEN.sub(replace, text)
