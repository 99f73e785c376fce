"""The ``[linkage]`` configuration section: where the linkage table and its key live.

Defaults are chosen so that a fresh ``site-connector init`` works with no edits: the database sits
under the data folder, the key-encryption key is the key file ``init`` creates, and pseudonyms carry
the site id as prefix. Paths left unset are derived from other sections (see :func:`connector.linkage.paths.resolved_paths`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting

KEY_SOURCES = ("file", "passphrase")


@dataclass(frozen=True)
class LinkageConfig:
    db_path: Path | None = setting(None, doc="linkage database; unset = <data_dir>/linkage/linkage.db")
    key_file: Path | None = setting(None, doc="key-encryption key file; unset = <keys dir>/site.key (made by init)")
    audit_log: Path | None = setting(None, doc="tamper-evident audit log; unset = audit.log beside the database")
    key_source: str = setting(
        "file",
        check(lambda v: v in KEY_SOURCES, "must be 'file' or 'passphrase'"),
        doc="how a NEW linkage table is locked: 'file' or 'passphrase' (an existing table records its own)",
    )
    passphrase_env: str = setting(
        "SITE_CONNECTOR_PASSPHRASE",
        check(lambda v: bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v)), "must be an environment variable name"),
        doc="environment variable holding the passphrase of a passphrase-locked table",
    )
    scrypt_log_n: int = setting(
        17, check(lambda v: 14 <= v <= 22, "must be between 14 and 22"),
        doc="scrypt cost for new passphrases: N = 2**scrypt_log_n, r=8, p=1 (17 = 128 MiB, ~0.5 s)",
    )
    pseudonym_prefix: str | None = setting(
        None, check(lambda v: bool(re.fullmatch(r"[A-Za-z0-9]{1,16}", v)), "must be 1-16 letters or digits"),
        doc="pseudonym prefix; unset = the [site] id (pseudonyms look like SITE01-7K3M9QX2)",
    )
    pseudonym_length: int = setting(
        8, check(lambda v: 6 <= v <= 16, "must be between 6 and 16"), doc="random Crockford base32 characters per pseudonym"
    )
    max_date_offset_days: int = setting(
        3650, check(lambda v: 1 <= v <= 36500, "must be between 1 and 36500"),
        doc="each patient's dates move back by a random 1..N whole days (kept per patient)",
    )
