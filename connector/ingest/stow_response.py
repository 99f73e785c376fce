"""The STOW-RS answer (PS3.18 10.5.3): per-part outcomes, the HTTP status, and the response body
in the DICOM JSON model or the PS3.19 Native DICOM Model (XML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

OUT_OF_RESOURCES = 0xA700
SOP_CLASS_REFUSED = 0xA900  # "Data Set does not match SOP Class": here, a class we do not accept
CANNOT_UNDERSTAND = 0xC000
JSON_TYPE = "application/dicom+json"
XML_TYPE = "application/dicom+xml"


@dataclass
class Outcome:
    """What happened to one part: stored (``reason`` None) or failed with a PS3.18 FailureReason."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    reason: int | None = None


@dataclass
class StowResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def stored(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.reason is None]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.reason is not None]

    @property
    def status(self) -> int:
        """200 all stored, 202 some, 409 none (PS3.18 table 10.5.3-1)."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409


def _item(o: Outcome) -> list[tuple[str, str, str, Any]]:
    elems: list[tuple[str, str, str, Any]] = []
    if o.sop_class_uid:
        elems.append(("00081150", "UI", "ReferencedSOPClassUID", o.sop_class_uid))
    if o.sop_instance_uid:
        elems.append(("00081155", "UI", "ReferencedSOPInstanceUID", o.sop_instance_uid))
    if o.reason is not None:
        elems.append(("00081197", "US", "FailureReason", o.reason))
    return elems


def response_json(result: StowResult) -> dict[str, Any]:
    """The Store Instances Response Module in the DICOM JSON model (PS3.18 F.2)."""
    body: dict[str, Any] = {}
    for tag, items in (("00081198", result.failed), ("00081199", result.stored)):
        if items:
            body[tag] = {"vr": "SQ", "Value": [{t: {"vr": vr, "Value": [v]} for t, vr, _, v in _item(o)}
                                               for o in items]}
    return body


def response_xml(result: StowResult) -> str:
    """The same response in the PS3.19 Native DICOM Model (``application/dicom+xml``)."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">']
    for tag, keyword, items in (("00081198", "FailedSOPSequence", result.failed),
                                ("00081199", "ReferencedSOPSequence", result.stored)):
        if not items:
            continue
        out.append(f'<DicomAttribute tag="{tag}" vr="SQ" keyword="{keyword}">')
        for n, o in enumerate(items, 1):
            out.append(f'<Item number="{n}">')
            for t, vr, kw, v in _item(o):
                out.append(f'<DicomAttribute tag="{t}" vr="{vr}" keyword="{kw}"><Value number="1">'
                           f'{escape(str(v))}</Value></DicomAttribute>')
            out.append("</Item>")
        out.append("</DicomAttribute>")
    out.append("</NativeDicomModel>")
    return "\n".join(out)


def choose_media_type(accept: str) -> str | None:
    """The response type for an Accept header: dicom+json (default), dicom+xml, or None (406)."""
    if not accept.strip():
        return JSON_TYPE
    for entry in accept.split(","):
        kind = entry.split(";")[0].strip().lower()
        if kind in (JSON_TYPE, "application/json", "*/*", "application/*"):
            return JSON_TYPE
        if kind in (XML_TYPE, "application/xml", "text/xml"):
            return XML_TYPE
    return None
