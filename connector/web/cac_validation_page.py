"""The dashboard's CAC validation page: the last ``site-connector cac validate`` run per model hash.

Data come from ``cac_validation_runs`` (:mod:`connector.infer.validation_store`): model identity,
counts and agreement figures, never a study or an identifier. The configured model (``[cac]
model_dir``, else the bundled one) is marked, with a notice when it has no run yet: a site should
not send results to the registry, or back to the PACS, from a model it has never compared with its
own readers.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from connector.web.permissions import STAFF, allow
from connector.web.rendering import page, site

cac_validation_bp = Blueprint("cac_validation", __name__)


def _configured_model() -> dict[str, Any] | None:
    from connector.infer.errors import ModelError
    from connector.infer.manifest import BUNDLED_MODEL_DIR, load_manifest

    cac = site().config.cac
    try:
        manifest = load_manifest(cac.model_dir or BUNDLED_MODEL_DIR)
    except ModelError:
        return None
    return manifest.summary()


@cac_validation_bp.get("/cac/validation")
@allow(*STAFF)
def cac_validation() -> Any:
    from connector.infer.validation_store import last_runs_per_model

    web = site()
    runs = last_runs_per_model(web.store.conn)
    configured = _configured_model()
    current = configured["sha256"] if configured else None
    return page("cac_validation.html", "CAC validation", "/cac/validation", runs=runs, configured=configured,
                configured_run=next((r for r in runs if r["model_sha256"] == current), None),
                cac_enabled=web.config.cac.enabled)
