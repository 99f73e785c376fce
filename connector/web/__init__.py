"""Health, metrics and the staff dashboard, served over HTTP on ``[http] host:port``.

A Flask application (:mod:`connector.web.app`, pages in :mod:`connector.web.views`, Jinja2
templates under ``templates/`` with autoescaping, the stylesheet under ``static/``), served by
waitress on a thread of the supervisor; ``/metrics`` through prometheus_client.

* :class:`WebServer` (``WebServer(config, store, layout, probes, *, intake=None, wake=None)``,
  ``start()``, ``stop()``, ``port``, ``url``): the server the daemon runs.
* :class:`RegistryReachability`: turns upload successes and failures into the ``registry`` probe.
* :class:`UserFile`: the dashboard's users (``site-connector users``).

Exports resolve lazily: :mod:`connector.config` imports :mod:`connector.web.settings`, and the
server imports the config, so this package must not import the server when it is first loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WebServer": "connector.web.server",
    "HealthReport": "connector.web.health",
    "RegistryReachability": "connector.web.health",
    "HttpConfig": "connector.web.settings",
    "users_path": "connector.web.settings",
    "UserError": "connector.web.users",
    "UserFile": "connector.web.users",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'connector.web' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
