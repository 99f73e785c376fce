"""Words a site could add to its free-text vocabulary, proposed from its own studies.

A word is proposed only when it is common and impersonal: written in descriptions of at least
``min_patients`` different patients, and never seen in any person-name element anywhere in the
folder (so a surname that is also a protocol word is never proposed). The result carries counts,
never which patient had which word; patients are told apart in memory by a hash of ID and issuer.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from connector.deid.values import name_parts

_TOKEN = re.compile(r"[^\W_]+")
# The descriptions the registry keeps (rules/registry-descriptors.yaml) and the comments a site may
# decide to keep in its own rule file: where a site's own words show up.
DESCRIPTIVE_KEYWORDS = (
    "StudyDescription", "SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription",
    "RequestedProcedureDescription", "ScheduledProcedureStepDescription", "AcquisitionDeviceProcessingDescription",
    "AcquisitionProtocolDescription", "DerivationDescription", "ContrastBolusAgent", "ImageComments",
)


@dataclass
class Suggestion:
    files_read: int = 0
    files_unreadable: int = 0
    patients: int = 0
    words_seen: int = 0
    words_known: int = 0
    words_in_names: int = 0
    words_too_rare: int = 0
    proposed: list[tuple[str, int]] = field(default_factory=list)  # (word, distinct patients)

    def as_dict(self) -> dict[str, object]:
        return {"files_read": self.files_read, "files_unreadable": self.files_unreadable,
                "patients": self.patients, "words_seen": self.words_seen, "words_known": self.words_known,
                "words_in_person_names": self.words_in_names, "words_too_rare": self.words_too_rare,
                "proposed": [{"word": w, "patients": n} for w, n in self.proposed]}


def _person_name_words(ds: Dataset, out: set[str], depth: int = 0) -> None:
    for elem in ds:
        if elem.VR == "PN" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            for v in values:
                out.update(p.upper() for p in name_parts(str(v)))
        elif elem.VR == "SQ" and depth < 16:
            for item in elem.value or ():
                _person_name_words(item, out, depth + 1)


def suggest_words(files: Iterable[Path], vocabulary: frozenset[str], min_patients: int = 20) -> Suggestion:
    result = Suggestion()
    patients_of: dict[str, set[bytes]] = defaultdict(set)
    names: set[str] = set()
    all_patients: set[bytes] = set()
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:
            result.files_unreadable += 1
            continue
        result.files_read += 1
        patient = hashlib.sha256(f"{ds.get('PatientID', '')}\x00{ds.get('IssuerOfPatientID', '')}"
                                 .encode("utf-8", "replace")).digest()
        all_patients.add(patient)
        _person_name_words(ds, names)
        for keyword in DESCRIPTIVE_KEYWORDS:
            value = ds.get(keyword)
            for text in ([str(v) for v in value] if isinstance(value, (list, tuple)) or
                         type(value).__name__ == "MultiValue" else [str(value or "")]):
                for word in _TOKEN.findall(text):  # letters-only tokens: codes and numbers are shapes
                    if len(word) >= 2 and word.isascii() and word.isalpha():
                        patients_of[word.upper()].add(patient)
    result.patients = len(all_patients)
    result.words_seen = len(patients_of)
    for word, patients in sorted(patients_of.items()):
        if word in vocabulary:
            result.words_known += 1
        elif word in names:
            result.words_in_names += 1
        elif len(patients) < min_patients:
            result.words_too_rare += 1
        else:
            result.proposed.append((word, len(patients)))
    result.proposed.sort(key=lambda item: (-item[1], item[0]))
    return result
