"""The registry stage: queue the de-identified study (subject, STOW-RS batches, manifest)."""

from __future__ import annotations

from pathlib import Path

from connector.config import Config
from connector.deid.provider import IdentityProvider
from connector.pipeline.context import Step, StudyContext
from connector.store.layout import SiteLayout
from connector.store.state import StateStore
from connector.outbox.delivery import record_study_outputs


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
    from connector.push.queueing import queue_study

    outbox = Outbox(store)

    def step(ctx: StudyContext) -> None:
        for study_uid in ctx.deidentified.study_uids:
            written = [w for w in ctx.deidentified.written if w.study_instance_uid == study_uid]
            queue_study(outbox, study_uid=study_uid, pseudonym=written[0].pseudonym,
                        subject=subject_record(written[0].path, written[0].source, provider),
                        files=[w.path for w in written], layout=layout,
                        max_instances=config.registry.batch_max_instances,
                        max_bytes=config.registry.batch_max_bytes)
        record_study_outputs(store, ctx.study_key, ctx.deidentified.study_uids)
        ctx.notes["state"] = "queued"

    return step
