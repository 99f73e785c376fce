"""The de-identification engine: compiled rules, one walk per object, the PHI guard on the result.

Per object: read (junk refused) -> collect the original identifiers for the guard -> filters ->
subject from the identity provider -> optional pixel cleaning -> one walk over the elements at
every depth -> markers and file meta -> encode -> PHI guard on the encoded bytes. Anything that
goes wrong after reading quarantines the object; nothing half-processed is ever returned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset

from connector import phi_guard
from connector.deid.codestream import CodestreamRefused, clean_pixel_codestreams
from connector.deid.compiler import CompiledRules
from connector.deid.filters import (
    ObjectFilters,
    PixelCleaningRefused,
    clean_pixel_regions,
)
from connector.deid.markers import CLEAN_PIXEL_CODE, Markers, MissingInstanceUids
from connector.deid.profile import Profile, load_profile
from connector.deid.provider import IdentityProvider, PatientIdentity
from connector.deid.reading import Unreadable, read_dataset
from connector.deid.rulefile import MethodCode
from connector.deid.values import UidMapper, name_parts
from connector.deid.walker import (
    ElementWalker,
    ObjectContext,
    RuleFailure,
    value_strings,
)
from connector.deid.writer import encode_file
from connector.phi_guard.burned_in_text import OcrHeader, header_facts
from connector.vocabulary import load_vocabulary

if TYPE_CHECKING:
    from connector.config import Config

log = logging.getLogger(__name__)

_ID_TAGS = (0x00100020, 0x00101000, 0x00080050, 0x00100021, 0x00200010)  # patient IDs, accession, issuer, study ID
_WORDS = re.compile(r"[^\W_]+")
DEFAULT_CODEC = "iso8859"  # pydicom's reading of text without a Specific Character Set


def silence_value_warnings() -> None:
    """Turn off pydicom's value validation on reading, process-wide.

    Its warnings quote the offending value (a patient's name that is too long, say) and also go to
    the ``pydicom`` logger, so with validation on, identifiers would reach logs and stderr. Values
    the engine writes are produced by the engine; the PHI guard re-checks every output.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


@dataclass(frozen=True)
class ObjectResult:
    """What happened to one object. ``data`` is the de-identified encoding when ``status == "ok"``."""

    status: str  # "ok" | "quarantine" | "skip"
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = field(default=None, repr=False)
    sop_instance_uid: str = ""
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    sop_class_uid: str = ""
    modality: str = ""
    pseudonym: str = ""
    # Site-only linkage facts for IdentityProvider.record_study; never logged or pushed.
    original_study_uid: str = field(default="", repr=False)
    accession_number: str = field(default="", repr=False)
    # For the study-level name check (connector.deid.study): the person-name tokens of this object
    # (and of the study as known when it was processed), and the tokens of its retained free text.
    person_names: frozenset[str] = field(default=frozenset(), repr=False)
    free_text_tokens: frozenset[str] = field(default=frozenset(), repr=False)
    # For the study's burned-in text check (connector.deid.study.BurnedInTextCheck), from the header
    # read here, so no header is read twice: how to choose the object for OCR (None: the object could
    # not be read) and, for a de-identified object, the original's identifiers that OCR looks for.
    ocr_header: OcrHeader | None = field(default=None, repr=False)
    identifiers: phi_guard.Identifiers | None = field(default=None, repr=False, compare=False)


_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                              "1.2.840.10008.1.2.1.99", ""})


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""


def _codec(ds: Dataset) -> str | None:
    """The one Python codec of the object's text, or None for multi-codec (ISO 2022) character sets."""
    raw = ds.get("SpecificCharacterSet")
    if not raw:
        return DEFAULT_CODEC
    names = [str(v).strip() for v in (raw if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue"
                                      else [raw])]
    try:
        codecs = convert_encodings(names)
    except Exception:
        return None
    return codecs[0] if len(codecs) == 1 else None


class DeidEngine:
    """Compiled rules + identity provider. Reusable across studies; safe to share between threads."""

    def __init__(self, profile: Profile, provider: IdentityProvider, *, site_id: str = "SITE01",
                 fsync: bool = True, raw_sequences: bool = True, vocabulary: frozenset[str] | None = None,
                 allowed_texts: frozenset[str] = frozenset()) -> None:
        silence_value_warnings()
        self.vocabulary = load_vocabulary() if vocabulary is None else vocabulary
        self.profile = profile
        self.rules = CompiledRules(profile)
        self.provider = provider
        self.site_id = site_id
        self.fsync = fsync
        self.uid = UidMapper(provider.uid_secret())
        codes = profile.code_values
        self.guard_policy = phi_guard.GuardPolicy(uids="113110" not in codes, institution="113112" not in codes,
                                                  device_uids="113109" not in codes, vocabulary=self.vocabulary,
                                                  allowed_classes=profile.accepted_sop_classes(),
                                                  allowed_texts=allowed_texts,
                                                  permitted_classes=profile.permitted_sop_classes())
        self._permitted_classes = profile.permitted_sop_classes()
        self._filters = ObjectFilters(profile.filters, profile.pixel_regions)
        self._walker = ElementWalker(self.rules, self.uid, raw_sequences=raw_sequences)
        self._markers = Markers(profile)

    @classmethod
    def from_config(cls, config: Config, provider: IdentityProvider) -> DeidEngine:
        """The engine the daemon and the ``deid`` command use: ``[deid] rules`` or the shipped default."""
        from connector.deid.rule_sources import rule_paths, vocabulary_files

        vocabulary = load_vocabulary(config.deid.extra_vocabulary, vocabulary_files(config))
        return cls(load_profile(rule_paths(config)), provider, site_id=config.site.id, fsync=config.storage.fsync,
                   vocabulary=vocabulary)

    @classmethod
    def from_rules(cls, paths: Sequence[str | Path] | None, provider: IdentityProvider, *,
                   site_id: str = "SITE01", fsync: bool = True) -> DeidEngine:
        return cls(load_profile(paths), provider, site_id=site_id, fsync=fsync)

    # -- entry points -----------------------------------------------------------------------------

    def process_path(self, path: Path, study_names: frozenset[str] = frozenset()) -> ObjectResult:
        try:
            data = Path(path).read_bytes()
        except IsADirectoryError:
            return ObjectResult("quarantine", "not-a-file")
        return self.process_bytes(data, study_names)

    def process_bytes(self, data: bytes, study_names: frozenset[str] = frozenset()) -> ObjectResult:
        try:
            ds = read_dataset(data)
        except Unreadable as exc:
            return ObjectResult("quarantine", exc.code)
        return self.process_dataset(ds, study_names)

    def process_dataset(self, ds: Dataset, study_names: frozenset[str] = frozenset()) -> ObjectResult:
        """De-identify ``ds`` in place and encode it; the input dataset is consumed.

        The result also carries what the study's OCR check needs from the original header
        (``ocr_header``, ``identifiers``), so the study step never reads a header twice.

        ``study_names``: name tokens of the person-name elements of the study known so far (all of
        them: :func:`connector.phi_guard.study_name_tokens`; or those of the objects already
        processed, with :class:`connector.deid.study.StudyNameCheck` checking the rest at the end).
        The cleaner and the PHI guard refuse them in free text, as the object's own person names.
        """
        header = header_facts(ds, self.guard_policy.allowed_classes)  # before the walk changes ds
        return replace(self._process(ds, study_names), ocr_header=header)

    def _process(self, ds: Dataset, study_names: frozenset[str]) -> ObjectResult:
        try:
            identifiers = phi_guard.collect_identifiers(ds, study_names)
            verdict = self._filters.evaluate(ds)
        except Exception as exc:
            return ObjectResult("quarantine", "unreadable", {"error": type(exc).__name__})
        if verdict.action != "accept":
            return ObjectResult(verdict.action, verdict.reason, {"filter": verdict.filter_id},
                                person_names=identifiers.person_names)
        refused = self._refused_class(ds)
        if refused is not None:
            return ObjectResult("quarantine", f"object-class-not-allowed:{refused}",
                                {"sop_class_uid": refused, "sop_class": sop_class_name(refused)},
                                person_names=identifiers.person_names)
        try:
            identity, study_date, study_uid, accession = self._identity(ds)
            deny = self._deny_tokens(ds)
            codec = _codec(ds)
        except Exception as exc:
            return ObjectResult("quarantine", "unreadable", {"error": type(exc).__name__})
        if not identity.patient_id:
            return ObjectResult("quarantine", "missing-patient-id")
        # Provider failures (linkage table unavailable) propagate: that is not the object's fault.
        subject = self.provider.subject_for(identity, study_date=study_date)
        ctx = ObjectContext(subject.pseudonym, subject.date_offset_days, self.site_id, codec, self.vocabulary,
                            deny + [t.upper() for t in study_names])
        extra_codes: list[MethodCode] = []
        try:
            if verdict.pixel_rule is not None:
                clean_pixel_regions(ds, verdict.pixel_rule)
                extra_codes.append(CLEAN_PIXEL_CODE)
            sop_class = str(ds.get("SOPClassUID", "") or "").strip(" \x00")
            self._walker.walk(ds, ctx, top=self.rules.for_class(sop_class))  # the IOD's types at top level
            ctx.codestream_segments += clean_pixel_codestreams(ds, _transfer_syntax(ds))
            retained = retained_graphics(ds)
            if retained:
                return ObjectResult("quarantine", retained, {"privacy": ctx.report()})
            self._markers.apply(ds, extra_codes)
            data = encode_file(ds)
        except CodestreamRefused as exc:
            return ObjectResult("quarantine", exc.code, {"privacy": ctx.report()})
        except PixelCleaningRefused as exc:
            return ObjectResult("quarantine", exc.code, {"rule": verdict.pixel_rule.id if verdict.pixel_rule else ""})
        except RuleFailure as exc:
            log.warning("rule failed", extra={"event": "deid_rule_failed", "action": exc.action,
                                              "tag": f"{exc.tag:08X}", "error": exc.cause})
            return ObjectResult("quarantine", "rule-error", {"tag": f"({exc.tag >> 16:04X},{exc.tag & 0xFFFF:04X})",
                                                             "action": exc.action, "error": exc.cause})
        except MissingInstanceUids:
            return ObjectResult("quarantine", "missing-uid")
        except Exception as exc:
            log.warning("encoding failed", extra={"event": "deid_encode_failed", "error": type(exc).__name__})
            return ObjectResult("quarantine", "encode-error", {"error": type(exc).__name__})
        report = ctx.report()
        seen: set[str] = set()
        findings = phi_guard.check_output(data, identifiers, self.guard_policy, seen)
        if _transfer_syntax(ds) not in _NATIVE_SYNTAXES and "PixelData" in ds:
            findings += phi_guard.codestream_findings(ds.PixelData, int(ds.get("NumberOfFrames", 1) or 1))
        if findings:
            log.warning("PHI guard stopped an object", extra={"event": "phi_guard_hit",
                                                               "codes": sorted({f.code for f in findings})})
            return ObjectResult("quarantine", findings[0].code,
                                {"findings": [f.as_dict() for f in findings[:50]], "privacy": report},
                                person_names=identifiers.person_names)
        return ObjectResult(
            "ok",
            details={"privacy": report},
            data=data,
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            modality=str(ds.get("Modality", "")),
            pseudonym=subject.pseudonym,
            original_study_uid=study_uid,
            accession_number=accession,
            person_names=identifiers.person_names,
            free_text_tokens=frozenset(seen),
            identifiers=identifiers,
        )

    def _refused_class(self, ds: Dataset) -> str | None:
        """The object's SOP Class UID when the profile's allow-list does not name it (fail closed:
        an absent or unreadable class is refused too); None when it may go on."""
        if self._permitted_classes is None:
            return None
        try:
            sop_class = str(ds.get("SOPClassUID", "") or "").strip(" \x00")
        except Exception:
            sop_class = ""
        if sop_class in self._permitted_classes:
            return None
        return sop_class if re.fullmatch(r"[0-9.]{1,64}", sop_class) else "invalid"

    # -- identity ---------------------------------------------------------------------------------

    @staticmethod
    def _identity(ds: Dataset) -> tuple[PatientIdentity, str, str, str]:
        def text(keyword: str) -> str:
            v = ds.get(keyword)
            return "" if v is None else str(v).strip(" \x00")

        identity = PatientIdentity(
            patient_id=text("PatientID"),
            issuer=text("IssuerOfPatientID"),
            name=text("PatientName"),
            birth_date=text("PatientBirthDate"),
            sex=text("PatientSex"),
        )
        return identity, text("StudyDate"), text("StudyInstanceUID"), text("AccessionNumber")

    def _deny_tokens(self, ds: Dataset) -> list[str]:
        """Tokens the free-text cleaner refuses even where the vocabulary has them: the parts of every
        top-level person name and the words of the IDs and the accession number."""
        tokens: list[str] = []
        decide = self.rules.public
        for key in ds.keys():
            tag = int(key)
            if not tag & 0x10000 and decide(tag).vr == "PN":
                for v in value_strings(ds[key].value):
                    tokens.extend(name_parts(v))
        for tag in _ID_TAGS:
            if tag in ds:
                for v in value_strings(ds[tag].value):
                    tokens.extend(_WORDS.findall(v))
        return [t.upper() for t in tokens]


def sop_class_name(uid: str) -> str:
    """The SOP class's name from the DICOM registry ("" for a private or unknown class)."""
    from pydicom.uid import UID_dictionary

    entry = UID_dictionary.get(uid)
    return str(entry[0]) if entry else ""


def retained_graphics(ds: Dataset) -> str:
    """A quarantine reason when the walk kept an icon image or overlay planes (text can be drawn in
    them: PS3.15 removes them, and a profile that keeps them cannot be trusted with them), else ''."""
    for key in ds.keys():
        tag = int(key)
        if tag == 0x00880200:
            return "icon-image-retained"
        if 0x6000 <= tag >> 16 <= 0x601E and not (tag >> 16) & 1:
            return "overlay-retained"
    return ""
