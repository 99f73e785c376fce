"""The site-held encrypted linkage table: pseudonym <-> patient, date offsets, study links.

Public entry points:

* :func:`open_identity_provider` (daemon start) -> :class:`LinkageProvider`, an
  :class:`~connector.deid.provider.IdentityProvider`.
* :func:`create_key_file` (``site-connector init``).
* :func:`open_linkage` with :class:`OpenOptions` (CLI and tools).

All failures raise :class:`LinkageError` subclasses whose messages never contain an identifier.
See ``docs/linkage.md`` for the key hierarchy and threat model.
"""

from connector.linkage.errors import (
    CorruptRowError,
    KeyFileError,
    KeyFileExistsError,
    KeyFilePermissionError,
    LinkageError,
    LinkageKeyError,
    LinkageStateError,
    MissingIdentifierError,
    PassphraseMissingError,
    UnknownPseudonymError,
    WrongKeyError,
)
from connector.linkage.keys import create_key_file
from connector.linkage.provider import LinkageProvider, OpenOptions, open_identity_provider, open_linkage
from connector.settings.linkage import LinkageConfig
from connector.linkage.paths import default_key_path, resolved_paths
from connector.linkage.store import LinkedSubject, StudyConflictError, SubjectIdentifiers

__all__ = [
    "CorruptRowError",
    "KeyFileError",
    "KeyFileExistsError",
    "KeyFilePermissionError",
    "LinkageConfig",
    "LinkageError",
    "LinkageKeyError",
    "LinkageProvider",
    "LinkageStateError",
    "LinkedSubject",
    "MissingIdentifierError",
    "OpenOptions",
    "PassphraseMissingError",
    "StudyConflictError",
    "SubjectIdentifiers",
    "UnknownPseudonymError",
    "WrongKeyError",
    "create_key_file",
    "default_key_path",
    "resolved_paths",
    "open_identity_provider",
    "open_linkage",
]
