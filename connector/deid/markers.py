"""What every de-identified object says about itself, and its rebuilt file meta.

PS3.15 asks a de-identifier to declare what it did: PatientIdentityRemoved, the method text and
the CID 7050 codes of the profile and options, and whether dates were kept, shifted or removed.
The markers are the same for every object of a profile, so they are encoded once per transfer
syntax family and inserted as encoded elements.
"""

from __future__ import annotations

import io

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset as read_encoded_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from connector.deid.profile import Profile
from connector.deid.rulefile import MethodCode

IMPLEMENTATION_VERSION = "SITE_CONNECTOR"
CLEAN_PIXEL_CODE = MethodCode("113101", "Clean Pixel Data Option")


class MissingInstanceUids(Exception):
    pass


class Markers:
    def __init__(self, profile: Profile) -> None:
        codes = profile.code_values
        self._methods = [m[:64] for m in profile.methods] or [f"site-connector {profile.name}"[:64]]
        self._codes = profile.codes
        self.temporal = "MODIFIED" if "113107" in codes else "UNMODIFIED" if "113106" in codes else "REMOVED"
        self._encoded: dict[bool, list[RawDataElement]] = {}  # per implicit-VR flag, little endian

    def dataset(self, extra_codes: list[MethodCode]) -> Dataset:
        markers = Dataset()
        markers.PatientIdentityRemoved = "YES"
        markers.DeidentificationMethod = self._methods if len(self._methods) > 1 else self._methods[0]
        items = Sequence()
        for code in list(self._codes) + extra_codes:
            item = Dataset()
            item.CodeValue = code.value
            item.CodingSchemeDesignator = code.scheme
            item.CodeMeaning = code.meaning[:64]
            items.append(item)
        markers.DeidentificationMethodCodeSequence = items
        markers.LongitudinalTemporalInformationModified = self.temporal
        return markers

    def apply(self, ds: Dataset, extra_codes: list[MethodCode]) -> None:
        """Set the markers and rebuild the file meta (so nothing of the original meta survives)."""
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if not sop_uid or not sop_class:
            raise MissingInstanceUids()
        old_meta = ds.file_meta if getattr(ds, "file_meta", None) is not None else FileMetaDataset()
        syntax = old_meta.get("TransferSyntaxUID")
        if syntax is None:
            implicit, little = getattr(ds, "original_encoding", (True, True))
            syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        syntax = UID(str(syntax))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = syntax
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta
        ds.preamble = None  # a vendor preamble may carry anything: write 128 zero bytes

        if extra_codes or syntax.is_deflated or not syntax.is_little_endian:
            markers = self.dataset(extra_codes)
            for key in list(markers.keys()):
                ds[key] = markers[key]
            return
        implicit = syntax.is_implicit_VR
        cached = self._encoded.get(implicit)
        if cached is None:
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = implicit, True
            write_dataset(fp, self.dataset([]))
            parsed = read_encoded_dataset(io.BytesIO(fp.getvalue()), implicit, True)
            cached = [parsed.get_item(key) for key in sorted(parsed.keys())]
            self._encoded[implicit] = cached
        for raw in cached:
            ds[raw.tag] = raw
