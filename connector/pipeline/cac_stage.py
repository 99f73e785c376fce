"""The CAC stage (optional): score calcium, queue the result, add the SR and SEG to the study."""

from __future__ import annotations

import logging
from pathlib import Path

from connector.config import Config
from connector.deid.engine import DeidEngine
from connector.pipeline.context import Step, StudyContext
from connector.store.layout import SiteLayout
from connector.store.state import StateStore

log = logging.getLogger(__name__)


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
    from connector.push.queueing import queue_result

    runner = runner or LazyRunner(config)
    outbox = Outbox(store)
    layout = layout or SiteLayout.from_config(config)
    to_pacs = outbox if config.results.return_to_pacs else None  # [results] return_to_pacs
    engines: dict[str, DeidEngine] = {}

    def step(ctx: StudyContext) -> None:
        if not ctx.deidentified.written:
            return
        model = runner.get()
        sha = str(model.manifest.sha256)  # type: ignore[attr-defined]
        if sha not in engines:
            engines.clear()
            engines[sha] = results_engine(config, engine.provider, model.manifest.summary())  # type: ignore[attr-defined]
        results_deid = engines[sha]
        pseudonym = ctx.deidentified.written[0].pseudonym
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
        ctx.deidentified.quarantined.append(quarantine_result(layout.quarantine, original, result))
        log.error("CAC result object not sent: de-identification refused it",
                  extra={"event": "cac_dicom_quarantined", "study": ctx.study_key, "reason": result.reason})
        return
    target = ctx.out_dir / output_name(result)
    write_file_durably(target, result.data, sync=deid.fsync)
    ctx.deidentified.written.append(WrittenObject(original, target, result.sop_instance_uid, result.series_instance_uid,
                                             result.study_instance_uid, result.sop_class_uid, result.modality,
                                             result.pseudonym))
