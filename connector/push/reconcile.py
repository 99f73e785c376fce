"""Reconciliation: ask the registry what it holds for each delivered study, and mend what it lacks.

    for each study in state "pushed" (and, on request or reconcile_recheck_days after their
    verification, "verified" ones again):
      what the site sent   = the manifest payload of each de-identified study UID it became
                             (SOP Instance UIDs and series, kept in the outbox)
      what the registry has = QIDO-RS instance list of each of those series, and the stored
                             manifest (GET /api/v1/studies/{uid}/manifest) when the destination
                             has the JSON API (a plain DICOMweb peer such as Orthanc has not: QIDO only)
      match    -> state "verified", studies.verified_at = now
      mismatch -> the missing instances are de-identified again from the originals on the spool
                  (outgoing copies are deleted once acknowledged), written to outgoing and queued
                  as a fresh STOW-RS job (a new key: the outbox would otherwise take it for the one
                  already done); a manifest the registry lacks or holds differently is queued again.
                  The study goes back to "queued", then "pushed" once those are acknowledged, and
                  "verified" at the next reconciliation.

Why regenerate rather than keep every outgoing copy: the de-identification is deterministic (same
originals, same rules and site secret give the same bytes and UIDs), so the spool already holds
everything needed, and the outgoing folder stays small. The study is processed again in the same
order as the first time, so the names the PHI guard learns from earlier objects are the same.

What is reported: counts and study keys (a hash), never UIDs, pseudonyms or names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.outbox import Outbox
from connector.push.queueing import DESTINATION, make_batches, read_outgoing
from connector.store.state import StateStore
from connector.push.reconcile_compare import Comparison, Sent, compare
from connector.push.reconcile_runs import record_reconciliation
from connector.push.registry_reader import WORKERS, ReconcileError, RegistryReader, RegistryUnreachable

if TYPE_CHECKING:
    from connector.config import Config
    from connector.deid.engine import DeidEngine
    from connector.store.layout import SiteLayout

log = logging.getLogger(__name__)



# -- results -------------------------------------------------------------------------------------


@dataclass
class StudyResult:
    """One study's reconciliation, safe to log and print (study key and counts only)."""

    study: str
    outcome: str  # "verified", "requeued", "unresolved" (a mismatch that could not be mended) or "error"
    missing: int = 0
    requeued: int = 0  # instances queued again
    manifests_requeued: int = 0
    series_short: int = 0
    unexpected: int = 0
    manifest: str = "unchecked"
    error: str = ""


@dataclass
class Report:
    results: list[StudyResult] = field(default_factory=list)
    api: bool = False
    seconds: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def ok(self) -> bool:
        return all(r.outcome in ("verified", "requeued") for r in self.results)

    def summary(self) -> dict[str, Any]:
        return {"checked": len(self.results), "verified": self.count("verified"), "requeued": self.count("requeued"),
                "unresolved": self.count("unresolved"), "errors": self.count("error"),
                "instances_missing": sum(r.missing for r in self.results),
                "instances_requeued": sum(r.requeued for r in self.results),
                "manifests_requeued": sum(r.manifests_requeued for r in self.results),
                "manifest_checked": self.api, "seconds": round(self.seconds, 3)}

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary(), "studies": [asdict(r) for r in self.results if r.outcome != "verified"]}


# -- the reconciler ------------------------------------------------------------------------------


def _digest(values: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(values)).encode()).hexdigest()


class Reconciler:
    """``Reconciler(config, store, layout, engine_factory=...).run()``.

    ``engine_factory`` gives the de-identification engine used to regenerate missing instances; it
    is called only when something must be re-sent (it opens the linkage table).
    """

    def __init__(self, config: Config, store: StateStore, layout: SiteLayout, *,
                 engine_factory: Callable[[], DeidEngine] | None = None, reader: RegistryReader | None = None,
                 destination: str = DESTINATION, workers: int = WORKERS) -> None:
        self.config = config
        self.store = store
        self.layout = layout
        self.engine_factory = engine_factory
        self._engine: DeidEngine | None = None
        self.reader = reader
        self.destination = destination
        self.workers = workers
        self.outbox = Outbox(store)

    # -- what to check ---------------------------------------------------------------------------

    def targets(self, *, include_verified: bool = False, study_keys: Iterable[str] | None = None,
                verified_before: float | None = None) -> list[str]:
        """Studies in state pushed; verified ones too when asked (all, named, or verified before a time)."""
        if include_verified or study_keys is not None:
            sql, args = "state IN ('pushed', 'verified')", ()
        elif verified_before is not None:
            sql, args = "state='pushed' OR (state='verified' AND verified_at<?)", (verified_before,)
        else:
            sql, args = "state='pushed'", ()
        rows = self.store.conn.execute(f"SELECT study_key FROM studies WHERE {sql} ORDER BY study_key", args).fetchall()
        keys = [r[0] for r in rows]
        if study_keys is not None:
            wanted = set(study_keys)
            keys = [k for k in keys if k in wanted]
        return keys

    def sent(self, keys: list[str]) -> dict[str, list[Sent] | None]:
        """study key -> what each of its de-identified study UIDs sent (None: not known any more)."""
        conn = self.store.conn
        out: dict[str, list[Sent] | None] = {}
        for key in keys:
            records: list[Sent] | None = []
            uids = [r[0] for r in conn.execute("SELECT study_uid FROM study_outputs WHERE study_key=? ORDER BY study_uid",
                                               (key,))]
            for uid in uids:
                row = conn.execute(  # the latest acknowledged manifest of this study UID
                    "SELECT payload FROM outbox_jobs WHERE destination=? AND grp=? AND kind='manifest' AND state='done' "
                    "ORDER BY done_at DESC, id DESC LIMIT 1", (self.destination, uid)).fetchone()
                if row is None:
                    records = None
                    break
                assert records is not None
                records.append(Sent.from_manifest(json.loads(row[0])))
            out[key] = records if uids else None
        return out

    # -- the run ---------------------------------------------------------------------------------

    def run(self, *, include_verified: bool = False, study_keys: Iterable[str] | None = None,
            verified_before: float | None = None) -> Report:
        """Check the studies; raises :class:`RegistryUnreachable` when the registry cannot be reached
        (then nothing was changed)."""
        started = time.monotonic()
        report = Report()
        keys = self.targets(include_verified=include_verified, study_keys=study_keys, verified_before=verified_before)
        if not keys:
            report.seconds = time.monotonic() - started
            record_reconciliation(self.store, report.summary())
            return report
        sent = self.sent(keys)
        reader = self.reader or RegistryReader(self.config)
        checked: dict[str, list[tuple[Sent, Comparison]]] = {}
        try:
            report.api = reader.has_api()

            def check(key: str) -> tuple[str, list[tuple[Sent, Comparison]] | StudyResult]:
                records = sent[key]
                if records is None:
                    return key, StudyResult(key, "unresolved", error="what was sent is no longer recorded")
                try:
                    return key, [(s, compare(s, reader.held(s, report.api))) for s in records]
                except ReconcileError as exc:
                    return key, StudyResult(key, "error", error=str(exc))

            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="reconcile") as pool:
                for key, outcome in pool.map(check, keys):  # RegistryUnreachable propagates from here
                    if isinstance(outcome, StudyResult):
                        report.results.append(outcome)
                    else:
                        checked[key] = outcome
        except RegistryUnreachable:  # nothing was changed; remembered for status
            report.seconds = time.monotonic() - started
            record_reconciliation(self.store, {**Report(api=report.api, seconds=report.seconds).summary(),
                                              "registry_unreachable": True})
            raise
        finally:
            if self.reader is None:
                reader.close()
        matching = [k for k, comps in checked.items() if all(c.ok for _, c in comps)]
        self.store.mark_verified(matching)
        for key, comps in checked.items():
            unexpected = sum(c.unexpected for _, c in comps)
            manifest = _worst(c.manifest for _, c in comps)
            if key in matching:
                report.results.append(StudyResult(key, "verified", unexpected=unexpected, manifest=manifest))
                continue
            result = StudyResult(key, "unresolved", missing=sum(len(c.missing) for _, c in comps),
                                 series_short=sum(c.series_short for _, c in comps), unexpected=unexpected,
                                 manifest=manifest)
            try:
                self._mend(key, comps, result)
            except Exception as exc:  # one study's trouble must not stop the others; retried at the next run
                result.outcome, result.error = "error", f"resend-failed:{type(exc).__name__}"
                self.store.mark_unverified(key, only_if=("verified",))  # known incomplete: not verified any more
            report.results.append(result)
            log.warning("registry lacks part of a study", extra={
                "event": "reconcile_mismatch", "study": key, "outcome": result.outcome, "missing": result.missing,
                "requeued": result.requeued, "manifests_requeued": result.manifests_requeued,
                "manifest": manifest, "error": result.error})
        report.results.sort(key=lambda r: r.study)
        report.seconds = time.monotonic() - started
        record_reconciliation(self.store, report.summary())
        log.info("reconciliation done", extra={"event": "reconcile_done", **report.summary()})
        return report

    # -- mending ---------------------------------------------------------------------------------

    @property
    def engine(self) -> DeidEngine:
        if self._engine is None:
            if self.engine_factory is None:
                raise RuntimeError("no de-identification engine to regenerate instances with")
            self._engine = self.engine_factory()
        return self._engine

    def _mend(self, key: str, comps: list[tuple[Sent, Comparison]], result: StudyResult) -> None:
        """Re-queue exactly what the registry lacks; sets ``result.outcome`` and its counts."""
        missing = {uid: sent.study_uid for sent, comp in comps for uid in comp.missing}
        files: dict[str, Path] = {}
        out_dir = self.layout.outgoing / f"{key}.resend-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        if missing:
            files = self.regenerate(key, set(missing), out_dir)
        cfg = self.config.registry
        stamp = f"{time.time():.6f}"
        queued_instances = queued_manifests = 0
        with self.outbox.transaction():
            conn = self.store.conn  # this thread's connection: the transaction's
            row = conn.execute("SELECT state FROM studies WHERE study_key=?", (key,)).fetchone()
            if row is None or row[0] not in ("pushed", "verified"):  # e.g. another reconciliation re-queued it
                result.outcome, result.error = "unresolved", "study changed state meanwhile"
                for path in files.values():
                    path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    out_dir.rmdir()
                return
            for sent, comp in comps:
                instances = [read_outgoing(files[u], self.layout) for u in sorted(comp.missing) if u in files]
                job_ids: list[int] = []
                for batch in make_batches(instances, cfg.batch_max_instances, cfg.batch_max_bytes):
                    refs = [i.sop_instance_uid for i in batch]
                    job_key = f"{sent.study_uid}#resend-{_digest(refs)[:16]}-{stamp}"
                    self.outbox.enqueue("stow", job_key, self.destination,
                                        {"study_instance_uid": sent.study_uid, "instances": len(batch),
                                         "resend": True},
                                        files=[i.relpath for i in batch], refs=refs, sizes=[i.size for i in batch],
                                        group=sent.study_uid)
                    job_id = self.outbox.job_id("stow", job_key, self.destination)
                    assert job_id is not None
                    job_ids.append(job_id)
                    queued_instances += len(batch)
                if comp.manifest in ("missing", "different"):
                    job_key = f"{sent.study_uid}#{_digest([json.dumps(sent.manifest, sort_keys=True)])[:16]}-{stamp}"
                    self.outbox.enqueue("manifest", job_key, self.destination, sent.manifest, after=job_ids,
                                        group=sent.study_uid)
                    queued_manifests += 1
            # queued again; or known incomplete with nothing to send: not verified any more
            self.store.mark_unverified(key, "queued" if queued_instances or queued_manifests else "pushed")
        result.requeued, result.manifests_requeued = queued_instances, queued_manifests
        if queued_instances < len(missing):
            result.outcome = "unresolved"
            result.error = (f"{len(missing) - queued_instances} missing instance(s) could not be made again: no "
                            "original left on the spool, or de-identification no longer passes it")
        else:
            result.outcome = "requeued"

    def regenerate(self, key: str, wanted: set[str], out_dir: Path) -> dict[str, Path]:
        """De-identify the study's originals again, as the study worker did (same order, same checks,
        OCR included), writing only the outputs whose de-identified SOP Instance UID is ``wanted``;
        returns UID -> written file."""
        from connector.deid.study import deidentify_study

        rows = self.store.study_instances(key)  # the study worker's order (series, path)
        engine = self.engine
        if not wanted & {engine.uid(str(r["sop_instance_uid"])) for r in rows}:
            return {}  # none of the originals is on the spool any more
        sources = [self.layout.spool / r["path"] for r in rows]
        outcome = deidentify_study([p for p in sources if p.is_file()], out_dir, None, engine,
                                   ocr=self.config.deid.ocr, wanted=wanted)
        if not outcome.written:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        return {w.sop_instance_uid: w.path for w in outcome.written}


def _worst(values: Iterable[str]) -> str:
    order = ("different", "missing", "ok", "unchecked")
    vals = list(values)
    return min(vals, key=order.index) if vals else "unchecked"


def scheduled_job(config: Config, layout: SiteLayout, provider: Any) -> Callable[[], None]:
    """The daemon's periodic reconciliation (``[registry] reconcile_interval_minutes``)."""
    from connector.deid.engine import DeidEngine

    store = StateStore(layout.state_db)
    engine: list[DeidEngine] = []

    def factory() -> DeidEngine:
        if not engine:
            engine.append(DeidEngine.from_config(config, provider))
        return engine[0]

    def job() -> None:
        days = config.registry.reconcile_recheck_days
        try:
            Reconciler(config, store, layout, engine_factory=factory).run(
                verified_before=time.time() - days * 86400 if days > 0 else None)
        except RegistryUnreachable as exc:
            log.warning("registry unreachable; reconciliation skipped until the next run",
                        extra={"event": "reconcile_unreachable", "error": str(exc)})
        except Exception as exc:
            log.error("reconciliation failed", extra={"event": "reconcile_error", "error": type(exc).__name__})

    return job
