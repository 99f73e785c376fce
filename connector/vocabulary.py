"""The free-text vocabulary: the words a kept description may contain, and nothing else.

Data only. The de-identification engine's allow-list cleaner (:mod:`connector.deid.freetext`) and
the PHI guard's free-text check (:mod:`connector.phi_guard.freetext`) each apply it with their own
code, so a bug in one does not blind the other; they share only this word list.

Sources, all upper-cased: the shipped ``rules/vocabulary/*.txt`` (words of the DICOM code meanings
pydicom ships, built by ``rules/tools/build_vocabulary.py``, and a hand-kept curated list), plus the
site's ``[deid] extra_vocabulary`` and ``[deid] vocabulary_files``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path

from connector.shipped import shipped_rules_dir

SHIPPED_FILES = ("dicom-code-meanings.txt", "curated.txt")
_WORD = re.compile(r"^[A-Za-z]{1,40}$")


class VocabularyError(ValueError):
    """A vocabulary file or word is unusable (message names the file and line, never a patient value)."""


def word_problem(word: str) -> str | None:
    """Why ``word`` cannot be a vocabulary word, or None. Letters only: numbers, dates and codes are
    the cleaner's shape rules' business, and a word with digits could be an identifier."""
    if not _WORD.match(word):
        return "a vocabulary word is 1 to 40 letters A-Z (no digits, spaces or punctuation)"
    return None


def read_word_file(path: Path) -> frozenset[str]:
    """Words of a vocabulary file: whitespace-separated, ``#`` starts a comment."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VocabularyError(f"{path}: cannot read vocabulary file ({type(exc).__name__})") from None
    words: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        for word in line.split("#", 1)[0].split():
            problem = word_problem(word)
            if problem:
                raise VocabularyError(f"{path}:{number}: {problem}")
            words.add(word.upper())
    return frozenset(words)


@functools.lru_cache(maxsize=4)
def shipped_vocabulary(folder: Path | None = None) -> frozenset[str]:
    folder = folder or shipped_rules_dir() / "vocabulary"
    words: set[str] = set()
    for name in SHIPPED_FILES:
        words |= read_word_file(folder / name)
    return frozenset(words)


def load_vocabulary(extra_words: Iterable[str] = (), extra_files: Iterable[Path] = ()) -> frozenset[str]:
    """The shipped words plus the site's; raises :class:`VocabularyError` on any bad word or file."""
    words = set(shipped_vocabulary())
    for word in extra_words:
        problem = word_problem(word)
        if problem:
            raise VocabularyError(f"[deid] extra_vocabulary: {problem}")
        words.add(word.upper())
    for path in extra_files:
        words |= read_word_file(Path(path))
    return frozenset(words)
