"""What every dashboard page shares: the site context, the layout's values, the CSRF field.

Why its own module: the page blueprints (views, search, backfill) and the app factory all need these,
and keeping them out of :mod:`connector.web.app` lets the app import its blueprints without the
blueprints importing the app back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import current_app, g, render_template
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup, escape

from connector import __version__

if TYPE_CHECKING:
    from connector.web.site_context import SiteContext

CSRF_FIELD = "csrf"
NAV = [("/", "Overview"), ("/studies", "Studies"), ("/quarantine", "Quarantine"), ("/outbox", "Outbox"),
       ("/followup", "Follow-up"), ("/backfill", "Backfill"), ("/cac/validation", "CAC validation")]

def site() -> SiteContext:
    """The :class:`SiteContext` this app was made for (config, state store, users, probes...)."""
    return current_app.extensions["site_connector"]  # type: ignore[no-any-return]


def csrf_field() -> Markup:
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, escape(generate_csrf()))


def page(template: str, title: str, current: str = "", status: int = 200, **values: Any) -> tuple[str, int]:
    """Render a dashboard page with the layout's values (user, navigation, site id)."""
    web = site()
    user = g.get("user")
    nav = NAV + ([("/search", "Find patient")] if user and g.get("role") == "coordinator" else [])
    return render_template(template, title=title, current=current, user=user, nav=nav, role=g.get("role"),
                           site=web.config.site.id, version=__version__, **values), status


def message(title: str, text: str, status: int) -> tuple[str, int]:
    return page("message.html", title, status=status, heading=title, text=text)
