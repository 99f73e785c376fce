"""The daemon's de-identification step for one stable study: engine, PHI guard, spool, quarantine.

Outputs are written durably (temporary name, fsync, rename) under the de-identified SOP Instance
UID, which identifies nobody. An object that fails anywhere is quarantined with a reason code and
never written to ``out_dir``. Disk errors while writing outputs propagate, so the caller retries
the study later: outputs are idempotent (the same input gives the same file name and bytes).

Text burned into pixels is looked for here, per study, not per object in the engine: which
instances to read (localizers, secondary captures, a sample of every series) needs the study, and
OCR costs too much for every slice (:mod:`connector.phi_guard.burned_in_text`). It runs in the
pipeline's de-identification stage, never in the receiver: at-risk images before their output is
written, the sampled first, middle and last image of each series from their written output once
the study has gone by (the choice needs the whole series, and the headers are read only once, by
the engine), always before the study is handed on (:class:`BurnedInTextCheck`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from connector import phi_guard
from connector.deid.engine import DeidEngine, ObjectResult
from connector.deid.provider import IdentityProvider
from connector.phi_guard import burned_in_text
from connector.store.durable import fsync_dir, write_file_durably
from connector.store.quarantine import quarantine

log = logging.getLogger(__name__)
QUARANTINE_STAGE = "deid"


@dataclass(frozen=True)
class WrittenObject:
    source: Path
    path: Path
    sop_instance_uid: str  # de-identified
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    modality: str
    pseudonym: str


@dataclass(frozen=True)
class QuarantinedObject:
    source: Path
    reason: str  # machine-readable code, e.g. "phi-guard:name", "truncated", "burned-in-annotation"
    entry_id: str


@dataclass(frozen=True)
class SkippedObject:
    source: Path
    reason: str


@dataclass
class PrivacyReport:
    """What de-identification removed and replaced in a study, for a privacy officer's audit:
    counts and tags only, never values."""

    objects: int = 0
    text_values_cleaned: int = 0
    tokens_replaced: int = 0
    spans_replaced: int = 0
    removed: Counter[str] = field(default_factory=Counter)  # tag -> number of objects it was removed from
    pixels_read_for_text: int = 0  # objects whose de-identified pixels were read for burned-in text

    def add(self, details: dict[str, object]) -> None:
        report = details.get("privacy")
        if not isinstance(report, dict):
            return
        self.objects += 1
        self.text_values_cleaned += int(report.get("text_values_cleaned", 0))
        self.tokens_replaced += int(report.get("tokens_replaced", 0))
        self.spans_replaced += int(report.get("spans_replaced", 0))
        self.removed.update(dict(report.get("removed", {})))

    def as_dict(self) -> dict[str, object]:
        return {"objects": self.objects, "text_values_cleaned": self.text_values_cleaned,
                "tokens_replaced": self.tokens_replaced, "spans_replaced": self.spans_replaced,
                "elements_removed": sum(self.removed.values()), "removed_tags": dict(sorted(self.removed.items())),
                "pixels_read_for_text": self.pixels_read_for_text}


@dataclass
class StudyOutcome:
    written: list[WrittenObject] = field(default_factory=list)
    quarantined: list[QuarantinedObject] = field(default_factory=list)
    skipped: list[SkippedObject] = field(default_factory=list)
    privacy: PrivacyReport = field(default_factory=PrivacyReport)
    ocr_seconds: float = 0.0  # time spent reading pixels for burned-in text (headers, decoding, OCR)

    @property
    def study_uids(self) -> list[str]:
        """De-identified Study Instance UIDs written (normally one)."""
        return sorted({w.study_instance_uid for w in self.written})

    @property
    def pseudonyms(self) -> list[str]:
        return sorted({w.pseudonym for w in self.written})

    def summary(self) -> dict[str, object]:
        """Counts and reason codes only: safe to log."""
        return {
            "written": len(self.written),
            "quarantined": dict(Counter(q.reason for q in self.quarantined)),
            "skipped": dict(Counter(s.reason for s in self.skipped)),
            "tokens_replaced": self.privacy.tokens_replaced + self.privacy.spans_replaced,
            "elements_removed": sum(self.privacy.removed.values()),
            "ocr_images": self.privacy.pixels_read_for_text,
            "ocr_seconds": round(self.ocr_seconds, 3),
        }


class StudyNameCheck:
    """Person names of a study, learned from its objects as they go by, so no object needs reading
    twice. An object is checked against the names known when it was processed; at the end,
    :meth:`late_hits` names the written objects whose retained free text holds a name learned only
    from a later object (a physician named in the third object's header, say)."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._written: list[tuple[object, frozenset[str]]] = []

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._names)

    def learn(self, result: ObjectResult, key: object = None) -> None:
        self._names |= result.person_names
        if result.status == "ok":
            self._written.append((key, result.free_text_tokens))

    def late_hits(self) -> list[object]:
        names = frozenset(self._names)
        return [key for key, tokens in self._written if phi_guard.late_name_hits(tokens, names)]


class StudyRecorder:
    """Tells the identity provider once per (pseudonym, original study) which study it became."""

    def __init__(self, provider: IdentityProvider) -> None:
        self._provider = provider
        self._seen: set[tuple[str, str, str]] = set()

    def record(self, result: ObjectResult) -> None:
        key = (result.pseudonym, result.original_study_uid, result.study_instance_uid)
        if key in self._seen or not result.original_study_uid:
            return
        self._provider.record_study(result.pseudonym, result.original_study_uid, result.study_instance_uid,
                                    result.accession_number)
        self._seen.add(key)


def quarantine_result(quarantine_dir: Path, source: Path, result: ObjectResult) -> QuarantinedObject:
    """Park the original file with the result's reason (the original, so it can be re-run later)."""
    entry = quarantine(quarantine_dir, QUARANTINE_STAGE, result.reason, source_path=source, details=result.details)
    return QuarantinedObject(source, result.reason, entry.id)


def output_name(result: ObjectResult) -> str:
    return f"{result.sop_instance_uid}.dcm"


def check_burned_in_text(source: Path, result: ObjectResult) -> ObjectResult:
    """``result`` as it was, or a quarantine result when its de-identified pixels show text that
    must not leave (the patient's identifiers; any text in CT/PT/NM/MR): the PHI guard's OCR
    check (:func:`connector.phi_guard.burned_in_text.check_pixels`), with the identifiers the engine
    collected from the original (read from ``source`` only when the result lacks them)."""
    assert result.data is not None
    if result.identifiers is not None:
        findings = burned_in_text.check_pixels(result.data, result.identifiers)
    else:
        findings = burned_in_text.check_object(result.data, source)
    if not findings:
        return result
    return ObjectResult("quarantine", findings[0].code, ocr_details(findings, result.details),
                        person_names=result.person_names)


def ocr_details(findings: list[phi_guard.Finding], details: dict[str, object] | None = None) -> dict[str, object]:
    """A quarantine record's details for OCR findings (frame and box, never the text), logged once."""
    log.warning("burned-in text stopped an object", extra={"event": "burned_in_text_hit",
                                                           "codes": sorted({f.code for f in findings})})
    return {"findings": [f.as_dict() for f in findings[:50]], **(details or {})}


class BurnedInTextCheck:
    """The OCR check of one study (``[deid] ocr``), choosing its images from the headers the engine
    already read (:attr:`ObjectResult.ocr_header`): no header is read a second time.

    At-risk images (and every image under ``all``) are read before they are written
    (:meth:`check_now`). The first, middle and last image of every other series can be known only
    once the whole study has gone by, so those are read back from their written files at the end
    (:meth:`sampled`, :meth:`check_written`), before the study is handed on; a hit is then removed
    and quarantined, as late name hits are. Same selection and reasons as
    :func:`connector.phi_guard.burned_in_text.instances_to_read` with :func:`check_burned_in_text`.
    Used by the daemon's study step and by ``site-connector deid``.
    """

    def __init__(self, scope: str) -> None:
        if scope not in burned_in_text.OCR_SCOPES:
            raise ValueError(f"unknown OCR scope {scope!r}; one of {', '.join(burned_in_text.OCR_SCOPES)}")
        self.scope = scope
        self.seconds = 0.0  # time spent reading pixels for text
        self.images = 0  # objects whose pixels were read
        self._order = 0
        self._series: dict[str, list[tuple[float, int, object]]] = {}
        self._written: dict[int, tuple[object, phi_guard.Identifiers | None]] = {}

    def check_now(self, source: Path, result: ObjectResult) -> tuple[ObjectResult, bool]:
        """(result, whether it may be sampled later). An at-risk image is read now: ``result`` or its
        quarantine. Call it for every object of the study, in order, then :meth:`track`."""
        self._order += 1
        header = result.ocr_header
        if self.scope == "off" or header is None:
            return result, False
        if self.scope == "all" or header.at_risk:
            if result.status == "ok":
                started = time.perf_counter()
                result = check_burned_in_text(source, result)
                self.seconds += time.perf_counter() - started
                self.images += 1
            return result, False
        self._series.setdefault(header.series, []).append((header.number, self._order, self._order))
        return result, True

    def track(self, key: object, identifiers: phi_guard.Identifiers | None) -> None:
        """The object last given to :meth:`check_now` (sampling pending) was written as ``key``."""
        self._written[self._order] = (key, identifiers)

    def sampled(self) -> list[tuple[object, phi_guard.Identifiers | None]]:
        """The written objects chosen as the first, middle or last image of their series."""
        chosen = [order for members in self._series.values() for order in burned_in_text.sample_of_series(members)]
        return [self._written[order] for order in sorted(chosen) if order in self._written]  # type: ignore[index]

    def check_written(self, data: bytes, identifiers: phi_guard.Identifiers | None, source: Path
                      ) -> list[phi_guard.Finding]:
        """OCR findings for a sampled object's written bytes (identifiers of its original)."""
        started = time.perf_counter()
        try:
            if identifiers is not None:
                return burned_in_text.check_pixels(data, identifiers)
            return burned_in_text.check_object(data, source)
        finally:
            self.seconds += time.perf_counter() - started
            self.images += 1


def deidentify_study(paths: Iterable[Path], out_dir: Path, quarantine_dir: Path | None, engine: DeidEngine, *,
                     ocr: str = burned_in_text.DEFAULT_OCR_SCOPE, wanted: set[str] | None = None) -> StudyOutcome:
    """De-identify every object of a stable study into ``out_dir``; quarantine what must not go on.

    ``ocr``: which objects' pixels are read for burned-in text (``[deid] ocr``: at-risk-and-sample,
    all, off).

    Reconciliation runs a delivered study through here again to make what the registry lacks:
    ``wanted`` (de-identified SOP Instance UIDs) limits what is written, and ``quarantine_dir``
    None means "already dealt with the first time": what must not go on is left out, not
    quarantined again, and no study link is recorded again. Every object still goes by in the same
    order, so the PHI guard learns the same names and the same checks (OCR included) apply."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome = StudyOutcome()
    recorder = StudyRecorder(engine.provider) if quarantine_dir is not None else None
    names = StudyNameCheck()
    ocr_check = BurnedInTextCheck(ocr)
    for source in (Path(p) for p in paths):
        result = engine.process_path(source, names.names)
        result, sample_later = ocr_check.check_now(source, result)
        outcome.privacy.add(result.details)
        if result.status == "ok" and wanted is not None and result.sop_instance_uid not in wanted:
            names.learn(result, None)  # its names count for the others; it is not written
        elif result.status == "ok":
            assert result.data is not None
            target = out_dir / output_name(result)
            write_file_durably(target, result.data, sync=engine.fsync)
            if recorder is not None:
                recorder.record(result)
            written = WrittenObject(source, target, result.sop_instance_uid, result.series_instance_uid,
                                    result.study_instance_uid, result.sop_class_uid, result.modality,
                                    result.pseudonym)
            outcome.written.append(written)
            names.learn(result, written)
            if sample_later:
                ocr_check.track(written, result.identifiers)
        else:
            names.learn(result)
            if result.status == "skip":
                outcome.skipped.append(SkippedObject(source, result.reason))
            elif quarantine_dir is not None:
                outcome.quarantined.append(quarantine_result(quarantine_dir, source, result))
    removed = False
    for key, identifiers in ocr_check.sampled():  # first, middle, last of each series: read back
        assert isinstance(key, WrittenObject)
        findings = ocr_check.check_written(key.path.read_bytes(), identifiers, key.source)
        if findings:
            key.path.unlink(missing_ok=True)
            outcome.written.remove(key)
            if quarantine_dir is not None:
                entry = quarantine(quarantine_dir, QUARANTINE_STAGE, findings[0].code, source_path=key.source,
                                   details=ocr_details(findings))
                outcome.quarantined.append(QuarantinedObject(key.source, findings[0].code, entry.id))
            removed = True
    outcome.ocr_seconds = ocr_check.seconds
    outcome.privacy.pixels_read_for_text = ocr_check.images
    late_hits = names.late_hits()
    for late in late_hits:  # free text holding a name met only in a later object: not sent
        if not isinstance(late, WrittenObject) or late not in outcome.written:
            continue  # not written (reconciliation), or already quarantined for burned-in text
        late.path.unlink(missing_ok=True)
        outcome.written.remove(late)
        if quarantine_dir is None:
            continue
        entry = quarantine(quarantine_dir, QUARANTINE_STAGE, "phi-guard:name",
                           source_path=late.source, details={"where": "free text", "found": "after the study"})
        outcome.quarantined.append(QuarantinedObject(late.source, "phi-guard:name", entry.id))
    if (late_hits or removed) and engine.fsync:
        fsync_dir(out_dir)
    log.info("study de-identified", extra={"event": "deid_study", **outcome.summary()})
    return outcome
