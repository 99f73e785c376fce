"""A synthetic PHI corpus for issue 12: identifiers planted in every class the issue lists, and a
byte scanner that finds them again in any output.

Importable (``write_corpus(folder) -> Corpus``, ``scan(data, corpus)``) and a script::

    python tests/deid/phi_corpus.py OUT_DIR      # writes the corpus, prints the manifest as JSON

Three synthetic patients, one small study each (all made up, clearly fake, test-only UID root):

* study 1, ``MÜLLERSOHN^GRETCHENIA`` (ISO_IR 100, Latin-1): clean CT and PET, PHI-laden CT and PET
  (free text, private tags, file meta, overlay, icon image, references), a Comprehensive SR, an
  Encapsulated PDF, an ultrasound image and a screen save;
* study 2, ``ŁUKASZEWSKIQ^ZBIGNIEWKA`` (ISO_IR 192, UTF-8, with Cyrillic free text): CT and PET;
* study 3, ``WANIBUCHIGAWA^TAKOTAROMARU=鰐淵川^蛸太郎丸=わにぶちがわ^たこたろうまる``
  (ISO 2022 IR 87, Japanese): CT and PET.

Every canary is distinctive (made-up words of 6+ letters, numbers of 7+ digits, or a phone, date,
e-mail or postcode shape) so a hit is never a coincidence. Pixel data is smooth gradients, never
random bytes. Canaries planted in binary places (overlay bits, icon pixels, OB blobs, the PDF) are
ASCII bytes inside otherwise low-entropy data.

Expected outcomes under the registry's default profile as issue 12 defines it: CT, PET and the SR
are written (cleaned, not quarantined); the PDF, the ultrasound image and the screen save are
quarantined whatever ``BurnedInAnnotation`` says.
"""

from __future__ import annotations

import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ORG = "1.2.826.0.1.3680043.10.1432.99."  # test-only UID root (as tests/deid/factory.py)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

WRITTEN = "written"
QUARANTINED = "quarantined"

# Encodings a single-byte canary is searched in (case-insensitive), and the multi-byte ones.
SINGLE_BYTE = ("ascii", "latin-1")
MULTI_BYTE = ("utf-8", "utf-16-le", "utf-16-be")
JAPANESE = ("iso2022_jp", "euc_jp", "shift_jis")


@dataclass(frozen=True)
class Expected:
    outcome: str  # "written" | "quarantined"
    why: str


@dataclass
class Corpus:
    files: dict[str, Expected] = field(default_factory=dict)
    canaries: list[str] = field(default_factory=list)
    original_uids: set[str] = field(default_factory=set)
    # canary -> ["file: element", ...], for failure messages and the report
    where: dict[str, list[str]] = field(default_factory=dict)
    folder: Path | None = None
    _needles: list[tuple[str, str, str, bytes | str]] | None = field(default=None, repr=False)

    @property
    def written(self) -> list[str]:
        return sorted(n for n, e in self.files.items() if e.outcome == WRITTEN)

    @property
    def quarantined(self) -> list[str]:
        return sorted(n for n, e in self.files.items() if e.outcome == QUARANTINED)

    def plant(self, file: str, element: str, *canaries: str) -> None:
        for c in canaries:
            if c not in self.canaries:
                self.canaries.append(c)
            self.where.setdefault(c, []).append(f"{file}: {element}")

    def manifest(self) -> dict[str, object]:
        return {"files": {n: {"outcome": e.outcome, "why": e.why} for n, e in sorted(self.files.items())},
                "canaries": self.canaries, "where": self.where, "original_uids": sorted(self.original_uids)}


# ---------------------------------------------------------------------------------------------
# scanning


def _is_japanese(text: str) -> bool:
    return any("\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff" for ch in text)


def _needles(corpus: Corpus) -> list[tuple[str, str, str, bytes | str]]:
    """(canary, encoding, mode, pattern). mode "fold": search the Latin-1-decoded, lower-cased data
    for a str; mode "bytes": exact byte search."""
    if corpus._needles is not None:
        return corpus._needles
    out: list[tuple[str, str, str, bytes | str]] = []
    for canary in corpus.canaries:
        seen: set[bytes] = set()
        for enc in SINGLE_BYTE:
            try:
                raw = canary.encode(enc)
            except UnicodeEncodeError:
                continue
            out.append((canary, enc, "fold", raw.decode("latin-1").lower()))
            seen.add(raw)
        variants = dict.fromkeys([canary, canary.upper(), canary.lower(), canary.title()])
        for enc in MULTI_BYTE:
            for v in variants:
                raw = v.encode(enc)
                if raw in seen or (enc == "utf-8" and raw.isascii()):
                    continue  # ASCII-only UTF-8 is the ASCII form, already searched case-insensitively
                seen.add(raw)
                out.append((canary, enc, "bytes", raw))
        if _is_japanese(canary):
            for enc in JAPANESE:
                raw = canary.encode(enc)
                if enc == "iso2022_jp":
                    body = raw[3:-3]  # ESC $ B ... ESC ( B
                    out.append((canary, enc, "bytes", raw[:3] + body))  # at the start of a kanji run
                    out.append((canary, enc + "(in-run)", "bytes", body))  # inside a longer run
                else:
                    out.append((canary, enc, "bytes", raw))
    corpus._needles = out
    return out


_UID_RUN = re.compile(rb"[0-9.]+")


def _inside_uid(data: bytes, start: int, end: int) -> bool:
    """True when data[start:end] lies inside a UID-shaped run of digits and dots (2+ dots, 16+ long): a run of
    digits there is a (new, hashed) UID's digits, such as 2.25.<39 digits>, not a planted number."""
    lo = start
    while lo > 0 and data[lo - 1] in b"0123456789.":
        lo -= 1
    hi = end
    while hi < len(data) and data[hi] in b"0123456789.":
        hi += 1
    return data[lo:hi].count(b".") >= 2 and hi - lo >= 16


def _digit_hit(data: bytes, pattern: bytes) -> bool:
    start = data.find(pattern)
    while start >= 0:
        if not _inside_uid(data, start, start + len(pattern)):
            return True
        start = data.find(pattern, start + 1)
    return False


def scan_details(data: bytes, corpus: Corpus) -> list[tuple[str, str]]:
    """Every (canary or original UID, encoding) found in ``data``."""
    found: list[tuple[str, str]] = []
    folded: str | None = None
    for canary, enc, mode, pattern in _needles(corpus):
        if mode == "fold":
            assert isinstance(pattern, str)
            if canary.isdigit():
                # digits only: ignore hits inside the long decimal UIDs (2.25.<number>) an output holds
                if _digit_hit(data, pattern.encode("latin-1")):
                    found.append((canary, enc))
                continue
            if folded is None:
                folded = data.decode("latin-1").lower()
            if pattern in folded:
                found.append((canary, enc))
        else:
            assert isinstance(pattern, bytes)
            if pattern in data:
                found.append((canary, enc))
    for uid in sorted(corpus.original_uids):
        raw = uid.encode()
        start = data.find(raw)
        while start >= 0:
            before = data[start - 1:start] if start else b""
            after = data[start + len(raw):start + len(raw) + 1]
            if not (before and before in b"0123456789.") and not (after and after in b"0123456789"):
                found.append((uid, "uid"))
                break
            start = data.find(raw, start + 1)
    return found


def scan(data: bytes, corpus: Corpus) -> list[str]:
    """The canaries and original UIDs that occur in ``data`` (each once, canaries first).

    Canaries are searched in ASCII, Latin-1 (both case-insensitive), UTF-8, UTF-16-LE and UTF-16-BE
    (as planted, upper, lower and title case), the Japanese ones also in ISO-2022-JP (with and
    without the escape sequence), EUC-JP and Shift_JIS. UIDs are matched whole (not as the prefix
    of a longer UID)."""
    return list(dict.fromkeys(name for name, _ in scan_details(data, corpus)))


def locate(data: bytes, corpus: Corpus) -> list[str]:
    """Which elements of a DICOM encoding hold canaries or original UIDs, as readable lines
    ("(0020,4000) ImageComments: WOMBATSON [ascii]"), for failure messages. Sequences are searched
    item by item; a hit outside any element (preamble, undecodable bytes) is reported as "bytes"."""
    from pydicom import dcmread
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import keyword_for_tag

    lines: list[str] = []

    def label(tag: int) -> str:
        return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag) or 'private/unknown'}"

    def walk(ds: Dataset, path: str) -> None:
        for tag in list(ds.keys()):
            raw = ds.get_item(tag)
            where = f"{path}{label(int(tag))}"
            if isinstance(raw, RawDataElement) and raw.VR != "SQ" and isinstance(raw.value, bytes):
                value = raw.value
            else:
                elem = ds[tag]
                if elem.VR == "SQ":
                    for i, item in enumerate(elem.value):
                        walk(item, f"{where}[{i}] > ")
                    continue
                v = elem.value
                value = v if isinstance(v, bytes) else str(v).encode("utf-8", "replace")
            hits: dict[str, list[str]] = {}
            for name, enc in scan_details(value, corpus):
                hits.setdefault(name, []).append(enc)
            lines.extend(f"{where}: {name} [{', '.join(encs)}]" for name, encs in hits.items())

    if data[128:132] == b"DICM":
        try:
            ds = dcmread(io.BytesIO(data))
            walk(ds.file_meta, "file meta ")
            walk(ds, "")
        except Exception as exc:
            lines.append(f"(DICOM not parsed: {type(exc).__name__})")
    if not lines:  # not DICOM (JSON, a database, a log), or outside any element: bytes with context
        folded = data.decode("latin-1").lower()
        reported: set[tuple[str, int]] = set()
        for canary, enc, mode, pattern in _needles(corpus):
            at = folded.find(pattern) if mode == "fold" else data.find(pattern)  # type: ignore[arg-type]
            if at >= 0 and (canary, at) not in reported:
                reported.add((canary, at))
                context = data[max(0, at - 24):at + len(pattern) + 24]
                lines.append(f"byte {at}: {canary} [{enc}] in {context!r}")
        lines += [f"bytes: {uid} [uid]" for uid in scan(data, corpus) if uid in corpus.original_uids]
    return list(dict.fromkeys(lines))


# ---------------------------------------------------------------------------------------------
# the corpus


@dataclass(frozen=True)
class Patient:
    name: str
    patient_id: str
    other_id: str
    birth_date: str
    sex: str
    charset: str | list[str]
    canaries: tuple[str, ...]  # what of the identity a scan must never find


P1 = Patient(name="MÜLLERSOHN^GRETCHENIA", patient_id="PID73519864", other_id="OTH62840175",
             birth_date="19440903", sex="F", charset="ISO_IR 100",
             canaries=("MÜLLERSOHN", "LLERSOHN", "GRETCHENIA", "PID73519864", "73519864", "OTH62840175",
                       "19440903"))
P2 = Patient(name="ŁUKASZEWSKIQ^ZBIGNIEWKA", patient_id="PID28461937", other_id="OTH91735468",
             birth_date="19310117", sex="M", charset="ISO_IR 192",
             canaries=("ŁUKASZEWSKIQ", "UKASZEWSKIQ", "ZBIGNIEWKA", "PID28461937", "28461937", "OTH91735468",
                       "19310117"))
P3 = Patient(name="WANIBUCHIGAWA^TAKOTAROMARU=鰐淵川^蛸太郎丸=わにぶちがわ^たこたろうまる",
             patient_id="PID50938271", other_id="OTH38164052", birth_date="19571221", sex="M",
             charset=["", "ISO 2022 IR 87"],
             canaries=("WANIBUCHIGAWA", "TAKOTAROMARU", "鰐淵川", "蛸太郎丸", "わにぶちがわ", "たこたろうまる",
                       "PID50938271", "50938271", "OTH38164052", "19571221"))

# Study-level identifiers (removed by the basic profile): per study, distinct values.
STUDY_IDENTIFIERS = {
    "s1": {"accession": "ACN31415926", "institution": "GRIMSBANE MEMORIAL HOSPITAL",
           "referrer": "PLATYPUSKY^BARTHOLOMEW", "operator": "TORTELLINI^MARGUERITTA",
           "station": "FLOUNDERBY-CT7", "address": "9 Gorsefield Parade, Hobbleton"},
    "s2": {"accession": "ACN27182818", "institution": "SZCZEBRZESZYNEK CLINIC",
           "referrer": "WIERZBOWIAK^TEOFILIUSZ", "operator": "KOZIOROŻEC^HALINKA",
           "station": "PIKELETTO-CT2", "address": "Ulica Bociankowa 7"},
    "s3": {"accession": "ACN16180339", "institution": "KAWAUSOYAMA HOSPITAL",
           "referrer": "TANUKIHARA^GOROSUKE", "operator": "KITSUNEDA^MIYOKICHI",
           "station": "HAMACHIKO-CT3", "address": "Kawausoyama 3-14"},
}
STUDY_CANARIES = {
    "s1": ("31415926", "GRIMSBANE", "PLATYPUSKY", "BARTHOLOMEW", "TORTELLINI", "MARGUERITTA", "FLOUNDERBY",
           "Gorsefield", "Hobbleton"),
    "s2": ("27182818", "SZCZEBRZESZYNEK", "WIERZBOWIAK", "TEOFILIUSZ", "KOZIOROŻEC", "HALINKA", "PIKELETTO",
           "Bociankowa"),
    "s3": ("16180339", "KAWAUSOYAMA", "TANUKIHARA", "GOROSUKE", "KITSUNEDA", "MIYOKICHI", "HAMACHIKO"),
}

# Free text planted by the PHI-laden objects: another person's names, phones in six formats,
# e-mail, addresses and postcodes, dates in five renderings, MRN and accession shapes, a marker word.
# Dates: shifting only moves dates into the past, by at most 3650 days. The free-text dates (2009)
# are more than that before the study dates (2024) and after every other date, and the DA canaries
# (birth dates 1931/1944/1957, SR date 1970) are each more than 10 years from any later corpus date,
# so no shifted date can ever equal a canary: a hit is a leak, never a coincidence.
FREE_TEXT = {
    "StudyDescription": "PET/CT Rb-82 rest stress WOMBATSON 555-0199",
    "SeriesDescription": "CTAC 3mm B30f AC called (555) 867-5309 on 2009-08-27",
    "ProtocolName": "Cardiac PET Rb-82 KESTRELWICK MRN 48151623",
    "ImageComments": "Patient called Dr WOMBATSON +1 555 867 5309, wombatson.family@narwhalpost.example, "
                     "SNORKELWAXIA",
    "PatientComments": "Lives at 14 Quillbrook Lane, Marmotville, OH 43017-8842; daughter PELICANTHA "
                       "BRISTLEWORTH 555.867.5309",
    "AdditionalPatientHistory": "Prior MI 27/08/2009, seen 27 Aug 2009 at 77 Haddlesworth Road, London SW1A 1AA, "
                                "ph +44 20 7946 0958",
    "RequestedProcedureComments": "Ref ACC-99887766 on August 27, 2009 (27.08.09), mobile 07700 900123",
}
FREE_TEXT_CANARIES = {
    "StudyDescription": ("WOMBATSON", "555-0199"),
    "SeriesDescription": ("(555) 867-5309", "867-5309", "2009-08-27"),
    "ProtocolName": ("KESTRELWICK", "MRN 48151623", "48151623"),
    "ImageComments": ("WOMBATSON", "+1 555 867 5309", "wombatson.family@narwhalpost.example", "narwhalpost",
                      "SNORKELWAXIA"),
    "PatientComments": ("Quillbrook", "Marmotville", "43017-8842", "PELICANTHA", "BRISTLEWORTH", "555.867.5309"),
    "AdditionalPatientHistory": ("27/08/2009", "27 Aug 2009", "Haddlesworth", "SW1A 1AA", "+44 20 7946 0958",
                                 "7946 0958"),
    "RequestedProcedureComments": ("ACC-99887766", "99887766", "August 27, 2009", "27.08.09", "07700 900123"),
}
# The PET's free text: the same classes, other values (a second chance for each pattern).
PET_FREE_TEXT = {
    "StudyDescription": "PET/CT Rb-82 rest stress WOMBATSON 555-0199",
    "SeriesDescription": "PET AC rest Rb-82 seen by Dr GANNETFIELD 2009-08-27",
    "ProtocolName": "Rb-82 PET stress regadenoson Dr BRÄUNLINGERT",
    "ImageComments": "Contact BRÄUNLINGERT at 020-7946-0321 or braunlingert@mossbankmail.example",
    "PatientComments": "Neighbour FRUMPKINSON has key, 221B Wobbleford Street NW1 6XE",
    "AdditionalPatientHistory": "Angina since March 12, 2009; CABG 12.03.09",
    "RequestedProcedureComments": "MRN: 60221409 requested by GANNETFIELD",
}
PET_FREE_TEXT_CANARIES = {
    "StudyDescription": ("WOMBATSON", "555-0199"),
    "SeriesDescription": ("GANNETFIELD", "2009-08-27"),
    "ProtocolName": ("BRÄUNLINGERT", "UNLINGERT"),
    "ImageComments": ("BRÄUNLINGERT", "020-7946-0321", "mossbankmail"),
    "PatientComments": ("FRUMPKINSON", "Wobbleford", "NW1 6XE"),
    "AdditionalPatientHistory": ("March 12, 2009", "12.03.09"),
    "RequestedProcedureComments": ("60221409", "GANNETFIELD"),
}
SAFE_DESCRIPTIONS = {  # what the clean objects carry: nothing identifying, words the cleaner must keep
    "StudyDescription": "PET/CT Rb-82 rest stress",
    "SeriesDescription": "CTAC 3mm B30f AC",
    "ProtocolName": "Cardiac PET Rb-82",
}


def _uid(*parts: object) -> str:
    """Deterministic test-root UID (the corpus is the same bytes every time)."""
    return generate_uid(ORG, entropy_srcs=["phi-corpus", *map(str, parts)])


@dataclass
class StudyUids:
    key: str
    study: str = ""
    ct_series: str = ""
    pet_series: str = ""
    other_series: str = ""
    frame_of_reference: str = ""

    def __post_init__(self) -> None:
        self.study = self.study or _uid(self.key, "study")
        self.ct_series = self.ct_series or _uid(self.key, "ct-series")
        self.pet_series = self.pet_series or _uid(self.key, "pet-series")
        self.other_series = self.other_series or _uid(self.key, "other-series")
        self.frame_of_reference = self.frame_of_reference or _uid(self.key, "frame-of-reference")


def _gradient(rows: int, cols: int, dtype: type, scale: int) -> bytes:
    y, x = np.mgrid[0:rows, 0:cols]
    return ((x + y) * scale).astype(dtype).tobytes()


def _base(corpus: Corpus, file: str, patient: Patient, uids: StudyUids, study: str, *, modality: str,
          sop_class: str, series: str, instance: int, study_date: str = "20240612") -> Dataset:
    """Header every object shares: patient and study identifiers, all in elements the profile removes,
    replaces or shifts."""
    s = STUDY_IDENTIFIERS[study]
    ds = Dataset()
    ds.SpecificCharacterSet = patient.charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(file, "sop")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "091500"
    ds.AccessionNumber = s["accession"]
    ds.Modality = modality
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = s["institution"]
    ds.InstitutionAddress = s["address"]
    ds.ReferringPhysicianName = s["referrer"]
    ds.OperatorsName = s["operator"]
    ds.StationName = s["station"]
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "HOSPMRN"
    ds.OtherPatientIDs = patient.other_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = "079Y"
    ds.PatientWeight = 70.0
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = {uids.ct_series: 2, uids.pet_series: 3}.get(series, 9)
    ds.InstanceNumber = instance
    corpus.original_uids.update({ds.SOPInstanceUID, uids.study, series})
    where = f"{file}"
    corpus.plant(where, "PatientName/PatientID/OtherPatientIDs/PatientBirthDate", *patient.canaries)
    corpus.plant(where, "AccessionNumber/InstitutionName/InstitutionAddress/ReferringPhysicianName/OperatorsName/"
                 "StationName", *STUDY_CANARIES[study])
    return ds


def _image(ds: Dataset, *, rows: int = 16, cols: int = 16, ct: bool = True) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if ct else 0
    ds.PixelSpacing = [2.0, 2.0]
    ds.SliceThickness = 3.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-16.0, -16.0, -3.0 * int(ds.InstanceNumber)]
    if ct:
        ds.KVP = 120
        ds.ConvolutionKernel = "B30f"
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = _gradient(rows, cols, np.int16, 9)
    else:
        ds.Units = "BQML"
        ds.DecayCorrection = "START"
        ds.CorrectedImage = ["ATTN", "DECY"]
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = _gradient(rows, cols, np.uint16, 5)


def _ct(corpus: Corpus, file: str, patient: Patient, uids: StudyUids, study: str, instance: int) -> Dataset:
    ds = _base(corpus, file, patient, uids, study, modality="CT", sop_class=CT_IMAGE, series=uids.ct_series,
               instance=instance)
    ds.FrameOfReferenceUID = uids.frame_of_reference
    corpus.original_uids.add(uids.frame_of_reference)
    _image(ds, ct=True)
    return ds


def _pet(corpus: Corpus, file: str, patient: Patient, uids: StudyUids, study: str, instance: int) -> Dataset:
    ds = _base(corpus, file, patient, uids, study, modality="PT", sop_class=PET_IMAGE, series=uids.pet_series,
               instance=instance)
    ds.FrameOfReferenceUID = uids.frame_of_reference
    corpus.original_uids.add(uids.frame_of_reference)
    _image(ds, ct=False)
    return ds


def _descriptions(ds: Dataset, values: dict[str, str]) -> None:
    for keyword, value in values.items():
        setattr(ds, keyword, value)


def _meta(ds: Dataset, **extra: object) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1432.98.1"  # not under the corpus's UID root
    meta.ImplementationVersionName = "PHICORPUS_1"
    for keyword, value in extra.items():
        setattr(meta, keyword, value)
    return meta


def _write(corpus: Corpus, folder: Path, file: str, ds: Dataset, outcome: str, why: str,
           meta: FileMetaDataset | None = None) -> None:
    ds.file_meta = meta or _meta(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    (folder / file).write_bytes(buf.getvalue())
    corpus.files[file] = Expected(outcome, why)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _ascii_in_ramp(length: int, canary: str, offset: int = 4) -> bytes:
    """``length`` bytes of a slow ramp (low entropy) with the canary's ASCII bytes at ``offset``."""
    data = bytearray((i // 4) & 0x3F for i in range(length))
    raw = canary.encode("ascii")
    data[offset:offset + len(raw)] = raw
    return bytes(data)


def write_corpus(folder: Path) -> Corpus:
    """Write the corpus into ``folder`` (flat, one ``.dcm`` per object) and describe it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(folder=folder)
    s1, s2, s3 = StudyUids("s1"), StudyUids("s2"), StudyUids("s3")

    # -- study 1 (Latin-1): clean CT and PET: PHI only in elements the profile removes or replaces
    for i in (1, 2):
        name = f"s1_ct_clean_{i}.dcm"
        ds = _ct(corpus, name, P1, s1, "s1", instance=i)
        _descriptions(ds, SAFE_DESCRIPTIONS)
        _write(corpus, folder, name, ds, WRITTEN, "clean CT: identifiers only in elements the profile removes")
        name = f"s1_pet_clean_{i}.dcm"
        ds = _pet(corpus, name, P1, s1, "s1", instance=i)
        _descriptions(ds, {**SAFE_DESCRIPTIONS, "SeriesDescription": "PET AC rest Rb-82"})
        _write(corpus, folder, name, ds, WRITTEN, "clean PET: identifiers only in elements the profile removes")

    # -- study 1: free text (another person's name, phones, e-mail, addresses, dates, MRN/accession, marker)
    name = "s1_ct_freetext.dcm"
    ds = _ct(corpus, name, P1, s1, "s1", instance=3)
    _descriptions(ds, FREE_TEXT)
    ds.PatientComments = FREE_TEXT["PatientComments"] + ", Frau MÜLLERSOHN informed"
    for keyword, canaries in FREE_TEXT_CANARIES.items():
        corpus.plant(name, keyword, *canaries)
    corpus.plant(name, "PatientComments", "MÜLLERSOHN")
    _write(corpus, folder, name, ds, WRITTEN, "PHI-laden CT: free text cleaned, object still written")

    name = "s1_pet_freetext.dcm"
    ds = _pet(corpus, name, P1, s1, "s1", instance=3)
    _descriptions(ds, PET_FREE_TEXT)
    for keyword, canaries in PET_FREE_TEXT_CANARIES.items():
        corpus.plant(name, keyword, *canaries)
    _write(corpus, folder, name, ds, WRITTEN, "PHI-laden PET: free text cleaned, object still written")

    # -- study 1: private tags: text, a nested private sequence with a name, OB blobs, and an OB/UN
    #    element under a creator that is on the safe-private list
    name = "s1_ct_private.dcm"
    ds = _ct(corpus, name, P1, s1, "s1", instance=4)
    _descriptions(ds, SAFE_DESCRIPTIONS)
    block = ds.private_block(0x0011, "ACME PHI STUFF", create=True)
    block.add_new(0x01, "LO", "Reviewed by FENNECKLOWITZ")
    inner = Dataset()
    inner.PatientName = "OCELOTTERBY^HUMPHRIELLA"
    inner_block = inner.private_block(0x0013, "ACME PHI NESTED", create=True)
    inner_block.add_new(0x01, "LO", "GIRAFFOLINO 4455667788")
    block.add_new(0x02, "SQ", Sequence([inner]))
    block.add_new(0x03, "OB", _ascii_in_ramp(64, "GRUNDLEPLASM 604817293"))
    corpus.plant(name, "(0011,xx01) LO under ACME PHI STUFF", "FENNECKLOWITZ")
    corpus.plant(name, "(0011,xx02) private SQ > PatientName", "OCELOTTERBY", "HUMPHRIELLA")
    corpus.plant(name, "(0011,xx02) private SQ > (0013,xx01) LO", "GIRAFFOLINO", "4455667788")
    corpus.plant(name, "(0011,xx03) OB blob", "GRUNDLEPLASM", "604817293")
    ge = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    ge.add_new(0x23, "DS", "39.37")  # Table Speed: a safe private attribute
    ge.add_new(0x24, "UN", _ascii_in_ramp(32, "TAPIRBOTTOM 7162534"))  # on the list, but an opaque blob
    ge.add_new(0x10, "OB", _ascii_in_ramp(32, "DUGONGFELLOW"))  # same creator, not on the list
    corpus.plant(name, "(0019,xx24) UN under safe creator GEMS_ACQU_01", "TAPIRBOTTOM", "7162534")
    corpus.plant(name, "(0019,xx10) OB under safe creator GEMS_ACQU_01", "DUGONGFELLOW")
    _write(corpus, folder, name, ds, WRITTEN, "private text, nested private SQ and OB/UN blobs: all removed")

    # -- study 1: file meta with source and private fields
    name = "s1_ct_filemeta.dcm"
    ds = _ct(corpus, name, P1, s1, "s1", instance=5)
    _descriptions(ds, SAFE_DESCRIPTIONS)
    meta = _meta(ds, SourceApplicationEntityTitle="MEERKATPACS", SendingApplicationEntityTitle="SLOTHSENDER",
                 ReceivingApplicationEntityTitle="BADGERRECV",
                 PrivateInformationCreatorUID="1.2.826.0.1.3680043.10.1432.98.7",
                 PrivateInformation=_ascii_in_ramp(48, "ARMADILLONIA 9081726354"))
    corpus.plant(name, "file meta SourceApplicationEntityTitle", "MEERKATPACS")
    corpus.plant(name, "file meta SendingApplicationEntityTitle", "SLOTHSENDER")
    corpus.plant(name, "file meta ReceivingApplicationEntityTitle", "BADGERRECV")
    corpus.plant(name, "file meta PrivateInformation", "ARMADILLONIA", "9081726354")
    _write(corpus, folder, name, ds, WRITTEN, "file meta rebuilt, source fields and private information dropped",
           meta)

    # -- study 1: overlay plane with canary bits and comments
    name = "s1_ct_overlay.dcm"
    ds = _ct(corpus, name, P1, s1, "s1", instance=6)
    _descriptions(ds, SAFE_DESCRIPTIONS)
    ds.add_new(0x60000010, "US", 16)  # OverlayRows
    ds.add_new(0x60000011, "US", 16)  # OverlayColumns
    ds.add_new(0x60000040, "CS", "G")  # OverlayType
    ds.add_new(0x60000050, "SS", [1, 1])  # OverlayOrigin
    ds.add_new(0x60000100, "US", 1)  # OverlayBitsAllocated
    ds.add_new(0x60000102, "US", 0)  # OverlayBitPosition
    ds.add_new(0x60000022, "LO", "Annotation CAPYBARIELLO")  # OverlayDescription
    ds.add_new(0x60000500, "LO", "CAPYBARIELLO")  # OverlayLabel
    ds.add_new(0x60003000, "OW", _ascii_in_ramp(32, "QUETZALINDA", offset=2))  # OverlayData
    ds.add_new(0x60004000, "LT", "Burned note MANATEEWORTH 555-0199")  # OverlayComments (retired)
    corpus.plant(name, "(6000,0022) OverlayDescription, (6000,0500) OverlayLabel", "CAPYBARIELLO")
    corpus.plant(name, "(6000,3000) OverlayData bits", "QUETZALINDA")
    corpus.plant(name, "(6000,4000) OverlayComments", "MANATEEWORTH", "555-0199")
    _write(corpus, folder, name, ds, WRITTEN, "overlay plane: the default profile removes overlays")

    # -- study 1: icon image whose item holds canaries (pixels spelling a word, a name, a comment)
    name = "s1_pet_icon.dcm"
    ds = _pet(corpus, name, P1, s1, "s1", instance=4)
    _descriptions(ds, {**SAFE_DESCRIPTIONS, "SeriesDescription": "PET AC rest Rb-82"})
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows, icon.Columns = 8, 8
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = _ascii_in_ramp(64, "HEDGEWALLOP", offset=8)
    icon.add_new(0x00204000, "LT", "thumbnail for LEMURIANTHA")  # ImageComments inside the item
    ds.IconImageSequence = Sequence([icon])
    corpus.plant(name, "IconImageSequence > PixelData", "HEDGEWALLOP")
    corpus.plant(name, "IconImageSequence > ImageComments", "LEMURIANTHA")
    _write(corpus, folder, name, ds, WRITTEN, "icon image: the default profile removes icons")

    # -- study 1: references to original UIDs (another study, series, source and referenced images)
    name = "s1_ct_references.dcm"
    ds = _ct(corpus, name, P1, s1, "s1", instance=7)
    _descriptions(ds, SAFE_DESCRIPTIONS)
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    prior_study, prior_series, prior_sop = _uid("prior", "study"), _uid("prior", "series"), _uid("prior", "sop")
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired)
    ref_study.ReferencedSOPInstanceUID = prior_study
    ds.ReferencedStudySequence = Sequence([ref_study])
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = prior_series
    ref_inst = Dataset()
    ref_inst.ReferencedSOPClassUID = CT_IMAGE
    ref_inst.ReferencedSOPInstanceUID = prior_sop
    ref_series.ReferencedInstanceSequence = Sequence([ref_inst])
    ds.ReferencedSeriesSequence = Sequence([ref_series])
    src = Dataset()
    src.ReferencedSOPClassUID = CT_IMAGE
    src.ReferencedSOPInstanceUID = _uid("s1_ct_clean_1.dcm", "sop")
    src.PurposeOfReferenceCodeSequence = Sequence([_code("121322", "DCM", "Source image for image processing "
                                                                        "operation")])
    ds.SourceImageSequence = Sequence([src])
    ref_img = Dataset()
    ref_img.ReferencedSOPClassUID = PET_IMAGE
    ref_img.ReferencedSOPInstanceUID = _uid("s1_pet_clean_1.dcm", "sop")
    ds.ReferencedImageSequence = Sequence([ref_img])
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = _uid("prior", "frame-of-reference")
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_for])
    corpus.original_uids.update({prior_study, prior_series, prior_sop, _uid("prior", "frame-of-reference")})
    _write(corpus, folder, name, ds, WRITTEN, "references: every original UID remapped, inside sequences too")

    # -- study 1: Comprehensive SR with nested CONTAINER > TEXT, PNAME, DATE items
    name = "s1_sr_comprehensive.dcm"
    ds = _base(corpus, name, P1, s1, "s1", modality="SR", sop_class=COMPREHENSIVE_SR, series=s1.other_series,
               instance=1)
    ds.SeriesDescription = "Cardiac PET report"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContentTemplateSequence = Sequence()
    observer = Dataset()
    observer.VerifyingObserverName = "NIGHTJARSKI^ROSAMUNDELLA"
    observer.VerificationDateTime = "20240612100000"
    observer.VerifyingOrganization = "GRIMSBANE MEMORIAL HOSPITAL"
    observer.VerifyingObserverIdentificationCodeSequence = Sequence()
    ds.VerifyingObserverSequence = Sequence([observer])
    corpus.plant(name, "VerifyingObserverSequence > VerifyingObserverName", "NIGHTJARSKI", "ROSAMUNDELLA")

    def item(value_type: str, code: Dataset, relationship: str = "CONTAINS") -> Dataset:
        it = Dataset()
        it.RelationshipType = relationship
        it.ValueType = value_type
        it.ConceptNameCodeSequence = Sequence([code])
        return it

    text = item("TEXT", _code("121071", "DCM", "Finding"))
    text.TextValue = ("Reversible ischemia. Discussed with Dr BILBYWORTH on 2009-08-27, call 555-0199, "
                      "MRN 48151623, lives 14 Quillbrook Lane")
    pname = item("PNAME", _code("121008", "DCM", "Person Observer Name"))
    pname.PersonName = "BILBYWORTH^CORNELIUSSA"
    date = item("DATE", _code("111060", "DCM", "Study Date"))
    date.Date = "19700619"
    inner_text = item("TEXT", _code("121106", "DCM", "Comment"))
    inner_text.TextValue = "Wife SPOONBILLIA asked for copy, e-mail spoonbillia@kelpfordmail.example"
    nested = item("CONTAINER", _code("121070", "DCM", "Findings"))
    nested.ContinuityOfContent = "SEPARATE"
    nested.ContentSequence = Sequence([inner_text])
    section = item("CONTAINER", _code("121070", "DCM", "Findings"))
    section.ContinuityOfContent = "SEPARATE"
    section.ContentSequence = Sequence([text, pname, date, nested])
    ds.ContentSequence = Sequence([section])
    corpus.plant(name, "ContentSequence > CONTAINER > TEXT TextValue", "BILBYWORTH", "2009-08-27", "555-0199",
                 "48151623", "Quillbrook")
    corpus.plant(name, "ContentSequence > CONTAINER > PNAME PersonName", "BILBYWORTH", "CORNELIUSSA")
    corpus.plant(name, "ContentSequence > CONTAINER > DATE Date", "19700619")
    corpus.plant(name, "ContentSequence > CONTAINER > CONTAINER > TEXT TextValue", "SPOONBILLIA", "kelpfordmail")
    _write(corpus, folder, name, ds, QUARANTINED, "report SR: not on the default object-class allow-list")

    # -- study 1: Encapsulated PDF whose document names the patient and another person
    name = "s1_pdf_report.dcm"
    ds = _base(corpus, name, P1, s1, "s1", modality="DOC", sop_class=ENCAPSULATED_PDF,
               series=_uid("s1", "pdf-series"), instance=1)
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "NO"  # what the PDF claims; the class alone must quarantine it
    ds.DocumentTitle = "Cardiology report"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    stream = b"BT /F1 12 Tf 72 720 Td (Report for KOALAPRINCETON, phone 555-0199) Tj ET"
    pdf = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
           b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
           b"3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >> endobj\n"
           b"4 0 obj << /Length " + str(len(stream)).encode() + b" >> stream\n" + stream +
           b"\nendstream endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    corpus.plant(name, "EncapsulatedDocument (PDF bytes)", "KOALAPRINCETON")
    _write(corpus, folder, name, ds, QUARANTINED, "Encapsulated PDF: identifiers in the document, never sent")

    # -- study 1: ultrasound claiming no burned-in text, and a screen save claiming the same
    name = "s1_us_image.dcm"
    ds = _base(corpus, name, P1, s1, "s1", modality="US", sop_class=US_IMAGE, series=_uid("s1", "us-series"),
               instance=1)
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = _gradient(16, 16, np.uint8, 7)
    ds.ImageComments = "Echo by sonographer JACKALOPEZZI"
    corpus.plant(name, "ImageComments", "JACKALOPEZZI")
    _write(corpus, folder, name, ds, QUARANTINED, "ultrasound: burned-in risk whatever BurnedInAnnotation says")

    name = "s1_sc_screensave.dcm"
    ds = _base(corpus, name, P1, s1, "s1", modality="OT", sop_class=SECONDARY_CAPTURE,
               series=_uid("s1", "sc-series"), instance=1)
    ds.BurnedInAnnotation = "NO"
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = _gradient(16, 16, np.uint8, 3)
    ds.DerivationDescription = "Screen capture of workstation showing AXOLOTLINE"
    corpus.plant(name, "DerivationDescription", "AXOLOTLINE")
    _write(corpus, folder, name, ds, QUARANTINED, "screen save: burned-in risk whatever BurnedInAnnotation says")

    # -- study 2 (ISO_IR 192, UTF-8): Polish name, Cyrillic free text (another person)
    name = "s2_ct_utf8.dcm"
    ds = _ct(corpus, name, P2, s2, "s2", instance=1)
    ds.StudyDescription = "PET/CT Rb-82 rest stress ŁUKASZEWSKIQ"
    ds.SeriesDescription = "CTAC 3mm B30f AC"
    ds.ImageComments = "Врач ЖДАНОВИЧЕВА, тел. 8-495-7418529"
    ds.PatientComments = "Pani ŚWIERSZCZYŃSKA dzwoniła, ul. Bociankowa 7, 00-950 Warszawa"
    corpus.plant(name, "StudyDescription", "ŁUKASZEWSKIQ")
    corpus.plant(name, "ImageComments", "ЖДАНОВИЧЕВА", "7418529")
    corpus.plant(name, "PatientComments", "ŚWIERSZCZYŃSKA", "Bociankowa")
    _write(corpus, folder, name, ds, WRITTEN, "UTF-8 (ISO_IR 192) names and free text; object written")
    name = "s2_pet_utf8.dcm"
    ds = _pet(corpus, name, P2, s2, "s2", instance=1)
    ds.StudyDescription = "PET/CT Rb-82 rest stress"
    ds.SeriesDescription = "PET AC rest Rb-82 ЖДАНОВИЧЕВА"
    corpus.plant(name, "SeriesDescription", "ЖДАНОВИЧЕВА")
    _write(corpus, folder, name, ds, WRITTEN, "UTF-8 (ISO_IR 192) name in PatientName and a description")

    # -- study 3 (ISO 2022 IR 87, Japanese): name in PatientName and in free text
    name = "s3_ct_japanese.dcm"
    ds = _ct(corpus, name, P3, s3, "s3", instance=1)
    ds.StudyDescription = "PET/CT Rb-82 rest stress"
    ds.SeriesDescription = "CTAC 3mm B30f AC"
    ds.ImageComments = "鰐淵川蛸太郎丸様 連絡済"
    ds.PatientComments = "家族 わにぶちがわ 連絡先 烏賊野墨子"
    corpus.plant(name, "ImageComments", "鰐淵川", "蛸太郎丸")
    corpus.plant(name, "PatientComments", "わにぶちがわ", "烏賊野墨子")
    _write(corpus, folder, name, ds, WRITTEN, "ISO 2022 IR 87 (Japanese) name in PatientName and free text")
    name = "s3_pet_japanese.dcm"
    ds = _pet(corpus, name, P3, s3, "s3", instance=1)
    ds.StudyDescription = "PET/CT Rb-82 鰐淵川 rest stress"
    ds.SeriesDescription = "PET AC rest Rb-82"
    corpus.plant(name, "StudyDescription", "鰐淵川")
    _write(corpus, folder, name, ds, WRITTEN, "ISO 2022 IR 87 (Japanese) name in a description")
    return corpus


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/deid/phi_corpus.py OUT_DIR", file=sys.stderr)
        return 2
    corpus = write_corpus(Path(argv[0]))
    print(json.dumps(corpus.manifest(), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
