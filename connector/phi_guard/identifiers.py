"""What the original object says about its patient: the values the guard must never see again."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

from connector.phi_guard.encoded_items import EncodedWalkError, encoded_values, part10_values

MIN_NAME_PART = 3  # letters; shorter parts (e.g. "LI") would match ordinary words
MIN_ID = 3

_PATIENT_NAMES = (0x00100010, 0x00101001, 0x00101005)  # PatientName, OtherPatientNames, PatientBirthName
_PATIENT_IDS = frozenset({0x00100020, 0x00101000})  # PatientID, OtherPatientIDs (also inside sequences)
_ISSUERS = frozenset({0x00100021})  # IssuerOfPatientID (also inside OtherPatientIDsSequence)
_ACCESSIONS = frozenset({0x00080050})
_BIRTH_DATE = 0x00100030
_INSTITUTIONS = frozenset({0x00080080, 0x00080081})  # InstitutionName, InstitutionAddress
_DEVICE_UIDS = frozenset({0x00181002})  # DeviceUID
_WANTED = _PATIENT_IDS | _ISSUERS | _ACCESSIONS | _INSTITUTIONS
# UI attributes that name public things (SOP classes, syntaxes, coding schemes), not instances.
_PUBLIC_UID_KEYWORD = re.compile(r"Class|TransferSyntax|CodingScheme")
_LETTERS = re.compile(r"[^\W\d_]+")
_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")


@dataclass(frozen=True)
class Identifiers:
    """Original identifiers of one object's patient. Hashable, so compiled scanners can be cached."""

    name_parts: frozenset[str] = frozenset()
    patient_ids: frozenset[str] = frozenset()
    issuers: frozenset[str] = frozenset()
    accession_numbers: frozenset[str] = frozenset()
    birth_dates: frozenset[str] = frozenset()  # every common rendering of the birth date
    uids: frozenset[str] = frozenset()
    institutions: frozenset[str] = frozenset()
    device_uids: frozenset[str] = frozenset()  # UIDs naming equipment (Device UID), not instances
    # Name tokens of every person-name element of the study (physicians, operators, SR PNAME items,
    # other patients): looked for in retained free text.
    person_names: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never print the values themselves
        return (f"Identifiers(names={len(self.name_parts)}, ids={len(self.patient_ids)}, "
                f"uids={len(self.uids)}, ...)")


def _values(ds: Dataset, tag: object) -> list[str]:
    if tag not in ds:
        return []
    try:
        value = ds[tag].value
    except Exception:  # an unparseable value cannot be matched; the raw byte scan still runs
        return []
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v).strip(" \x00") for v in value if str(v).strip(" \x00")]
    text = str(value).strip(" \x00")
    return [text] if text else []


def birth_date_renderings(da: str) -> set[str]:
    m = _DA.match(da.strip())
    if not m:
        return set()
    y, mo, d = m.groups()
    return {f"{y}{mo}{d}", f"{y}-{mo}-{d}", f"{y}/{mo}/{d}", f"{y}.{mo}.{d}", f"{d}/{mo}/{y}", f"{mo}/{d}/{y}",
            f"{d}.{mo}.{y}", f"{d}-{mo}-{y}", f"{d}{mo}{y}"}


def _walk_encoded(elem: object, consider: Callable[[int, str, list[str]], None]) -> bool:
    """Feed the values of a still-encoded sequence to ``consider``; False if pydicom must parse it."""
    if type(elem) is not RawDataElement or elem.length == 0xFFFFFFFF or not elem.is_little_endian:
        return False
    try:
        values = encoded_values(elem.value or b"", elem.is_implicit_VR, "")
    except EncodedWalkError:
        return False
    for _path, tag, vr, value in values:
        if tag in _WANTED or vr in ("UI", "PN"):
            text = value.decode("latin-1").strip(" \x00")
            consider(tag, vr, [v.strip(" \x00") for v in text.split("\\") if v.strip(" \x00")])
    return True


def _vr_of(elem: object, tag: int) -> str:
    vr = getattr(elem, "VR", None)
    if vr and vr != "UN":
        return vr
    try:
        return dictionary_VR(tag)
    except KeyError:
        return vr or "UN"


def person_name_tokens(value: str) -> set[str]:
    """Family, given and middle name tokens of a PN value, upper-cased, of 2 letters or more."""
    tokens: set[str] = set()
    for group in value.split("="):
        for comp in group.split("^")[:3]:
            tokens.update(p.upper() for p in _LETTERS.findall(comp) if len(p) >= 2)
    return tokens


def study_name_tokens(files: Iterable[bytes | Path]) -> frozenset[str]:
    """Name tokens of every person-name element, at every depth, of every object of a study (read
    with the guard's own parser; an object it cannot parse adds nothing, it will be refused later)."""
    tokens: set[str] = set()
    for item in files:
        try:
            data = item if isinstance(item, bytes) else Path(item).read_bytes()
            meta, values, _span = part10_values(data)
        except (OSError, EncodedWalkError):
            continue
        codecs = ["iso8859"]
        for prefix, tag, _vr, value in values:
            if tag == 0x00080005 and not prefix:
                names = value.decode("ascii", "replace").strip(" \x00").split("\\")
                try:
                    codecs = convert_encodings([n.strip() for n in names] or ["ISO_IR 6"])
                except Exception:
                    codecs = ["iso8859"]
        for _prefix, _tag, vr, value in values:
            if vr == "PN":
                try:
                    text = decode_bytes(value, codecs, set()) if len(codecs) > 1 else value.decode(codecs[0], "replace")
                except Exception:
                    text = value.decode("latin-1")
                tokens |= person_name_tokens(text.strip(" \x00"))
    return frozenset(tokens)


def collect_identifiers(ds: Dataset, study_names: frozenset[str] = frozenset()) -> Identifiers:
    """Gather the patient's identifiers from the original ``ds`` (call before it is changed).

    ``study_names``: :func:`study_name_tokens` of the whole study; the object's own person names
    at every depth are added.
    """
    people: set[str] = set(study_names)
    names: set[str] = set()
    ids: set[str] = set()
    issuers: set[str] = set()
    accessions: set[str] = set()
    institutions: set[str] = set()
    uids: set[str] = set()
    devices: set[str] = set()
    for tag in _PATIENT_NAMES:
        for v in _values(ds, tag):
            for group in v.split("="):
                for comp in group.split("^")[:3]:
                    names.update(p.upper() for p in _LETTERS.findall(comp)
                                 if len(p) >= MIN_NAME_PART or (len(p) >= 2 and not p.isascii()))
    births: set[str] = set()
    for v in _values(ds, _BIRTH_DATE):
        births |= birth_date_renderings(v)

    def consider(tag: int, vr: str, values: list[str]) -> None:
        if vr == "PN":
            for v in values:
                people.update(person_name_tokens(v))
        elif tag in _PATIENT_IDS:
            ids.update(v for v in values if len(v) >= MIN_ID)
        elif tag in _ISSUERS:
            issuers.update(v for v in values if len(v) >= MIN_ID)
        elif tag in _ACCESSIONS:
            accessions.update(v for v in values if len(v) >= MIN_ID)
        elif tag in _INSTITUTIONS:
            for v in values:
                if len(v) >= 4:  # as written, and with runs of spaces folded
                    institutions.update((v, " ".join(v.split())))
        elif vr == "UI":
            keyword = keyword_for_tag(tag) if not tag & 0x10000 else ""
            if not _PUBLIC_UID_KEYWORD.search(keyword):
                found = (u for u in values if u not in UID_dictionary)
                (devices if tag in _DEVICE_UIDS else uids).update(found)

    def walk(item: Dataset, depth: int) -> None:
        for key, elem in list(item.items()):  # items(): unconverted, so unread values stay undecoded
            tag = int(key)  # plain int for our sets; pydicom's BaseTag compares in Python, slowly
            if tag & 0x10000 and elem.VR not in ("UI", "SQ"):
                continue  # private with no explicit UID or sequence VR: nothing to look up
            vr = _vr_of(elem, tag)
            if vr == "SQ":
                if depth < 32 and not _walk_encoded(elem, consider):
                    try:
                        seq = item[key].value or []
                    except Exception:
                        continue
                    for child in seq:
                        if isinstance(child, Dataset):
                            walk(child, depth + 1)
            elif tag in _WANTED or vr in ("UI", "PN"):
                consider(tag, vr, _values(item, key))

    walk(ds, 0)
    # Demo and phantom data often name the vendor as the institution; a name that is part of the
    # Manufacturer value identifies no patient and is kept on purpose, so it is not searched for.
    vendors = {v.upper() for v in _values(ds, 0x00080070)}
    institutions = {i for i in institutions if not any(i.upper() in v for v in vendors)}
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        uids.update(u for u in _values(meta, 0x00020003) if u not in UID_dictionary)
    return Identifiers(
        name_parts=frozenset(names),
        patient_ids=frozenset(ids),
        issuers=frozenset(issuers),
        accession_numbers=frozenset(accessions),
        birth_dates=frozenset(births),
        uids=frozenset(uids),
        institutions=frozenset(i.upper() for i in institutions),
        device_uids=frozenset(devices),
        person_names=frozenset(people) | frozenset(names),
    )
