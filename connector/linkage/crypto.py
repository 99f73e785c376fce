"""Field encryption, blind indexes and key wrapping for the linkage table.

Why these choices:

* AES-256-GCM with a fresh random 96-bit nonce per value: authenticated, fast, and with ~10^6
  values per key far below the random-nonce collision bound.
* Associated data binds every ciphertext to its table, column and row (pseudonym, and for subjects
  the blind index too), so a value copied into another row, column or table fails to decrypt
  instead of silently re-linking a patient.
* Plaintexts are padded to a multiple of 32 bytes so ciphertext length reveals little about names.
* The blind index is HMAC-SHA256 of the *normalised* patient ID and issuer under its own key: equal
  inputs give equal indexes (O(1) lookup, UNIQUE constraint) without anything reversible on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import unicodedata

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_LEN = 32
NONCE_LEN = 12
_FIELD_VERSION = b"\x01"
_PAD_BLOCK = 32
_AD_DOMAIN = b"site-connector/linkage/v1"


class DecryptionFailed(Exception):
    """Authentication failed (wrong key, tampered or moved value). Carries no data."""


def build_ad(*parts: str | bytes) -> bytes:
    """Unambiguous associated data: a domain label then length-prefixed parts."""
    out = [_AD_DOMAIN]
    for part in parts:
        raw = part.encode() if isinstance(part, str) else bytes(part)
        out.append(len(raw).to_bytes(4, "big") + raw)
    return b"".join(out)


def _pad(data: bytes) -> bytes:
    padded_len = (len(data) // _PAD_BLOCK + 1) * _PAD_BLOCK
    return data + b"\x80" + b"\x00" * (padded_len - len(data) - 1)


def _unpad(data: bytes) -> bytes:
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80"):
        raise DecryptionFailed()
    return stripped[:-1]


class FieldCipher:
    """Encrypts and decrypts single text values under the data key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("data key must be 32 bytes")
        self._aead = AESGCM(key)

    def encrypt(self, value: str, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return _FIELD_VERSION + nonce + self._aead.encrypt(nonce, _pad(value.encode("utf-8")), ad)

    def decrypt(self, blob: bytes, ad: bytes) -> str:
        if not isinstance(blob, (bytes, bytearray)) or len(blob) < 1 + NONCE_LEN + 16 or blob[:1] != _FIELD_VERSION:
            raise DecryptionFailed()
        try:
            plain = self._aead.decrypt(bytes(blob[1 : 1 + NONCE_LEN]), bytes(blob[1 + NONCE_LEN :]), ad)
        except InvalidTag:
            raise DecryptionFailed() from None
        try:
            return _unpad(plain).decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionFailed() from None


def normalise_identifier(value: str) -> str:
    """The form a patient ID or issuer is compared in: NFKC, surrounding blanks removed, upper case.

    DICOM LO values arrive space-padded and PACS differ in case; the coordinator types IDs by hand.
    """
    return unicodedata.normalize("NFKC", value or "").strip().upper()


def blind_index(index_key: bytes, kind: str, *values: str) -> bytes:
    """HMAC-SHA256 over a kind label and the normalised values (length-prefixed, so no ambiguity)."""
    mac = hmac.new(index_key, build_ad(kind), hashlib.sha256)
    for value in values:
        raw = normalise_identifier(value).encode("utf-8")
        mac.update(len(raw).to_bytes(4, "big") + raw)
    return mac.digest()


def wrap_key(kek: bytes, name: str, generation: int, key: bytes) -> bytes:
    """Encrypt a 32-byte key under the KEK, bound to its role and key generation."""
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(kek).encrypt(nonce, key, build_ad("wrap", name, str(generation)))


def unwrap_key(kek: bytes, name: str, generation: int, wrapped: bytes) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE_LEN], wrapped[NONCE_LEN:], build_ad("wrap", name, str(generation)))
    except (InvalidTag, ValueError):
        raise DecryptionFailed() from None


def derive_key(key: bytes, info: str, salt: bytes) -> bytes:
    """HKDF-SHA256: a sub-key for one purpose (e.g. a backup file) from a master key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=info.encode()).derive(key)


def fingerprint(kek: bytes) -> str:
    """A short one-way tag of a KEK, to tell operators *which* key a table or backup expects."""
    return hmac.new(kek, b"site-connector/linkage/kek-fingerprint/v1", hashlib.sha256).hexdigest()[:16]
