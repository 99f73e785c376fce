"""Turning a de-identified study (and results, events) into outbox jobs.

One study becomes:

    subject   PUT  /api/v1/subjects/{pseudonym}               (key: pseudonym + hash of the body)
    stow      POST {dicomweb}/studies, one job per batch        (<= 50 instances or 64 MB each)
    manifest  POST /api/v1/studies/{study_uid}/manifest         (after the subject and every batch)

Why batches are keyed by their content: a study can be de-identified again (a late instance
re-opens it); instances already queued are not queued twice, new ones form new batches, and the
manifest is re-sent only when the set of instances changed. Everything happens in one transaction,
so a crash never leaves half a study queued.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from connector.outbox import Outbox
from connector.push.jobs import canonical_json

if TYPE_CHECKING:
    from connector.store.layout import SiteLayout

DESTINATION = "registry"
MAX_INSTANCES = 50
MAX_BYTES = 64 * 1024**2
_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
         "PatientIdentityRemoved", "InstanceNumber"]


class NotReadyForRegistry(ValueError):
    """A file handed to :func:`queue_study` must not go to the registry (message has no values)."""


@dataclass(frozen=True)
class OutgoingInstance:
    path: Path
    relpath: str
    size: int
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    instance_number: int


def _digest(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def _relpath(path: Path, layout: SiteLayout | None) -> str:
    if layout is not None:
        try:
            return str(path.resolve().relative_to(layout.data_dir.resolve()))
        except ValueError:
            pass
    return str(path.resolve())


def read_outgoing(path: Path, layout: SiteLayout | None = None) -> OutgoingInstance:
    """The header facts the push needs; refuses files that are not marked de-identified."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except Exception as exc:
        raise NotReadyForRegistry(f"unreadable DICOM file ({type(exc).__name__})") from None
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        raise NotReadyForRegistry("a file is not marked PatientIdentityRemoved=YES")
    sop = str(ds.get("SOPInstanceUID", ""))
    if not sop:
        raise NotReadyForRegistry("a file has no SOPInstanceUID")
    try:
        number = int(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return OutgoingInstance(path, _relpath(path, layout), path.stat().st_size, sop,
                            str(ds.get("SeriesInstanceUID", "")), str(ds.get("StudyInstanceUID", "")),
                            str(ds.get("Modality", "")), number)


def make_batches(instances: list[OutgoingInstance], max_instances: int = MAX_INSTANCES,
                 max_bytes: int = MAX_BYTES) -> list[list[OutgoingInstance]]:
    """Consecutive batches of at most ``max_instances`` and ``max_bytes`` (a bigger file goes alone)."""
    batches: list[list[OutgoingInstance]] = []
    current: list[OutgoingInstance] = []
    size = 0
    for inst in instances:
        if current and (len(current) >= max_instances or size + inst.size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(inst)
        size += inst.size
    if current:
        batches.append(current)
    return batches


def queue_study(outbox: Outbox, *, study_uid: str, pseudonym: str, subject: dict[str, Any] | None, files: list[Path],
                layout: SiteLayout | None, destination: str = DESTINATION, max_instances: int = MAX_INSTANCES,
                max_bytes: int = MAX_BYTES) -> int:
    """Queue one de-identified study: subject, STOW-RS batches, then its manifest. Returns new jobs.

    ``study_uid`` is the de-identified Study Instance UID (checked against the files); ``subject``
    is the registry's subject record (e.g. sex, age at index scan; ``site`` is added when sending);
    ``files`` are the study's de-identified objects (normally under ``layout.outgoing``).
    Pass ``max_instances``/``max_bytes`` from ``[registry] batch_max_*``.
    """
    instances: dict[str, OutgoingInstance] = {}
    for path in files:
        inst = read_outgoing(Path(path), layout)
        if inst.study_instance_uid != study_uid:
            raise NotReadyForRegistry("a file belongs to another study than the one queued")
        instances.setdefault(inst.sop_instance_uid, inst)
    ordered = sorted(instances.values(), key=lambda i: (i.series_instance_uid, i.instance_number, i.relpath))
    created = 0
    with outbox.transaction():
        if subject is not None:  # None: the subject is already known to the registry (not the index study)
            subject_body = dict(subject)
            subject_key = f"{pseudonym}#{_digest(subject_body)[:16]}"
            created += outbox.enqueue("subject", subject_key, destination, {"pseudonym": pseudonym,
                                                                            "subject": subject_body}, group=pseudonym)
        known = outbox.group_items(destination, study_uid, "stow")
        for inst in ordered:  # written again by a re-run: its new copy is removed like the first
            if inst.sop_instance_uid in known:
                item_id, _, state = known[inst.sop_instance_uid]
                if state == "done":
                    outbox.repoint_item(item_id, inst.relpath)
        fresh = [i for i in ordered if i.sop_instance_uid not in known]
        stow_jobs = {job_id for _, job_id, _ in (known[i.sop_instance_uid] for i in ordered
                                                 if i.sop_instance_uid in known)}
        for batch in make_batches(fresh, max_instances, max_bytes):
            refs = [i.sop_instance_uid for i in batch]
            key = f"{study_uid}#{_digest(sorted(refs))[:16]}"
            created += outbox.enqueue("stow", key, destination, {"study_instance_uid": study_uid,
                                                                 "instances": len(batch)},
                                      files=[i.relpath for i in batch], refs=refs, sizes=[i.size for i in batch],
                                      group=study_uid)
            job_id = outbox.job_id("stow", key, destination)
            assert job_id is not None
            stow_jobs.add(job_id)
        series: dict[str, dict[str, Any]] = {}
        for inst in ordered:
            entry = series.setdefault(inst.series_instance_uid, {"series_instance_uid": inst.series_instance_uid,
                                                                 "modality": inst.modality, "instances": 0})
            entry["instances"] += 1
        manifest = {"study_instance_uid": study_uid, "pseudonym": pseudonym,
                    "instance_count": len(ordered), "sop_instance_uids": sorted(instances),
                    "series": sorted(series.values(), key=lambda s: s["series_instance_uid"])}
        subject_id = outbox.job_id("subject", subject_key, destination)
        assert subject_id is not None
        created += outbox.enqueue("manifest", f"{study_uid}#{_digest(manifest)[:16]}", destination, manifest,
                                  after=[subject_id, *sorted(stow_jobs)], group=study_uid)
    return created


def _result_key(result: dict[str, Any]) -> str:
    raw_model = result.get("model")
    model: dict[str, Any] = raw_model if isinstance(raw_model, dict) else {}
    ident = [result.get("study_instance_uid"), result.get("series_instance_uid"),
             model.get("sha256") or model.get("version") or model.get("name")]
    if all(v is None for v in ident):
        return _digest(result)
    return _digest(ident)


def queue_result(outbox: Outbox, result: dict[str, Any], *, destination: str = DESTINATION,
                 after: list[Any] | None = None) -> bool:
    """Queue a CAC result for ``POST /api/v1/results`` (de-identified UIDs only).

    One result per (study, series, model): a recomputation with other timings is not sent twice.
    ``after`` may name jobs to wait for (e.g. the study's manifest).
    """
    return outbox.enqueue("result", _result_key(result), destination, dict(result), after=after,
                          group=str(result.get("study_instance_uid") or ""))


def queue_event(outbox: Outbox, event: dict[str, Any], idempotency_key: str, *,
                destination: str = DESTINATION) -> bool:
    """Queue a follow-up event for ``POST /api/v1/events``; ``idempotency_key`` is sent as is."""
    if not idempotency_key or len(idempotency_key) > 200:
        raise ValueError("idempotency_key must be 1-200 characters")
    return outbox.enqueue("event", idempotency_key, destination, dict(event),
                          group=str(event.get("pseudonym") or ""))
