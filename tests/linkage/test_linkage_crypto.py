"""Field encryption, associated-data binding, blind indexes, key wrapping, pseudonym format."""

from __future__ import annotations

import re
import secrets

import pytest

from connector.linkage.crypto import (
    DecryptionFailed,
    FieldCipher,
    blind_index,
    build_ad,
    fingerprint,
    normalise_identifier,
    unwrap_key,
    wrap_key,
)
from connector.linkage.pseudonyms import (
    CROCKFORD,
    new_date_offset,
    new_pseudonym,
    normalise_pseudonym,
    parse_study_date,
    shift_date,
)


def test_roundtrip_and_fresh_nonce_per_value() -> None:
    cipher = FieldCipher(secrets.token_bytes(32))
    ad = build_ad("subjects", "name", "TEST01-AAAAAAAA")
    a, b = cipher.encrypt("SYNTH^PATIENT", ad), cipher.encrypt("SYNTH^PATIENT", ad)
    assert a != b  # fresh nonce: equal plaintexts do not give equal ciphertexts
    assert cipher.decrypt(a, ad) == cipher.decrypt(b, ad) == "SYNTH^PATIENT"
    assert b"SYNTH" not in a


@pytest.mark.parametrize(
    "other_ad",
    [
        build_ad("subjects", "name", "TEST01-BBBBBBBB"),  # another row
        build_ad("subjects", "patient_id", "TEST01-AAAAAAAA"),  # another column
        build_ad("studies", "name", "TEST01-AAAAAAAA"),  # another table
    ],
)
def test_value_moved_to_another_row_column_or_table_fails(other_ad: bytes) -> None:
    cipher = FieldCipher(secrets.token_bytes(32))
    blob = cipher.encrypt("19470312", build_ad("subjects", "name", "TEST01-AAAAAAAA"))
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(blob, other_ad)


def test_wrong_key_and_flipped_byte_fail() -> None:
    ad = build_ad("t", "c", "r")
    blob = FieldCipher(secrets.token_bytes(32)).encrypt("x", ad)
    with pytest.raises(DecryptionFailed):
        FieldCipher(secrets.token_bytes(32)).decrypt(blob, ad)
    cipher = FieldCipher(secrets.token_bytes(32))
    blob = bytearray(cipher.encrypt("x", ad))
    blob[20] ^= 1
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(bytes(blob), ad)


def test_padding_hides_exact_length() -> None:
    cipher = FieldCipher(secrets.token_bytes(32))
    ad = build_ad("t")
    sizes = {len(cipher.encrypt("A" * n, ad)) for n in range(0, 31)}
    assert len(sizes) == 1  # names of 0..30 characters are indistinguishable by size
    assert cipher.decrypt(cipher.encrypt("", ad), ad) == ""
    assert cipher.decrypt(cipher.encrypt("Ünïcødé^名前", ad), ad) == "Ünïcødé^名前"


def test_ad_parts_are_unambiguous() -> None:
    assert build_ad("ab", "c") != build_ad("a", "bc")


def test_blind_index_normalises_and_separates() -> None:
    key = secrets.token_bytes(32)
    base = blind_index(key, "patient", "syn123 ", "Synth-Hospital")
    assert base == blind_index(key, "patient", "  SYN123", "SYNTH-HOSPITAL  ")
    assert base != blind_index(key, "patient", "SYN123", "")  # issuer matters
    assert base != blind_index(key, "patient", "SYN12", "3SYNTH-HOSPITAL")  # no concatenation ambiguity
    assert base != blind_index(secrets.token_bytes(32), "patient", "SYN123", "SYNTH-HOSPITAL")  # keyed
    assert base != blind_index(key, "study", "SYN123", "SYNTH-HOSPITAL")  # kinds separated
    assert normalise_identifier("\uff33YN1 ") == "SYN1"  # NFKC: full-width letters fold


def test_wrap_unwrap_binds_role_and_generation() -> None:
    kek, key = secrets.token_bytes(32), secrets.token_bytes(32)
    wrapped = wrap_key(kek, "data_key", 3, key)
    assert unwrap_key(kek, "data_key", 3, wrapped) == key
    for args in (("index_key", 3), ("data_key", 4)):
        with pytest.raises(DecryptionFailed):
            unwrap_key(kek, *args, wrapped)
    with pytest.raises(DecryptionFailed):
        unwrap_key(secrets.token_bytes(32), "data_key", 3, wrapped)
    assert fingerprint(kek) == fingerprint(kek) != fingerprint(key)


def test_pseudonym_format_and_normalisation() -> None:
    seen = {new_pseudonym("SITE01") for _ in range(2000)}
    assert len(seen) == 2000
    for p in list(seen)[:50]:
        assert re.fullmatch(r"SITE01-[0-9A-HJKMNP-TV-Z]{8}", p)
        assert normalise_pseudonym(p.lower()) == "site01-" + p[7:]  # suffix canonical, prefix as typed
    assert set("".join(seen)) - set("SITE01-") <= set(CROCKFORD)
    assert normalise_pseudonym("SITE01-oiL00000") == "SITE01-01100000"  # Crockford aliases
    assert normalise_pseudonym("SITE01-UUUUUUUU") is None
    assert normalise_pseudonym("no pseudonym") is None
    assert len(new_pseudonym("X", 12)) == 14


def test_offsets_dates() -> None:
    offsets = {new_date_offset(30) for _ in range(2000)}
    assert offsets <= set(range(-30, 0)) and len(offsets) > 20
    assert parse_study_date("2024.01.15") == "20240115"
    assert parse_study_date("20240230") is None and parse_study_date("") is None
    assert shift_date("20240301", -1) == "20240229"
