"""The study worker: carries each stable study through the stages after reception.

    stable study (leased from the state DB)
      -> de-identification + PHI guard   (connector.deid)  -> spool/outgoing/<study key>/   required
      -> the stages after it, in order (:class:`Stage`), e.g. CAC (optional), registry (required)

Required and optional stages: de-identification and queuing the images for the registry are the
study's delivery; a failure there marks the study failed. An optional stage (CAC and its SR/SEG) that
fails is recorded on the study (``connector.store.stage_failures``: stage, exception type, a scrubbed
one-line reason) and scheduled again with backoff, while the images go on to the registry as usual.

Why a lease: the worker takes a study with a time-limited lease in the DB, so a worker that dies
leaves nothing stuck: the lease expires (or start-up recovery hands it back) and the study is
processed again. Every step is idempotent: the same originals give the same de-identified bytes
and file names, and the outbox ignores jobs it already holds.

The worker runs beside the receiver and never blocks it: the receiver only writes rows that the
worker later reads.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from connector.config import Config
from connector.safe_reason import frames, safe_reason
from connector.deid.engine import DeidEngine
from connector.deid.provider import IdentityProvider
from connector.deid.study import StudyOutcome, deidentify_study
from connector.store import stage_failures
from connector.store.layout import SiteLayout
from connector.store.stage_failures import RetryPolicy
from connector.store.state import StateStore

log = logging.getLogger(__name__)

LEASE_SECONDS = 30 * 60
RETRY_SECONDS = 60.0  # a study that met a full disk is taken again after this long


def is_transient(exc: BaseException) -> bool:
    """A failure that says nothing about the study: the disk (or the database's disk) is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


@dataclass
class StudyContext:
    """What the steps after de-identification get to see about one study."""

    study_key: str
    originals: list[Path]  # identified files on the spool (never leave the site)
    outcome: StudyOutcome  # de-identified files, their new UIDs and the pseudonym
    out_dir: Path
    notes: dict[str, object] = field(default_factory=dict)


Step = Callable[[StudyContext], None]


@dataclass(frozen=True)
class Stage:
    """One stage after de-identification.

    ``required``: its failure marks the study failed (the images' own path). An optional stage's
    failure is recorded and retried under ``retry`` while the study goes on. ``version`` names what
    the stage runs (the model's SHA-256): a failure recorded under another version is retried at
    once when the pipeline starts with a new one (a site that installs a fixed model).
    """

    name: str
    run: Step
    required: bool = True
    version: Callable[[], str] = lambda: ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class StudyWorker:
    def __init__(self, store: StateStore, layout: SiteLayout, engine: DeidEngine,
                 stages: list[Stage] | None = None, *, name: str = "study-worker",
                 retry_seconds: float = RETRY_SECONDS, ocr: str = "at-risk-and-sample") -> None:
        self.store = store
        self.ocr = ocr  # [deid] ocr: which images are read for burned-in text
        self.retry_seconds = retry_seconds
        self._unrecorded_retries: dict[str, float] = {}  # study -> monotonic time to hand it back
        self.layout = layout
        self.engine = engine
        self.stages = stages or []
        self.name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        """True while the worker thread still runs (after ``stop`` timed out: a study is in hand)."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Called when studies became stable, so they are taken at once rather than at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                did = self.run_once()
            except Exception as exc:  # never let one bad study stop the worker
                log.error("study worker error", extra={"event": "worker_error", "error": type(exc).__name__})
                did = False
            if not did:
                self._wake.wait(1.0)
                self._wake.clear()

    def run_once(self) -> bool:
        """Process one leased study; False when none was waiting."""
        if self._unrecorded_retries:
            self._hand_back_due()
        key = self.store.lease_study(self.name, LEASE_SECONDS)
        if key is None:
            return False
        started = time.monotonic()
        rows = self.store.study_instances(key)
        originals = [self.layout.spool / r["path"] for r in rows]
        out_dir = self.layout.outgoing / key
        try:
            outcome = deidentify_study(originals, out_dir, self.layout.quarantine, self.engine, ocr=self.ocr)
        except Exception as exc:
            if is_transient(exc):
                return self._defer(key, "deid", exc)
            log.error("de-identification failed for study; marked failed",
                      extra={"event": "deid_failed", "study": key, "error": type(exc).__name__,
                             "reason": safe_reason(exc)})
            log.debug("de-identification failed at", extra={"event": "deid_failed_frames", "study": key,
                                                            "frames": frames(exc)})
            self.store.set_study_state(key, "failed")
            return True
        self.store.record_privacy_report(key, outcome.privacy.as_dict())
        state = "deidentified" if outcome.written else "quarantined"
        context = StudyContext(key, originals, outcome, out_dir)
        for stage in self.stages:
            if not outcome.written:
                break
            try:
                stage.run(context)
            except Exception as exc:
                if is_transient(exc):
                    return self._defer(key, stage.name, exc)
                self._record_failure(key, stage, exc)
                if stage.required:
                    state = "failed"
                    break
                continue  # an optional analysis never holds the images back
            if not stage.required:
                with self.store.write() as conn:
                    if stage_failures.clear_failure(conn, key, stage.name):
                        log.info("optional stage succeeded on retry", extra={"event": "stage_recovered",
                                                                             "step": stage.name, "study": key})
            state = str(context.notes.get("state", state))
        self.store.set_study_state(key, state, only_if="processing")
        if state == "queued":  # the uploader may have delivered everything already
            self.store.promote_pushed()
        self.processed += 1
        log.info("study processed", extra={"event": "study_processed", "study": key, "state": state,
                                           "seconds": round(time.monotonic() - started, 3), **outcome.summary()})
        return True

    def _record_failure(self, key: str, stage: Stage, exc: BaseException) -> None:
        """Log what failed in words an operator can act on (scrubbed: no identifier, no UID), with the
        code locations at DEBUG; an optional stage's failure is also kept and scheduled again."""
        reason = safe_reason(exc)
        extra: dict[str, object] = {"event": "step_failed", "step": stage.name, "study": key,
                                    "error": type(exc).__name__, "reason": reason, "required": stage.required}
        if not stage.required:
            try:
                version = stage.version()
            except Exception:
                version = ""
            with self.store.write() as conn:
                attempts = stage_failures.record_failure(conn, key, stage.name, type(exc).__name__, reason,
                                                         version, stage.retry)
            extra["attempts"] = attempts
            extra["retry_in_s"] = stage.retry.delay(attempts)
        log.error("study step failed" if stage.required else "optional stage failed; the images go on",
                  extra=extra)
        log.debug("study step failed at", extra={"event": "step_failed_frames", "step": stage.name, "study": key,
                                                 "frames": frames(exc)})

    def retry_due(self) -> int:
        """Hand back the studies whose failed optional stage is due (called by the pipeline's scheduler)."""
        with self.store.write() as conn:
            keys = stage_failures.take_due(conn)
        for key in keys:
            log.info("retrying a failed optional stage", extra={"event": "stage_retry", "study": key})
        if keys:
            self.wake()
        return len(keys)

    def _defer(self, key: str, stage: str, exc: BaseException) -> bool:
        """A full disk is not the study's fault: take it again later instead of marking it failed.

        Re-processing is safe: de-identification gives the same bytes and UIDs, queuing is idempotent.
        If even this cannot be recorded, the study's lease runs out and it is taken again then.
        """
        log.error("disk full while processing a study; it is taken again later",
                  extra={"event": "study_deferred", "study": key, "stage": stage, "error": type(exc).__name__,
                         "retry_in_s": self.retry_seconds})
        try:
            self.store.defer_study(key, self.retry_seconds)
        except Exception as inner:  # the database's disk is full too: remember it here instead
            log.error("could not record the deferral; retried from memory",
                      extra={"event": "study_defer_failed", "study": key, "error": type(inner).__name__})
            self._unrecorded_retries[key] = time.monotonic() + self.retry_seconds
        return True

    def _hand_back_due(self) -> None:
        now = time.monotonic()
        for key, due in list(self._unrecorded_retries.items()):
            if due <= now:
                try:
                    self.store.defer_study(key, 0.0)  # its lease ends now: lease_study takes it again
                except Exception:
                    self._unrecorded_retries[key] = now + self.retry_seconds
                else:
                    del self._unrecorded_retries[key]


# -- steps after de-identification -------------------------------------------------------------


def subject_record(deidentified: Path, original: Path, provider: IdentityProvider) -> dict[str, object] | None:
    """The registry's subject fields, sent with the patient's index (first) study only.

    Sex and age come from the de-identified object (already PHI-guarded); the age is the age at
    the index scan, so it is taken only from the index study. For any later study of the patient
    the registry already has the subject and None is returned (a PUT would replace it).
    """
    import pydicom

    orig = pydicom.dcmread(original, stop_before_pixels=True, specific_tags=["PatientID", "IssuerOfPatientID",
                                                                              "StudyDate"])
    lookup = getattr(provider, "lookup_patient", None)
    if lookup is not None:
        linked = lookup(str(orig.get("PatientID", "")), str(orig.get("IssuerOfPatientID", "") or ""), audit=False)
        if linked is not None and linked.index_date and linked.index_date != str(orig.get("StudyDate", "")):
            return None
    ds = pydicom.dcmread(deidentified, stop_before_pixels=True)
    record: dict[str, object] = {"sex": str(ds.get("PatientSex", "") or "")}
    age = str(ds.get("PatientAge", "") or "")
    if len(age) == 4 and age[:3].isdigit():
        record["age_at_index_years"] = min(int(age[:3]) if age[3] == "Y" else 0, 90)
    return record


def registry_step(config: Config, store: StateStore, layout: SiteLayout, provider: IdentityProvider) -> Step:
    """Queue the de-identified study for the registry: subject, STOW-RS batches, manifest."""
    from connector.outbox import Outbox
    from connector.push import queue_study

    outbox = Outbox(store)

    def step(ctx: StudyContext) -> None:
        for study_uid in ctx.outcome.study_uids:
            written = [w for w in ctx.outcome.written if w.study_instance_uid == study_uid]
            queue_study(outbox, study_uid=study_uid, pseudonym=written[0].pseudonym,
                        subject=subject_record(written[0].path, written[0].source, provider),
                        files=[w.path for w in written], layout=layout,
                        max_instances=config.registry.batch_max_instances,
                        max_bytes=config.registry.batch_max_bytes)
        store.record_study_outputs(ctx.study_key, ctx.outcome.study_uids)
        ctx.notes["state"] = "queued"

    return step


class LazyRunner:
    """The CAC model, loaded on first use and again after a failed load.

    Why lazy: a model that cannot be loaded (missing, damaged, a provider gone) must not stop the
    pipeline role, or no study would be delivered at all; each study records the CAC failure with
    the reason instead, and a model fixed on disk is picked up by the next study.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._runner: object | None = None

    def get(self) -> object:
        if self._runner is None:
            from connector.infer.runner import CacRunner

            self._runner = CacRunner.from_config(self.config)  # the model is verified and loaded once
        return self._runner

    def version(self) -> str:
        """The loaded model's SHA-256 ("" when it could not be loaded)."""
        try:
            return str(self.get().manifest.sha256)  # type: ignore[attr-defined]
        except Exception:
            return ""


def cac_step(config: Config, store: StateStore, engine: DeidEngine, layout: SiteLayout | None = None,
             runner: LazyRunner | None = None) -> Step:
    """Score coronary calcium on the study's CT attenuation series; queue the result; add its DICOM.

    Runs on the original files (the model needs the real pixels; nothing leaves here), then maps
    the study and series UIDs to their de-identified values and adds the pseudonym, so the result
    the registry receives carries no original identifier. Per scored series it also keeps the
    scored-calcium map on the site (``SiteLayout.scored_calcium_path``, for the study page) and
    builds a Measurement Report SR and a SEG from the ORIGINAL slices (kept on the site next to the
    map), de-identifies them with the images' pseudonym, date offset and UID mapping, and adds them
    to the study's outputs: runs before the registry step, which queues them with the images.

    Everything is computed before anything is queued or added, so a failure half-way (an SR that
    cannot be built) leaves the study's outputs as they were: the images go on alone.
    """
    from connector.infer.dicom_results import build_result_objects, read_sources, results_engine
    from connector.infer.scored_calcium import save_scored_calcium
    from connector.infer.study import score_study
    from connector.outbox import Outbox
    from connector.push import queue_result

    runner = runner or LazyRunner(config)
    outbox = Outbox(store)
    layout = layout or SiteLayout.from_config(config)
    to_pacs = outbox if config.results.return_to_pacs else None  # [results] return_to_pacs
    engines: dict[str, DeidEngine] = {}

    def step(ctx: StudyContext) -> None:
        if not ctx.outcome.written:
            return
        model = runner.get()
        sha = str(model.manifest.sha256)  # type: ignore[attr-defined]
        if sha not in engines:
            engines.clear()
            engines[sha] = results_engine(config, engine.provider, model.manifest.summary())  # type: ignore[attr-defined]
        results_deid = engines[sha]
        pseudonym = ctx.outcome.written[0].pseudonym
        done: list[tuple[int, dict[str, object], object, list[object]]] = []
        for rank, result in enumerate(score_study(ctx.originals, model)):  # type: ignore[arg-type]
            doc = result.to_json(include_uids=True)
            doc["study_instance_uid"] = engine.uid(str(doc["study_instance_uid"]))
            doc["series_instance_uid"] = engine.uid(str(doc["series_instance_uid"]))
            doc["pseudonym"] = pseudonym
            datasets: list[object] = []
            if result.ok and result.scored_calcium is not None:
                datasets = list(build_result_objects(result, read_sources(result.source_paths)).datasets())
            done.append((rank, doc, result.scored_calcium if result.ok else None, datasets))
        for rank, doc, scored, datasets in done:
            queue_result(outbox, doc)
            ctx.notes.setdefault("cac", []).append(doc.get("category"))  # type: ignore[union-attr]
            if scored is None:
                continue
            map_path = layout.scored_calcium_path(ctx.study_key, rank)
            save_scored_calcium(map_path, scored)  # type: ignore[arg-type]
            for kind, ds in zip(("sr", "seg"), datasets, strict=False):
                _add_result_object(ctx, results_deid, ds, map_path.with_name(f"cac-{rank}-{kind}.dcm"),
                                   layout, to_pacs)

    return step


def _add_result_object(ctx: StudyContext, deid: DeidEngine, ds: object, original: Path, layout: SiteLayout,
                       to_pacs: object | None = None) -> None:
    """Keep the identified original on the site (queued for the PACS when the site wants it back),
    and de-identify it into the study's outgoing folder."""
    import io

    from connector.deid.study import WrittenObject, output_name, quarantine_result
    from connector.store.durable import write_file_durably

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)  # type: ignore[attr-defined]
    write_file_durably(original, buffer.getvalue(), sync=deid.fsync)
    if to_pacs is not None:
        from connector.infer.pacs_return import queue_return

        queue_return(to_pacs, layout, ctx.study_key, original, buffer.getvalue())  # type: ignore[arg-type]
    result = deid.process_bytes(buffer.getvalue())
    if result.status != "ok" or result.data is None:
        ctx.outcome.quarantined.append(quarantine_result(layout.quarantine, original, result))
        log.error("CAC result object not sent: de-identification refused it",
                  extra={"event": "cac_dicom_quarantined", "study": ctx.study_key, "reason": result.reason})
        return
    target = ctx.out_dir / output_name(result)
    write_file_durably(target, result.data, sync=deid.fsync)
    ctx.outcome.written.append(WrittenObject(original, target, result.sop_instance_uid, result.series_instance_uid,
                                             result.study_instance_uid, result.sop_class_uid, result.modality,
                                             result.pseudonym))
