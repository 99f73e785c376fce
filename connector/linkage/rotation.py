"""``rotate-key``: a new KEK, new data and index keys, every value re-encrypted in one transaction.

Order of events for a key file (crash-safe at every step):

1. the new KEK is written to ``site.key.next`` (0600, fsync'd);
2. one SQLite transaction re-encrypts all rows and replaces the keyring; it commits or not at all;
3. ``site.key.next`` is renamed over ``site.key`` and the retired key's bytes overwritten.

After a crash between 2 and 3 the next unlock finds the table opens with ``site.key.next`` and
finishes step 3. Before 2 commits, the old key still opens everything and ``.next`` is ignored.
"""

from __future__ import annotations

import logging
import secrets

from connector.linkage.crypto import KEY_LEN
from connector.linkage.errors import LinkageKeyError
from connector.linkage.keyring import keyring_values
from connector.linkage.keys import (
    MIN_PASSPHRASE_LEN,
    ScryptParams,
    derive_passphrase_kek,
    destroy_key_file,
    next_key_path,
    promote_next_key_file,
    write_next_key_file,
)
from connector.linkage.provider import LinkageProvider
from connector.linkage.store import RotationResult

log = logging.getLogger(__name__)


def rotate_key(
    provider: LinkageProvider,
    *,
    to_kind: str | None = None,
    new_passphrase: str | None = None,
    scrypt_log_n: int = 17,
) -> RotationResult:
    """Rotate to a new KEK of ``to_kind`` (default: the current kind).

    The provider must already be open (which proves the current key). For a passphrase,
    ``new_passphrase`` is required. Raises LinkageError subclasses; on any failure the table and
    the key file are unchanged.
    """
    current = provider.keyring()
    kind = to_kind or current.kek_kind
    key_file = provider.paths.key_file
    scrypt: ScryptParams | None = None
    if kind == "passphrase":
        if not new_passphrase or len(new_passphrase) < MIN_PASSPHRASE_LEN:
            raise LinkageKeyError(f"the new passphrase must be at least {MIN_PASSPHRASE_LEN} characters")
        scrypt = ScryptParams.fresh(scrypt_log_n)
        new_kek = derive_passphrase_kek(new_passphrase, scrypt)
    elif kind == "file":
        new_kek = secrets.token_bytes(KEY_LEN)
        key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_next_key_file(key_file, new_kek)
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    try:
        result = provider.store.rotate(lambda keys: keyring_values(keys, new_kek, kind, scrypt))
    except BaseException:
        if kind == "file":
            next_key_path(key_file).unlink(missing_ok=True)
        raise
    if kind == "file":
        promote_next_key_file(key_file)
    elif current.kek_kind == "file":
        destroy_key_file(key_file)  # the table no longer needs it; a stale copy would only unlock old backups
    if kind == "passphrase":
        provider.kek_source.passphrase = new_passphrase
    record = provider.keyring()
    provider.audit("key.rotate", generation=result.generation, kek_kind=kind,
                   kek_fingerprint=record.kek_fingerprint, subjects=result.subjects, studies=result.studies)
    return result
