"""Pushing de-identified studies, results and events to the central registry.

Entry points (the daemon calls these):

* :func:`queue_study` after de-identification: subject PUT, STOW-RS batches, manifest POST.
* :func:`queue_result` (CAC results) and :func:`queue_event` (follow-up events).
* :class:`PushWorker` drains the outbox: ``PushWorker(config, store, layout).start()`` / ``.stop()``.

Names are imported lazily: :mod:`connector.config` imports :mod:`connector.push.settings`, and
the worker imports the config; a lazy package keeps that from becoming an import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.push.queueing import queue_event, queue_result, queue_study
    from connector.push.settings import RegistryConfig
    from connector.push.worker import PushWorker

_EXPORTS = {
    "queue_study": "connector.push.queueing",
    "queue_result": "connector.push.queueing",
    "queue_event": "connector.push.queueing",
    "PushWorker": "connector.push.worker",
    "RegistryConfig": "connector.push.settings",
}

__all__ = ["PushWorker", "RegistryConfig", "queue_event", "queue_result", "queue_study"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'connector.push' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
