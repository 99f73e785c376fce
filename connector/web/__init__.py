"""Health, metrics and the staff dashboard, served over HTTP on ``[http] host:port``.

A Flask application (:mod:`connector.web.app`, pages in :mod:`connector.web.views`, Jinja2
templates under ``templates/`` with autoescaping, the stylesheet under ``static/``), served by
waitress on a thread of the supervisor; ``/metrics`` through prometheus_client.

* :class:`connector.web.site_context.SiteContext`: what the pages work with (config, state store,
  users, linkage provider, intake, health probes).
* :class:`connector.web.server.WebServer` (``WebServer(site)``, ``start()``, ``stop()``, ``port``,
  ``url``): serves the app the daemon runs.
* :class:`connector.web.health.RegistryReachability`: upload successes and failures as the
  ``registry`` probe.
* :class:`connector.web.users.UserFile`: the dashboard's users (``site-connector users``).
"""
