"""Scan a de-identified object for the original identifiers: every value at every depth, and the bytes.

Text values are decoded with the object's character set and searched with one compiled pattern per
patient (cached). The raw byte scan catches what a parser would not show (values in UN elements,
odd encodings, padding); it skips only the pixel data itself, whose bytes are an image.

Why one module, long as it is: the guard is independent of the engine on purpose, and its
value walk and byte scan share one per-patient pattern; apart, the two would each need it passed.
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from connector.phi_guard.encoded_items import (
    EncodedWalkError,
    encoded_values,
    part10_values,
)
from connector.phi_guard.freetext import free_text_problem, free_text_tokens, is_free_text
from connector.phi_guard.identifiers import Identifiers
from connector.phi_guard.risky_objects import risky_object_findings
from connector.phi_guard.scanner_types import Finding
from connector.vocabulary import shipped_vocabulary

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT", "UN"})
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
# Elements whose short values the structure check reads: SOP class, modality, image type, code values.
_SHORT_VALUES = frozenset({0x00080016, 0x00080060, 0x00080008, 0x00080100})
_MAX_DEPTH = 32


@dataclass(frozen=True)
class GuardPolicy:
    """Which kinds to look for. Turn a kind off only when the profile retains it on purpose
    (PS3.15 Retain UIDs / Retain Institution Identity / Retain Device Identity options)."""

    uids: bool = True
    institution: bool = True
    device_uids: bool = True  # off under the Retain Device Identity option (device UIDs and labels)
    # The words retained free text may hold (None: the shipped vocabulary).
    vocabulary: frozenset[str] | None = None
    # SOP classes the profile explicitly lets through although they can carry identifiers in their
    # pixels or document (an ``accept`` filter); everything else of those classes is refused.
    allowed_classes: frozenset[str] = frozenset()
    # Whole text values the connector itself wrote (the model's name, version and SHA-256 in its own
    # CAC report): exempt from the free-text shape check only, still searched for every identifier.
    allowed_texts: frozenset[str] = frozenset()
    # Every SOP class that may leave at all (the profile's object-class allow-list); any other class
    # is refused. None: the profile lists none (a bare PS3.15 profile), no class check.
    permitted_classes: frozenset[str] | None = None

    def words(self) -> frozenset[str]:
        return shipped_vocabulary() if self.vocabulary is None else self.vocabulary


# Characters that must not touch a match on either side, per kind (so "ANN" does not hit "ANNOTATION").
_LETTER = "letter"
_ALNUM = "alnum"
_DIGIT = "digit"
_UID = "uid"
_NONE = "none"
_BOUNDARY = {"name_cjk": _NONE,
             "name": _LETTER, "patient_id": _ALNUM, "issuer": _ALNUM, "accession": _ALNUM, "birth_date": _DIGIT,
             "uid": _UID, "institution": _ALNUM}


def _kinds(ids: Identifiers, policy: GuardPolicy) -> list[tuple[str, frozenset[str]]]:
    kinds = [("name", ids.name_parts), ("patient_id", ids.patient_ids), ("issuer", ids.issuers),
             ("accession", ids.accession_numbers), ("birth_date", ids.birth_dates)]
    if policy.uids:
        kinds.append(("uid", ids.uids))
        if policy.device_uids:
            kinds.append(("uid", ids.device_uids))
    if policy.institution:
        kinds.append(("institution", ids.institutions))
    return kinds


def _trie_pattern(literals: list, as_bytes: bool):
    """One regular expression for many literals, as a trie: shared prefixes (UIDs share long roots)
    are matched once instead of once per literal. Words of a phrase (an institution) may be
    separated by any run of white space; longer literals are preferred (greedy optional tails)."""
    empty, space, flexible = (b"", b" ", rb"\s+") if as_bytes else ("", " ", r"\s+")
    root: dict = {}
    for literal in literals:
        node = root
        for i, word in enumerate(literal.split(space)):
            if not word:
                continue
            if i and node is not root:
                node = node.setdefault(flexible, {})
            for j in range(len(word)):
                node = node.setdefault(re.escape(word[j:j + 1]), {})
        node[empty] = {}

    def build(node: dict):
        branches = [token + build(child) for token, child in node.items() if token != empty]
        if not branches:
            return empty
        if len(branches) == 1 and empty not in node:
            return branches[0]
        body = (b"(?:" if as_bytes else "(?:") + (b"|" if as_bytes else "|").join(branches) + (b")" if as_bytes else ")")
        return body + (b"?" if as_bytes else "?") if empty in node else body

    return build(root)


class _Matcher:
    """A plain alternation of literals searched in upper-cased text, boundaries checked after.

    Named groups, look-behinds or IGNORECASE would stop the regex engine from skipping ahead to
    candidate first characters, which makes scanning several times slower.
    """

    def __init__(self, literals: dict, as_bytes: bool) -> None:
        self.kind_of = literals
        self.as_bytes = as_bytes
        self.space = b" " if as_bytes else " "
        self.pattern = re.compile(_trie_pattern(list(literals), as_bytes)) if literals else None

    def _outside(self, text, index: int, boundary: str) -> bool:
        if index < 0 or index >= len(text) or boundary == _NONE:
            return True
        c = text[index]
        if self.as_bytes:
            if boundary == _LETTER:
                return not (65 <= c <= 90 or 97 <= c <= 122 or c >= 128)
            if boundary == _DIGIT:
                return not 48 <= c <= 57
            if boundary == _UID:
                return not (48 <= c <= 57 or c == 46)
            return not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122)
        if boundary == _LETTER:
            return not c.isalpha()
        if boundary == _DIGIT:
            return not c.isdigit()
        if boundary == _UID:
            return not (c.isdigit() or c == ".")
        return not (c.isascii() and c.isalnum())

    def search(self, upper_text) -> str | None:
        if self.pattern is None:
            return None
        for m in self.pattern.finditer(upper_text):
            found = m.group()
            kind = self.kind_of.get(found) or self.kind_of[self.space.join(found.split())]
            boundary = _BOUNDARY[kind]
            if self._outside(upper_text, m.start() - 1, boundary) and self._outside(upper_text, m.end(), boundary):
                return kind
        return None


def _kind(kind: str, value: str) -> str:
    """Names in scripts written without spaces (CJK) cannot need a letter boundary."""
    if kind == "name" and any(ord(c) >= 0x2E80 for c in value):
        return "name_cjk"
    return kind


@functools.lru_cache(maxsize=512)
def _text_matcher(ids: Identifiers, policy: GuardPolicy) -> _Matcher:
    literals: dict[str, str] = {}
    for kind, values in _kinds(ids, policy):
        for v in values:
            literals.setdefault(v.upper(), _kind(kind, v))
    return _Matcher(literals, as_bytes=False)


# Single-codec character sets whose bytes for a name are the same wherever it stands (ISO 2022's
# escape sequences are not: those values are found by the decoded-text search).
_BYTE_CODECS = ("utf-8", "latin-1")


@functools.lru_cache(maxsize=512)
def _bytes_matcher(ids: Identifiers, policy: GuardPolicy, codecs: tuple[str, ...] = ()) -> _Matcher:
    literals: dict[bytes, str] = {}
    encodings = _BYTE_CODECS + tuple(c for c in codecs if c not in _BYTE_CODECS and "2022" not in c)
    for kind, values in _kinds(ids, policy):
        for v in values:
            kind = _kind(kind, v)
            for form in (v, v.upper(), v.lower()):
                for encoding in encodings:
                    try:
                        literals.setdefault(form.encode(encoding).upper(), kind)
                    except (UnicodeEncodeError, LookupError):
                        pass
    return _Matcher(literals, as_bytes=True)


def _codecs(ds: Dataset, inherited: list[str]) -> list[str]:
    raw = ds.get_item(0x00080005)
    if raw is None:
        return inherited
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").strip(" \x00").split("\\")
    elif isinstance(value, str):
        value = [value]
    try:
        return convert_encodings([str(v).strip() for v in value or []] or ["ISO_IR 6"])
    except Exception:
        return ["iso8859"]


def _decode(value: bytes, codecs: list[str]) -> str:
    if len(codecs) == 1:
        return value.decode(codecs[0], "replace")
    try:
        return decode_bytes(value, codecs, set())
    except Exception:
        return value.decode("latin-1")


def _scan_encoded(elem: object, codecs: list[str], path: str, texts: list[tuple[str, str, int, str]],
                  elements: list[tuple[str, int, str]]) -> bool:
    """Add the text values of a still-encoded sequence to ``texts`` (and every element to
    ``elements``); False if pydicom must parse it."""
    if type(elem) is not RawDataElement or elem.length == 0xFFFFFFFF or not elem.is_little_endian:
        return False
    try:
        values = encoded_values(elem.value or b"", elem.is_implicit_VR, path)
    except EncodedWalkError:
        return False
    if any(tag == 0x00080005 for _p, tag, _vr, _v in values):
        return False  # an item declares its own character set: let pydicom decode it
    for item_path, tag, vr, value in values:
        elements.append((item_path, tag, value.decode("latin-1").strip(" \x00") if tag in _SHORT_VALUES else ""))
        if vr in _TEXT_VRS:
            texts.append((_decode(value, codecs) if vr != "UN" else value.decode("latin-1"), item_path, tag, vr))
    return True


def _path(prefix: str, tag: int) -> str:
    return f"{prefix}({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _short_value(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[union-attr]
    return str(value or "")


def check_dataset(ds: Dataset, identifiers: Identifiers, policy: GuardPolicy = GuardPolicy(),
                  seen_tokens: set[str] | None = None) -> list[Finding]:
    """Search every string value at every depth of ``ds`` (and its file meta) for the identifiers."""
    matcher = _text_matcher(identifiers, policy)
    findings: list[Finding] = []
    texts: list[tuple[str, str, int, str]] = []  # (text, path prefix, tag, VR), searched together below
    elements: list[tuple[str, int, str]] = []  # (path prefix, tag, short value) for the structure check

    def scan(item: Dataset, codecs: list[str], prefix: str, depth: int) -> None:
        codecs = _codecs(item, codecs)
        for key, elem in list(item.items()):
            tag = int(key)
            vr = elem.VR
            elements.append((prefix, tag, _short_value(elem.value) if tag in _SHORT_VALUES else ""))
            if vr is None or (vr == "UN" and not (tag >> 16) & 1):
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    vr = "UN"
            if vr == "SQ":
                if _scan_encoded(elem, codecs, _path(prefix, tag), texts, elements):
                    continue
                if depth >= _MAX_DEPTH:
                    findings.append(Finding("phi-guard:too-deep", _path(prefix, tag)))
                    continue
                try:
                    seq = item[key].value or []
                except Exception:
                    findings.append(Finding("phi-guard:unparseable", _path(prefix, tag)))
                    continue
                for i, child in enumerate(seq):
                    scan(child, codecs, f"{_path(prefix, tag)}[{i}]>", depth + 1)
                continue
            if vr.split(" or ")[0] not in _TEXT_VRS:
                continue
            value = elem.value
            if value is None:
                continue
            if isinstance(value, bytes):
                text = _decode(value, codecs) if vr != "UN" else value.decode("latin-1")
            elif isinstance(value, str):
                text = value
            elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                text = "\\".join(str(v) for v in value)
            else:
                text = str(value)
            texts.append((text, prefix, tag, vr.split(" or ")[0]))

    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        scan(meta, ["iso8859"], "meta:", 0)
    scan(ds, ["iso8859"], "", 0)
    return (findings + risky_object_findings(elements, policy.allowed_classes, policy.permitted_classes)
            + _free_text_findings(texts, identifiers, policy, seen_tokens)
            + _search_texts(matcher, [t[:3] for t in texts]))


def _search_texts(matcher: _Matcher, texts: list[tuple[str, str, int]]) -> list[Finding]:
    """One search over all values (joined by a separator no identifier contains); only on a hit are
    the values searched one by one, to report where."""
    findings: list[Finding] = []
    if matcher.pattern is None or matcher.search("\n".join(t for t, _, _ in texts).upper()) is None:
        return findings
    for text, prefix, tag in texts:
        kind = matcher.search(text.upper())
        if kind is not None:
            findings.append(Finding(f"phi-guard:{kind}", _path(prefix, tag)))
    if not findings:  # cannot happen (a hit lies inside one value), but never pass a hit silently
        findings.append(Finding("phi-guard:unlocated", "dataset"))
    return findings


def check_bytes(data: bytes, identifiers: Identifiers, policy: GuardPolicy = GuardPolicy(),
                skip: tuple[int, int] | None = None, codecs: tuple[str, ...] = ()) -> list[Finding]:
    """Search the raw bytes for the identifiers (``skip``: a byte span not to scan, the pixel data;
    ``codecs``: the object's character sets, whose encodings of the identifiers are searched too)."""
    matcher = _bytes_matcher(identifiers, policy, codecs)
    if matcher.pattern is None:
        return []
    spans = [(0, len(data))] if skip is None else [(0, skip[0]), (skip[1], len(data))]
    findings = []
    for start, end in spans:
        if end > start:
            kind = matcher.search(data[start:end].upper())
            if kind is not None:
                findings.append(Finding(f"phi-guard:{kind}", "bytes"))
    return findings


def _pixel_span(ds: Dataset) -> tuple[int, int] | None:
    for tag in _PIXEL_TAGS:
        raw = ds.get_item(tag)
        if raw is not None and getattr(raw, "value_tell", None) is not None and isinstance(raw.value, bytes):
            return raw.value_tell, raw.value_tell + len(raw.value)
    return None


def _free_text_findings(texts: list[tuple[str, str, int, str]], identifiers: Identifiers,
                        policy: GuardPolicy, seen_tokens: set[str] | None) -> list[Finding]:
    """Retained free text (text, path prefix, tag, VR) holding anything not known to be safe."""
    findings: list[Finding] = []
    names = identifiers.person_names | identifiers.name_parts
    words = policy.words()
    for text, prefix, tag, vr in texts:
        if is_free_text(tag, vr, policy.device_uids):
            if text.strip(" \x00") in policy.allowed_texts:
                continue
            if seen_tokens is not None:
                seen_tokens.update(free_text_tokens(text))
            problem = free_text_problem(text, words, names)
            if problem:
                findings.append(Finding(f"phi-guard:{problem}", _path(prefix, tag)))
    return findings




def check_output(data: bytes, identifiers: Identifiers, policy: GuardPolicy = GuardPolicy(),
                 seen_tokens: set[str] | None = None) -> list[Finding]:
    """Re-parse ``data`` as written and run every check. Unparseable output is itself a finding.

    ``seen_tokens``, when given, receives every token of the retained free text (upper-cased), so
    a study can check them later against person names it learns from its later objects
    (:func:`late_name_hits`).

    The checks: the patient's identifiers in every text value and in the raw bytes; retained free
    text holding anything not known to be safe; object classes and parts (icons, overlays) that can
    carry identifiers out of sight of any text check. The guard parses with its own reader
    (:mod:`connector.phi_guard.encoded_items`), not with the library that wrote the file; deflated
    or big endian files, and items that declare their own character set, are parsed with pydicom.
    """
    try:
        meta, values, span = part10_values(data)
    except EncodedWalkError:
        return _check_output_with_pydicom(data, identifiers, policy, seen_tokens)
    codecs = ["iso8859"]
    for prefix, tag, _vr, value in values:
        if tag == 0x00080005:
            if prefix:
                return _check_output_with_pydicom(data, identifiers, policy, seen_tokens)
            names = value.decode("ascii", "replace").strip(" \x00").split("\\")
            try:
                codecs = convert_encodings([n.strip() for n in names] or ["ISO_IR 6"])
            except Exception:
                codecs = ["iso8859"]
    texts = [(_decode(value, codecs) if vr != "UN" else value.decode("latin-1"), prefix, tag, vr)
             for prefix, tag, vr, value in meta + values if vr in _TEXT_VRS]
    structure = risky_object_findings(
        ((prefix, tag, value.decode("latin-1").strip(" \x00") if tag in _SHORT_VALUES else "")
         for prefix, tag, _vr, value in values), policy.allowed_classes, policy.permitted_classes)
    return (structure + _free_text_findings(texts, identifiers, policy, seen_tokens)
            + _search_texts(_text_matcher(identifiers, policy), [t[:3] for t in texts])
            + check_bytes(data, identifiers, policy, skip=span, codecs=tuple(codecs)))


def _check_output_with_pydicom(data: bytes, identifiers: Identifiers, policy: GuardPolicy,
                               seen_tokens: set[str] | None) -> list[Finding]:
    try:
        ds = dcmread(io.BytesIO(data))
        findings = check_dataset(ds, identifiers, policy, seen_tokens)
        span = _pixel_span(ds)
        codecs = tuple(_codecs(ds, ["iso8859"]))
    except Exception:
        return [Finding("phi-guard:unparseable", "bytes")]
    return findings + check_bytes(data, identifiers, policy, skip=span, codecs=codecs)
