"""What a dashboard password must not be: short, one of the commonest, or the user's own name.

Why a list and not character-class rules: guessers try the commonest passwords first, with the
usual decorations ("Summer2024!", "P@ssw0rd1"), and rules such as "one digit, one capital" push
people towards exactly those. So a password is refused when it is shorter than
:data:`MIN_LENGTH`, when it or its core (lower case, look-alike symbols read as letters, digits
and punctuation at either end removed, a word repeated) is in ``common_passwords.txt`` (bundled
with the package, a few hundred entries: the top of public lists of leaked passwords, plus the
words of a hospital imaging setting), when its core is the user's name, or when it uses fewer than
:data:`MIN_DISTINCT` different characters. A long passphrase of ordinary words passes.
"""

from __future__ import annotations

import functools
import string
from importlib import resources

MIN_LENGTH = 10
MAX_LENGTH = 1024
MIN_DISTINCT = 4
LIST_NAME = "common_passwords.txt"
_EDGES = string.digits + string.punctuation + string.whitespace
_SYMBOLS = str.maketrans({"@": "a", "$": "s", "!": "i", "|": "l", "+": "t"})
_DIGITS_I = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g"})
_DIGITS_L = str.maketrans({"1": "l"})


@functools.cache
def common_passwords() -> frozenset[str]:
    """The bundled list, lower case (``#`` starts a comment line)."""
    text = resources.files("connector.web").joinpath(LIST_NAME).read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _cores(password: str) -> set[str]:
    """The password as a guesser's list would hold it: plain, undecorated, de-leeted, un-repeated."""
    low = password.lower().strip()
    stripped = low.strip(_EDGES)
    symbols_first = low.translate(_SYMBOLS).strip(_EDGES)  # "$ecret123" -> "secret"
    tail_first = low.rstrip(_EDGES).translate(_SYMBOLS).strip(_EDGES)  # "$ummer2024!" -> "summer"
    found = {low, stripped, symbols_first, tail_first}
    for core in (stripped, symbols_first, tail_first):
        found.add(core.translate(_SYMBOLS).translate(_DIGITS_I))
        found.add(core.translate(_SYMBOLS).translate(_DIGITS_L).translate(_DIGITS_I))
    for core in list(found):
        for times in (2, 3, 4):
            unit, rest = divmod(len(core), times)
            if unit and not rest and core == core[:unit] * times:
                found.add(core[:unit].strip(_EDGES))
    found.discard("")
    return found


def password_problem(password: str, name: str = "") -> str | None:
    """Why ``password`` is refused (one line, never quoting it), or None when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"password must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"password must be at most {MAX_LENGTH} characters"
    if len(set(password)) < MIN_DISTINCT:
        return f"password must use at least {MIN_DISTINCT} different characters"
    cores = _cores(password)
    if name and ({name.lower(), name.lower().strip(_EDGES)} & cores):
        return "password must not be the user name"
    if cores & common_passwords():
        return "password is too common (it is on the list of the most used passwords, or one with digits or symbols added)"
    return None
