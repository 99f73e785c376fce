"""Retrieve one study from the PACS: C-MOVE to our own receiver, or C-GET on the same association.

Both end in the same durable ingest path as a C-STORE from the PACS:
- C-MOVE: the PACS opens its own association to our receiver (``[pacs] move_destination``, by
  default ``[dicom] ae_title``) and C-STOREs each instance; the receiver answers each only after
  the file and its row are durable, so by the time the final C-MOVE response arrives everything the
  PACS counted as completed is on the spool.
- C-GET: the PACS C-STOREs back on our association (we take the Storage SCP role). Each dataset is
  written as a Part 10 file under ``spool/partial`` and handed to :meth:`Intake.ingest_partial`,
  the receiver's own filing step (fsync, rename, state DB row), before we answer success.

Large studies, series by series: a study with more instances than ``[backfill] series_threshold``
(the C-FIND's NumberOfStudyRelatedInstances) is listed at SERIES level (one C-FIND) and each series
is retrieved on its own association, ``[backfill] series_in_flight`` at once, so one PET/CT of
thousands of instances is not a single serial stream (a PACS sends one C-MOVE's instances one after
the other, on one association). The outcomes add up to the study's; completeness is still checked
against the study's count by the runner. When the series cannot be listed, the study is retrieved
whole, as any other.

Why one presentation context per (SOP class, transfer syntax) for C-GET: the PACS then finds a
context in each instance's stored transfer syntax and sends the original bytes; offered several
syntaxes in one context, a PACS picks one for all and transcodes the rest, which would change the
bytes of the originals the site keeps. SOP classes come from the C-FIND's SOPClassesInStudy, or a
list of the classes cardiac imaging produces when the PACS does not report them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from connector.pacs import scu
from connector.backfill.worklist import LeasedStudy
from connector.config import Config
from connector.ingest.file_meta import part10_head
from connector.ingest.intake import DiskFull, Intake, UnreadableObject, header_from_head
from connector.store.durable import PART_SUFFIX

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
MAX_CONTEXTS = 127  # PS3.8: at most 128 presentation contexts; one is the C-GET model

# Transfer syntaxes offered for C-GET, most common first (the list is cut to fit MAX_CONTEXTS).
GET_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1, JPEG2000Lossless,
                         JPEGLSLossless, RLELossless, JPEG2000, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLSNearLossless, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
# Storage classes asked for when the PACS does not report SOPClassesInStudy.
DEFAULT_GET_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame
)


@dataclass
class RetrieveOutcome:
    """What the PACS said about a retrieval. ``error`` is set when it did not run to a final status."""

    status: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    error: str | None = None
    stopped: bool = False
    stored: int = 0  # C-GET: instances filed by us

    def problem(self) -> str | None:
        """A short reason when the PACS did not report full success, else None."""
        if self.error:
            return self.error
        if self.status is None:
            return "no final response from the PACS"
        if self.status == 0xFE00:
            return "retrieval cancelled"
        if self.status == 0xA801:
            return "the PACS does not know the move destination (register our AE title, host and port there)"
        if self.status in (0xA701, 0xA702, 0xA700):
            return f"the PACS is out of resources (0x{self.status:04X})"
        if 0xC000 <= self.status <= 0xCFFF:
            return f"the PACS could not process the retrieval (0x{self.status:04X}; is the study still there?)"
        if self.failed:
            return f"{self.failed} sub-operation(s) failed at the PACS (status 0x{self.status:04X})"
        if self.status not in (0x0000, 0xB000):
            return f"the PACS answered 0x{self.status:04X}"
        return None


def _counts(outcome: RetrieveOutcome, status: Dataset) -> None:
    for attr, name in (("completed", "NumberOfCompletedSuboperations"), ("failed", "NumberOfFailedSuboperations"),
                       ("warning", "NumberOfWarningSuboperations")):
        value = status.get(name)
        if value is not None:
            setattr(outcome, attr, int(value))


def _identifier(study: LeasedStudy, series_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY" if series_uid is None else "SERIES"
    ds.StudyInstanceUID = study.study_uid
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    return ds


def _watch(assoc: Any, stop: threading.Event, done: threading.Event) -> threading.Thread:
    """Abort the association as soon as ``stop`` is set (the PACS then stops sending)."""
    def run() -> None:
        while not done.wait(0.2):
            if stop.is_set():
                assoc.abort()
                return
    thread = threading.Thread(target=run, name="backfill-stop-watch", daemon=True)
    thread.start()
    return thread


def retrieve_study(config: Config, study: LeasedStudy, *, stop: threading.Event, intake: Intake | None = None,
                   on_progress: Callable[[int], None] | None = None) -> RetrieveOutcome:
    """Retrieve ``study`` with ``[pacs] retrieve``; ``intake`` is required for C-GET.

    ``on_progress(n)`` is called with the number of instances completed so far.
    """
    if config.pacs.retrieve == "get" and intake is None:
        raise ValueError("C-GET needs an Intake to file what it receives")
    try:
        threshold = config.backfill.series_threshold
        if threshold and study.expected_instances is not None and study.expected_instances > threshold:
            series = list_series(config, study)
            if len(series) > 1:
                return _by_series(config, study, series, stop, intake, on_progress)
        return _retrieve(config, _identifier(study), stop, intake, on_progress, study.sop_classes)
    except scu.PacsTlsError as exc:
        return RetrieveOutcome(error=str(exc))


def _retrieve(config: Config, identifier: Dataset, stop: threading.Event, intake: Intake | None,
              on_progress: Callable[[int], None] | None, sop_classes: tuple[str, ...]) -> RetrieveOutcome:
    """One C-MOVE or C-GET (study or series level) on an association of its own."""
    if config.pacs.retrieve == "get":
        assert intake is not None
        return _get(config, identifier, stop, intake, on_progress, sop_classes)
    return _move(config, identifier, stop, on_progress)


def list_series(config: Config, study: LeasedStudy) -> list[str]:
    """The study's Series Instance UIDs (one SERIES-level C-FIND), or [] when the PACS cannot say."""
    ae = AE(ae_title=scu.calling_ae(config))
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = scu.associate(config, ae)
    if not assoc.is_established:
        return []
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = ""
    ds.NumberOfSeriesRelatedInstances = ""
    found: list[str] = []
    final = None
    try:
        for status, answer in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code is None:
                return []
            if code in (0xFF00, 0xFF01):
                uid = str(answer.get("SeriesInstanceUID", "") or "") if answer is not None else ""
                if uid:
                    found.append(uid)
            else:
                final = int(code)
    finally:
        if assoc.is_established:
            assoc.release()
    return list(dict.fromkeys(found)) if final == STATUS_SUCCESS else []


def _by_series(config: Config, study: LeasedStudy, series: list[str], stop: threading.Event,
               intake: Intake | None, on_progress: Callable[[int], None] | None) -> RetrieveOutcome:
    """Each series on its own association, ``[backfill] series_in_flight`` at once; one outcome."""
    lock = threading.Lock()
    done: dict[int, int] = {}

    def progress_of(i: int) -> Callable[[int], None]:
        def report(n: int) -> None:
            with lock:
                done[i] = n
                total = sum(done.values())
            if on_progress is not None:
                on_progress(total)
        return report

    def one(i: int) -> RetrieveOutcome:
        if stop.is_set():
            return RetrieveOutcome(error="retrieval stopped (daemon stopping)", stopped=True)
        return _retrieve(config, _identifier(study, series[i]), stop, intake, progress_of(i), study.sop_classes)

    workers = min(config.backfill.series_in_flight, len(series))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill-series") as pool:
        outcomes = list(pool.map(one, range(len(series))))
    merged = RetrieveOutcome(status=STATUS_SUCCESS)
    for i, o in enumerate(outcomes):
        merged.completed += o.completed
        merged.failed += o.failed
        merged.warning += o.warning
        merged.stored += o.stored
        merged.stopped = merged.stopped or o.stopped
        if merged.error is None and (o.error or o.status is None):
            merged.error = f"series {i + 1} of {len(series)}: {o.problem()}"
        if o.status is not None and o.status != STATUS_SUCCESS and merged.status in (STATUS_SUCCESS, 0xB000):
            merged.status = o.status  # a failure outranks a warning; otherwise the first one stands
    log.info("backfill study retrieved by series", extra={"event": "backfill_series", "study": study.study_key,
                                                          "series": len(series), "in_flight": workers,
                                                          "completed": merged.completed, "failed": merged.failed})
    return merged


def _run(assoc: Any, responses: Any, outcome: RetrieveOutcome, stop: threading.Event,
         on_progress: Callable[[int], None] | None, stored: Callable[[], int] | None = None) -> None:
    done = threading.Event()
    _watch(assoc, stop, done)
    try:
        for status, _identifier_ds in responses:
            code = getattr(status, "Status", None)
            if code is None:
                outcome.error = ("retrieval stopped (daemon stopping)" if stop.is_set()
                                 else "the PACS stopped answering (association lost or DIMSE timeout)")
                outcome.stopped = stop.is_set()
                return
            _counts(outcome, status)
            if code in (0xFF00, 0xFF01):
                if on_progress is not None:
                    on_progress(stored() if stored else outcome.completed)
                continue
            outcome.status = int(code)
    finally:
        done.set()
        if assoc.is_established:
            assoc.release()


def _move(config: Config, identifier: Dataset, stop: threading.Event,
          on_progress: Callable[[int], None] | None) -> RetrieveOutcome:
    outcome = RetrieveOutcome()
    ae = AE(ae_title=scu.calling_ae(config))
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = scu.associate(config, ae)
    if not assoc.is_established:
        outcome.error = _unreachable(config, assoc)
        return outcome
    responses = assoc.send_c_move(identifier, scu.move_destination(config),
                                  StudyRootQueryRetrieveInformationModelMove)
    _run(assoc, responses, outcome, stop, on_progress)
    return outcome


def get_contexts(sop_classes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs for C-GET, one context each, at most MAX_CONTEXTS - 1."""
    classes = list(dict.fromkeys(sop_classes or DEFAULT_GET_CLASSES))[: MAX_CONTEXTS - 1]
    per_class = max(1, min(len(GET_TRANSFER_SYNTAXES), (MAX_CONTEXTS - 1) // len(classes)))
    return [(c, ts) for c in classes for ts in GET_TRANSFER_SYNTAXES[:per_class]]


def _get(config: Config, identifier: Dataset, stop: threading.Event, intake: Intake,
         on_progress: Callable[[int], None] | None, sop_classes: tuple[str, ...] = ()) -> RetrieveOutcome:
    outcome = RetrieveOutcome()
    ae = AE(ae_title=scu.calling_ae(config))
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    pairs = get_contexts(sop_classes)
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, [ts])
    roles = [build_role(c, scp_role=True) for c in dict.fromkeys(c for c, _ in pairs)]
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        status = file_received(intake, event, source="backfill", calling_aet=config.pacs.ae_title)
        if status == STATUS_SUCCESS:
            with lock:
                outcome.stored += 1
        return status

    assoc = scu.associate(config, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        outcome.error = _unreachable(config, assoc)
        return outcome
    responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
    _run(assoc, responses, outcome, stop, on_progress, stored=lambda: outcome.stored)
    return outcome


def file_received(intake: Intake, event: Any, *, source: str, calling_aet: str) -> int:
    """File one C-STORE received on our association through the receiver's durable path.

    Success only once the Part 10 file is fsync'd, renamed and its row committed
    (:meth:`Intake.ingest_partial`); out of resources otherwise, so the PACS counts it failed and
    the study is retried.
    """
    part: Path | None = None
    try:
        intake.check_space()
        req = event.request
        sop_class, sop_instance = str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID)
        ts = str(event.context.transfer_syntax)
        data = event.encoded_dataset(include_meta=False)
        head = part10_head(sop_class, sop_instance, ts)
        fd, name = tempfile.mkstemp(dir=intake.partial_dir, suffix=PART_SUFFIX)
        part = Path(name)
        with os.fdopen(fd, "wb") as fh:
            fh.write(head)
            fh.write(data)
        header = header_from_head(data, whole=True, sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                                  transfer_syntax=ts, dataset_offset=len(head))
        intake.ingest_partial(part, source=source, calling_aet=calling_aet, verify_complete=False, header=header,
                              lazy_digest=True)  # as the receiver: hash only a re-sent instance
        return STATUS_SUCCESS
    except DiskFull:
        log.error("spool disk below free-space floor; retrieval answered 'out of resources'",
                  extra={"event": "disk_low"})
    except UnreadableObject as exc:
        if part is not None:
            try:
                intake.quarantine_partial(part, exc, source=source)
                return STATUS_CANNOT_UNDERSTAND
            except OSError:
                pass
    except Exception as exc:  # any storage failure: never claim success
        log.error("could not store a retrieved instance", extra={"event": "store_failed",
                                                                 "error": type(exc).__name__})
    if part is not None:
        part.unlink(missing_ok=True)
    return STATUS_OUT_OF_RESOURCES


def _unreachable(config: Config, assoc: Any) -> str:
    where = f"{config.pacs.ae_title}@{config.pacs.host}:{config.pacs.port}"
    return f"PACS {where} rejected the association" if assoc.is_rejected else f"PACS {where} did not answer"
