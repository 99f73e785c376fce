"""How one row's identifying columns are sealed: AES-256-GCM with the row bound in as associated data.

A row moved to another pseudonym or study, or a column swapped for another's, fails to decrypt
(:class:`~connector.linkage.errors.CorruptRowError`) instead of reading as someone else's value.
"""

from __future__ import annotations

from connector.linkage.crypto import DecryptionFailed, FieldCipher, blind_index, build_ad
from connector.linkage.errors import CorruptRowError
from connector.linkage.keys import KeySet


class RowCipher:
    """An immutable snapshot of one key generation: blind indexes, and each column encrypted with its row bound in."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.cipher = FieldCipher(keys.data_key)

    def patient_index(self, patient_id: str, issuer: str) -> bytes:
        return blind_index(self.keys.index_key, "patient", patient_id, issuer)

    def study_index(self, original_uid: str) -> bytes:
        return blind_index(self.keys.index_key, "study", original_uid)

    def enc_subject(self, column: str, value: str, pseudonym: str, bidx: bytes) -> bytes:
        return self.cipher.encrypt(value, build_ad("subjects", column, pseudonym, bidx))

    def dec_subject(self, column: str, blob: bytes, pseudonym: str, bidx: bytes) -> str:
        try:
            return self.cipher.decrypt(blob, build_ad("subjects", column, pseudonym, bytes(bidx)))
        except DecryptionFailed:
            raise CorruptRowError("subjects", column, pseudonym) from None

    def enc_study(self, column: str, value: str, deid_uid: str, pseudonym: str) -> bytes:
        return self.cipher.encrypt(value, build_ad("studies", column, deid_uid, pseudonym))

    def dec_study(self, column: str, blob: bytes, deid_uid: str, pseudonym: str) -> str:
        try:
            return self.cipher.decrypt(blob, build_ad("studies", column, deid_uid, pseudonym))
        except DecryptionFailed:
            raise CorruptRowError("studies", column, deid_uid) from None
