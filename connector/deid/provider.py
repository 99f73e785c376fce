"""What the de-identification engine needs from the site: pseudonyms, date offsets and a secret.

The engine never decides these itself. The site's encrypted linkage table
(:mod:`connector.linkage`) is the production implementation; tests may use
:class:`EphemeralIdentityProvider`. Keeping this a narrow protocol is what lets the offline
``deid`` command and the daemon produce identical output for the same patient.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PatientIdentity:
    """The identifying attributes of one patient as found in an incoming object (never logged)."""

    patient_id: str
    issuer: str = ""  # IssuerOfPatientID; "" when absent
    name: str = ""
    birth_date: str = ""  # DICOM DA as received
    sex: str = ""


@dataclass(frozen=True)
class Subject:
    """The registry-facing identity of a patient."""

    pseudonym: str  # e.g. "SITE01-7K3M9QX2"; becomes PatientName and PatientID
    date_offset_days: int  # added to every date of this patient (negative shifts into the past)


class IdentityProvider(Protocol):
    def subject_for(self, identity: PatientIdentity, *, study_date: str = "") -> Subject:
        """Return the patient's subject, creating it atomically on first sight.

        ``study_date`` (DICOM DA of the study being processed) lets the provider record the index
        scan date (the first study) for follow-up intervals.
        """

    def uid_secret(self) -> bytes:
        """The site secret keying the UID HMAC (32 bytes). Stable for the life of the site."""

    def record_study(
        self, pseudonym: str, original_study_uid: str, deidentified_study_uid: str, accession_number: str = ""
    ) -> None:
        """Remember which de-identified study came from which original one (site-only linkage)."""


class EphemeralIdentityProvider:
    """An in-memory provider for tests and dry runs. Same inputs give the same outputs in one process.

    Pseudonyms are random (never derived from the patient ID), as in production.
    """

    def __init__(self, site_id: str = "SITE01", secret: bytes | None = None, max_offset_days: int = 3650) -> None:
        self._site_id = site_id
        self._secret = secret or secrets.token_bytes(32)
        self._max_offset = max_offset_days
        self._subjects: dict[bytes, Subject] = {}
        self.studies: dict[str, tuple[str, str, str]] = {}
        self._lock = threading.Lock()

    def _index(self, identity: PatientIdentity) -> bytes:
        key = f"{identity.patient_id.strip().upper()}\x00{identity.issuer.strip().upper()}".encode()
        return hmac.new(self._secret, key, hashlib.sha256).digest()

    def subject_for(self, identity: PatientIdentity, *, study_date: str = "") -> Subject:
        with self._lock:
            idx = self._index(identity)
            if idx not in self._subjects:
                alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
                suffix = "".join(secrets.choice(alphabet) for _ in range(8))
                offset = -secrets.randbelow(self._max_offset) - 1
                self._subjects[idx] = Subject(f"{self._site_id}-{suffix}", offset)
            return self._subjects[idx]

    def uid_secret(self) -> bytes:
        return self._secret

    def record_study(
        self, pseudonym: str, original_study_uid: str, deidentified_study_uid: str, accession_number: str = ""
    ) -> None:
        with self._lock:
            self.studies[deidentified_study_uid] = (pseudonym, original_study_uid, accession_number)
