"""Object classes and parts that can carry identifiers where no text check can see them.

An encapsulated document (PDF, CDA, STL, ...) is a file of its own; ultrasound, secondary capture,
screen saves, video and visible-light photographs can have names typed into their pixels; icon
images and overlay planes can hold drawn text. The guard refuses an output that still is or holds
one of these, unless the profile explicitly accepts the class (documents, or pixels with no rule)
or its pixels were cleaned by a pixel-region rule (the output then carries the Clean Pixel Data
Option code, 113101, in its De-identification Method Code Sequence).
"""

from __future__ import annotations

from collections.abc import Iterable

from connector.phi_guard.scanner_types import Finding

DOCUMENT_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA
    "1.2.840.10008.5.1.4.1.1.104.3",  # Encapsulated STL
    "1.2.840.10008.5.1.4.1.1.104.4",  # Encapsulated OBJ
    "1.2.840.10008.5.1.4.1.1.104.5",  # Encapsulated MTL
})
PIXEL_RISK_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6.2", "1.2.840.10008.5.1.4.1.1.3.1",  # ultrasound
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",  # secondary capture
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1", "1.2.840.10008.5.1.4.1.1.77.1.2.1",  # video endoscopic, microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # video photographic
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL photographic image (a photograph of the patient)
    "1.2.840.10008.5.1.4.1.1.77.1.1", "1.2.840.10008.5.1.4.1.1.77.1.2",  # VL endoscopic, microscopic
})
CLEAN_PIXEL_CODE = "113101"
_ICON = "(0088,0200)"


def risky_object_findings(elements: Iterable[tuple[str, int, str]], allowed: frozenset[str],
                          permitted: frozenset[str] | None = None) -> list[Finding]:
    """``elements``: (path prefix, tag, short text value or '') for every element of the output.

    ``permitted``: the profile's object-class allow-list (None: no list); a class not on it is refused.
    """
    findings: list[Finding] = []
    sop_class = modality = ""
    image_type: list[str] = []
    codes: set[str] = set()
    for prefix, tag, text in elements:
        group, element = tag >> 16, tag & 0xFFFF
        if tag == 0x00880200 or _ICON in prefix:
            findings.append(Finding("phi-guard:icon-image", prefix or "(0088,0200)"))
        elif 0x6000 <= group <= 0x601E and not group & 1:
            findings.append(Finding("phi-guard:overlay", f"{prefix}({group:04X},{element:04X})"))
        elif not prefix and tag == 0x00080016:
            sop_class = text
        elif not prefix and tag == 0x00080060:
            modality = text.upper()
        elif not prefix and tag == 0x00080008:
            image_type = [v.strip().upper() for v in text.split("\\")]
        elif tag == 0x00080100 and "(0012,0064)" in prefix:
            codes.add(text)
    if permitted is not None and sop_class not in permitted:
        findings.append(Finding("phi-guard:object-class", "(0008,0016)"))
    if sop_class in allowed:
        return findings[:1] if findings else []
    if sop_class in DOCUMENT_CLASSES:
        findings.append(Finding("phi-guard:document-object", "(0008,0016)"))
    pixel_risk = sop_class in PIXEL_RISK_CLASSES or modality in ("US", "IVUS", "XC", "ES", "GM", "SM") \
        or "SCREEN SAVE" in image_type
    if pixel_risk and CLEAN_PIXEL_CODE not in codes:
        findings.append(Finding("phi-guard:pixel-text-risk", "(0008,0016)"))
    return findings
