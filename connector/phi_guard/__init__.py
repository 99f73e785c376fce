"""The PHI guard: an independent last check on every de-identified object before it leaves.

It shares no code with the rule engine (:mod:`connector.deid`) on purpose: a bug in a rule, in the
rule loader or in the element walker must not also blind the check. It knows only what the
original object said about the patient and looks for it again, in every value at every depth
of the re-parsed output and in the raw bytes; it refuses retained free text holding anything
not known to be safe, and object classes or parts (documents, pixels with possible burned-in
text, icons, overlays) that no text check can see into. Findings carry reason codes and tag paths, never the
matched value, so they can be logged and written into quarantine records.

Text burned into pixels is read by OCR (:func:`check_pixels`, :mod:`connector.phi_guard.burned_in_text`):
too costly for every object, so the study step chooses which objects it reads.
"""

from connector.phi_guard.burned_in_text import check_pixels
from connector.phi_guard.codestream_text import codestream_findings
from connector.phi_guard.freetext import late_name_hits
from connector.phi_guard.identifiers import Identifiers, collect_identifiers, study_name_tokens
from connector.phi_guard.scanner import (
    Finding,
    GuardPolicy,
    check_bytes,
    check_dataset,
    check_output,
)

__all__ = [
    "Finding",
    "GuardPolicy",
    "Identifiers",
    "check_bytes",
    "check_dataset",
    "check_output",
    "check_pixels",
    "codestream_findings",
    "collect_identifiers",
    "late_name_hits",
    "study_name_tokens",
]
