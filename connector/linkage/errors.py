"""Exceptions of the linkage table.

Every message names the problem and, where useful, a file path, a table/column or a pseudonym, but
never a patient identifier: these texts end up in logs, systemd journals and support tickets.
Exceptions raised while handling cryptographic failures are re-raised ``from None`` so that no
library context (which could quote inputs) rides along.
"""

from __future__ import annotations


class LinkageError(Exception):
    """Base class: anything that stops the linkage table from being used safely."""


class LinkageKeyError(LinkageError):
    """The key-encryption key cannot be obtained or is not acceptable. The daemon must not start."""


class KeyFileError(LinkageKeyError):
    """The key file is missing, malformed, or its permissions are too loose."""


class KeyFileExistsError(KeyFileError, FileExistsError):
    """``create_key_file`` refuses to overwrite an existing key."""


class KeyFilePermissionError(KeyFileError):
    """The key file (or its folder) is accessible to group or others."""


class PassphraseMissingError(LinkageKeyError):
    """The table is passphrase-locked and no passphrase was supplied."""


class WrongKeyError(LinkageKeyError):
    """The supplied key or passphrase does not unlock this table (nothing was changed)."""


class LinkageStateError(LinkageError):
    """The linkage files are in a state that needs an operator (missing database, bad schema, ...)."""


class MissingIdentifierError(LinkageError):
    """An incoming object lacks the patient ID needed to link it; it must not get a subject."""


class UnknownPseudonymError(LinkageError):
    """A study was recorded for a pseudonym the table does not hold."""


class CorruptRowError(LinkageError):
    """A stored value failed authentication: tampered, damaged, or swapped from another row.

    Only that row is affected; the caller decides whether to skip it (export, check) or stop.
    """

    def __init__(self, table: str, column: str, row_ref: str) -> None:
        self.table, self.column, self.row_ref = table, column, row_ref
        super().__init__(f"linkage row failed authentication: {table}.{column} of row {row_ref}")


class AuditLogError(LinkageError):
    """The audit log could not be written; the operation it would have recorded was not done."""


class BackupError(LinkageError):
    """A backup file is malformed, damaged, or not for this key."""
