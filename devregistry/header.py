"""The few header elements the dev registry indexes, read straight from a part's first bytes.

The registry needs about fifteen short elements from the start of every instance it receives;
:mod:`connector.dicom_elements` walks to them in microseconds. Here: the Part 10 file meta (for the
transfer syntax), and which elements are indexed and required. Big endian, deflated, or anything
the walk declines returns None, and the caller reads the file with pydicom instead.
"""

from __future__ import annotations

from connector.dicom_elements import Buffer, element_at, explicit_vr_of, read_leading, tag_at, text

__all__ = ["Buffer", "INDEXED_TAGS", "LAST_TAG", "REQUIRED", "index_header"]

# Indexed elements, by tag; (0020,0013) Instance Number is the last, nothing after it is read.
INDEXED_TAGS: dict[int, str] = {
    0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x00080020: "StudyDate",
    0x00080030: "StudyTime", 0x00080050: "AccessionNumber", 0x00080060: "Modality",
    0x0008103E: "SeriesDescription", 0x00100010: "PatientName", 0x00100020: "PatientID",
    0x00120062: "PatientIdentityRemoved", 0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber", 0x00200013: "InstanceNumber",
}
LAST_TAG = max(INDEXED_TAGS)
REQUIRED = ("SOPInstanceUID", "StudyInstanceUID", "PatientIdentityRemoved")
TRANSFER_SYNTAX_TAG = 0x00020010


def index_header(head: Buffer) -> dict[str, str] | None:
    """The indexed elements as text (missing ones as ""), plus ``TransferSyntaxUID``; None: use pydicom.

    ``head`` is the start of a Part 10 file. The values are de-identified UIDs, codes, dates and
    pseudonyms, read as single-byte text, as pydicom's raw reader would give them.
    """
    size = len(memoryview(head))
    try:
        if bytes(head[128:132]) != b"DICM":
            return None
        pos, syntax = 132, ""
        while pos + 8 <= size and tag_at(head, pos) >> 16 == 0x0002:  # the meta is explicit VR always
            tag, length, start = element_at(head, pos, True)
            if tag == TRANSFER_SYNTAX_TAG:
                syntax = text(head, start, length)
            pos = start + length
    except Exception:  # a malformed file meta group: pydicom gives the precise error
        return None
    explicit = explicit_vr_of(syntax)
    if explicit is None:
        return None
    found = read_leading(head, pos, explicit=explicit, wanted=INDEXED_TAGS, last_tag=LAST_TAG)
    if found is None:
        return None
    out = dict.fromkeys(INDEXED_TAGS.values(), "")
    out.update(found)
    out["TransferSyntaxUID"] = syntax
    return out if all(out[k] for k in REQUIRED) else None
