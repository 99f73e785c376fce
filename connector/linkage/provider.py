"""The production :class:`~connector.deid.provider.IdentityProvider`: the encrypted linkage table.

:func:`open_identity_provider` is what the daemon calls at start. It unlocks the keyring (refusing
loose key-file permissions, a missing or wrong passphrase, a wrong key file) before touching
anything, creates the table on first start, and returns a provider that is safe to share between
threads; worker processes each open their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.deid.provider import PatientIdentity, Subject
from connector.linkage.audit import AuditLog, AuditReport
from connector.linkage.errors import AuditLogError, LinkageKeyError, LinkageStateError
from connector.linkage.keyring import KeyringRecord, keyring_values, read_keyring, unlock, write_keyring
from connector.linkage.keys import MIN_PASSPHRASE_LEN, KekSource, KeySet, ScryptParams, derive_passphrase_kek
from connector.linkage.pseudonyms import normalise_pseudonym
from connector.linkage.paths import LinkagePaths, pseudonym_prefix, resolved_paths
from connector.linkage.database import (
    SCHEMA_VERSION,
    connect,
    create_db_file,
    ensure_schema,
    schema_version,
    transaction,
)
from connector.linkage.store import LinkageStore, LinkedSubject, SubjectIdentifiers, SubjectPolicy

if TYPE_CHECKING:
    from connector.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenOptions:
    """How to open the table. The daemon uses the defaults; CLI commands pass ``create=False``."""

    passphrase: str | None = None
    prompt: Callable[[str], str] | None = None
    create: bool = True
    role: str = "daemon"


class LinkageProvider:
    """Pseudonyms, date offsets, the UID secret and study links, backed by the linkage table."""

    def __init__(self, store: LinkageStore, audit: AuditLog, paths: LinkagePaths, source: KekSource, role: str) -> None:
        self.store = store
        self.audit_log = audit
        self.paths = paths
        self.kek_source = source
        self.role = role

    # -- IdentityProvider protocol ----------------------------------------------------------

    def subject_for(self, identity: PatientIdentity, *, study_date: str = "") -> Subject:
        subject, _created = self.store.get_or_create(identity, study_date)
        return Subject(subject.pseudonym, subject.date_offset_days)

    def uid_secret(self) -> bytes:
        return self.store.keys.uid_secret

    def record_study(
        self, pseudonym: str, original_study_uid: str, deidentified_study_uid: str, accession_number: str = ""
    ) -> None:
        self.store.record_study(pseudonym, original_study_uid, deidentified_study_uid, accession_number)

    # -- coordinator and follow-up access -----------------------------------------------------

    def lookup_patient(self, patient_id: str, issuer: str = "", *, audit: bool = True) -> LinkedSubject | None:
        """Pseudonym, date offset and index date for a patient, via the blind index (O(1)).

        Audited unless ``audit=False``; batch callers (follow-up import) pass False and record one
        :meth:`audit` entry for the batch instead.
        """
        result = self.store.find_by_patient(patient_id, issuer)
        if audit:
            self.audit("lookup.patient_id", found=result is not None,
                       pseudonym=result.pseudonym if result else None)
        return result

    def lookup_accession(self, accession: str, *, audit: bool = True) -> list[tuple[str, str]]:
        """(pseudonym, de-identified study UID) of the studies with this accession number; audited
        unless ``audit=False`` (a caller that writes its own entry)."""
        found = self.store.find_by_accession(accession)
        if audit:
            self.audit("lookup.accession", found=len(found))
        return found

    def study_uids_of(self, pseudonym: str) -> list[str]:
        """De-identified study UIDs of a pseudonym's studies (no identifier read: not audited)."""
        return self.store.study_uids_of(pseudonym)

    def name_tokens(self, pseudonym: str) -> frozenset[str]:
        """Words of the patient's name and IDs, for the follow-up text cleaner to refuse (a machine
        check: nothing is shown or sent, so it is not an audited read)."""
        return self.store.name_tokens(pseudonym)

    def lookup_pseudonym(self, pseudonym: str) -> SubjectIdentifiers | None:
        """The identifiers behind a pseudonym (to resolve discrepancies). Always audited, before reading."""
        canonical = normalise_pseudonym(pseudonym)
        prefix = self.store.policy.prefix
        if canonical and canonical.split("-", 1)[0].upper() == prefix.upper():
            canonical = prefix + "-" + canonical.split("-", 1)[1]  # typed in another case
        self.audit("lookup.pseudonym", pseudonym=canonical or "(malformed)")
        return self.store.find_by_pseudonym(canonical) if canonical else None

    def audit(self, action: str, **details: str | int | bool | None) -> int:
        return self.audit_log.append(action, role=self.role, **details)

    def verify_audit(self) -> AuditReport:
        return self.audit_log.verify()

    def keyring(self) -> KeyringRecord:
        return self.store.keyring()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> LinkageProvider:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def kek_source_for(config: Config, options: OpenOptions | None = None) -> KekSource:
    options = options or OpenOptions()
    paths = resolved_paths(config)
    return KekSource(
        key_file=paths.key_file,
        passphrase_env=config.linkage.passphrase_env,
        passphrase=options.passphrase,
        prompt=options.prompt,
    )


def _new_keyring(config: Config, source: KekSource) -> dict[str, object]:
    """Keyring values for a brand-new table, locked the way ``[linkage] key_source`` says."""
    keys = KeySet.generate(1)
    if config.linkage.key_source == "passphrase":
        passphrase = source.get_passphrase()
        if len(passphrase) < MIN_PASSPHRASE_LEN:
            raise LinkageKeyError(f"a new linkage passphrase must be at least {MIN_PASSPHRASE_LEN} characters")
        scrypt = ScryptParams.fresh(config.linkage.scrypt_log_n)
        return keyring_values(keys, derive_passphrase_kek(passphrase, scrypt), "passphrase", scrypt)
    return keyring_values(keys, source.file_kek(), "file", None)


def open_linkage(config: Config, options: OpenOptions | None = None) -> LinkageProvider:
    """Open (and on first start create) the linkage table; raises LinkageError subclasses.

    Key problems raise :class:`~connector.linkage.errors.LinkageKeyError` subclasses
    (KeyFilePermissionError, KeyFileError, PassphraseMissingError, WrongKeyError) before any file is
    created or changed.
    """
    options = options or OpenOptions()
    paths = resolved_paths(config)
    source = kek_source_for(config, options)
    created = False
    new_values: dict[str, object] | None = None
    if not paths.db.exists():
        if not options.create:
            raise LinkageStateError(f"no linkage table at {paths.db} (the daemon creates it on first start)")
        if paths.audit_log.exists() and paths.audit_log.stat().st_size > 0:
            raise LinkageStateError(
                f"the linkage table {paths.db} is missing but its audit log shows it existed; restore it from a "
                "backup ('site-connector linkage restore') instead of starting a new one"
            )
        new_values = _new_keyring(config, source)  # obtains (and checks) the KEK before creating anything
        create_db_file(paths.db)
    db = connect(paths.db, sync=config.storage.fsync)
    try:
        if schema_version(db) is None:  # brand new, or being created right now by another worker
            if not options.create:
                raise LinkageStateError(f"the linkage table {paths.db} is empty (the daemon creates it on first start)")
            with transaction(db, "IMMEDIATE"):
                if schema_version(db) is None or read_keyring(db) is None:
                    ensure_schema(db)
                    if read_keyring(db) is None:
                        write_keyring(db, new_values or _new_keyring(config, source), replace=False)
                        created = True
        version = schema_version(db)
        if version != SCHEMA_VERSION:
            raise LinkageStateError(f"the linkage table {paths.db} has schema version {version!r}, expected {SCHEMA_VERSION}")
        record = read_keyring(db)
    finally:
        db.close()
    if record is None:
        raise LinkageStateError(f"the linkage table {paths.db} has no keyring")
    keys, _kek = unlock(record, source, paths.db)
    policy = SubjectPolicy(pseudonym_prefix(config), config.linkage.pseudonym_length, config.linkage.max_date_offset_days)

    def unlocker(conn: Any) -> KeySet:
        current = read_keyring(conn)
        if current is None:
            raise LinkageStateError(f"the linkage table {paths.db} has no keyring")
        return unlock(current, source, paths.db)[0]

    store = LinkageStore(paths.db, keys, policy=policy, unlocker=unlocker, sync=config.storage.fsync)
    audit = AuditLog(paths.audit_log, keys.audit_key, anchor_get=store.audit_anchor, anchor_set=store.set_audit_anchor)
    provider = LinkageProvider(store, audit, paths, source, options.role)
    try:
        if created:
            provider.audit("keyring.create", kek_kind=record.kek_kind, kek_fingerprint=record.kek_fingerprint)
            log.info("linkage.table.created")
        provider.audit("keyring.unlock", kek_kind=record.kek_kind, generation=record.generation)
    except AuditLogError:
        if options.role != "daemon":
            provider.close()
            raise
        log.warning("linkage.audit.unlock_not_recorded")  # the daemon still starts; reads stay audited
    return provider


def open_identity_provider(config: Config, *, passphrase: str | None = None) -> LinkageProvider:
    """The daemon's entry point: the linkage table as the de-identification identity provider."""
    return open_linkage(config, OpenOptions(passphrase=passphrase, create=True, role="daemon"))
