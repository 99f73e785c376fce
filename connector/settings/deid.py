"""The ``[deid]`` configuration section (where the configured files are: :mod:`connector.deid.rule_sources`).

```toml
[deid]
rules = ["registry-default.yaml", "/etc/site-connector/site-overrides.yaml"]
```

``extra_vocabulary`` and ``vocabulary_files`` add the site's own words to the free-text
vocabulary (letters only; files: one or more words a line, ``#`` comments). They are checked
when the configuration is loaded, so a bad word stops start-up with the key named.

``rules`` empty (the default) means the shipped ``rules/registry-default.yaml``. Entries are loaded
in order, like includes: a later file overrides an earlier one at the same level of precedence.
A bare name is looked up next to the configuration file, then among the shipped rule files.

``ocr`` chooses which de-identified images are read for burned-in text (names and MRNs drawn into
localizers and screen captures, which no tag check sees): ``at-risk-and-sample`` (localizers and
scouts, secondary and screen captures, classes the profile accepts that may carry text, and the
first, middle and last image of every other series), ``all``, or ``off``. See
:mod:`connector.phi_guard.burned_in_text` and docs/rules.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting
from connector.vocabulary import VocabularyError, read_word_file, word_problem

# Which de-identified images the PHI guard reads for burned-in text (see docs/rules.md).
OCR_SCOPES = ("at-risk-and-sample", "all", "off")
DEFAULT_OCR_SCOPE = "at-risk-and-sample"


@dataclass(frozen=True)
class DeidConfig:
    rules: list[Path] = setting(
        [], check(lambda v: all(str(p).endswith((".yaml", ".yml")) for p in v), "every entry must be a .yaml file"),
        doc="de-identification rule files, later ones override earlier; empty = the shipped registry-default.yaml",
    )
    extra_vocabulary: list[str] = setting(
        [], check(lambda v: all(word_problem(w) is None for w in v),
                  "every entry must be one word of 1 to 40 letters A-Z (no digits, spaces or punctuation)"),
        doc="the site's own words that kept descriptions may contain (added to rules/vocabulary/)",
    )
    vocabulary_files: list[Path] = setting(
        [], check(lambda v: all(_vocabulary_file_ok(p) for p in v),
                  "every entry must be a readable vocabulary file of letter-only words (see docs/rules.md)"),
        doc="files of the site's own words (one or more a line, # comments), relative to the config file",
    )
    ocr: str = setting(
        DEFAULT_OCR_SCOPE, check(lambda v: v in OCR_SCOPES, f"must be one of {', '.join(OCR_SCOPES)}"),
        doc="images read for burned-in text (OCR; a hit is quarantined): at-risk-and-sample = localizers, "
            "scouts, screen and secondary captures, accepted text-bearing classes, and the first, middle and "
            "last image of every other series; all; off",
    )


def _vocabulary_file_ok(path: Path) -> bool:
    if not Path(path).is_absolute():
        return True  # checked against the config file's folder when loaded (vocabulary_files())
    try:
        read_word_file(Path(path))
    except VocabularyError:
        return False
    return True
