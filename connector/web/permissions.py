"""Who may use each dashboard route: one declaration per view, checked before the view runs.

Why a declaration on every view rather than checks inside some of them: a check that lives in the
view is easy to forget in the next one (the follow-up preview resolved MRNs for role ``it`` while
``/search`` refused it). Here every view says who may call it, with :func:`allow` or
:func:`public`; :mod:`connector.web.app` checks the declaration on each request and refuses (403)
a signed-in user whose role is not listed, and any route that declares nothing (fail closed).
:func:`undeclared` lists such routes; a test walks ``app.url_map`` with it, so a new route without a
declaration fails the suite before it ships.

The declarations are read once, when the app is built (:func:`freeze`): a permission belongs to
the route, so a view swapped in later keeps its route's, and a route added later has none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask

from connector.web.users import COORDINATOR, ROLES

View = TypeVar("View", bound=Callable[..., Any])

PUBLIC = "public"  # no sign-in: health, metrics, static files, the sign-in form
STAFF = ROLES  # every signed-in role
COORDINATORS = (COORDINATOR,)  # what resolves patient identifiers to pseudonyms (or back)
_ATTRIBUTE = "dashboard_permission"


def allow(*roles: str) -> Callable[[View], View]:
    """Signed-in users with one of ``roles`` may call the view."""
    unknown = set(roles) - set(ROLES)
    if not roles or unknown:
        raise ValueError(f"allow() needs roles among {ROLES} (got {roles!r})")
    return _declare(frozenset(roles))


def public(view: View) -> View:
    """Anyone may call the view, signed in or not (it must show counts only, never identifiers)."""
    return _declare(PUBLIC)(view)


def _declare(permission: frozenset[str] | str) -> Callable[[View], View]:
    def mark(view: View) -> View:
        setattr(view, _ATTRIBUTE, permission)
        return view
    return mark


def permission_of(view: Callable[..., Any] | None) -> frozenset[str] | str | None:
    """The view's declaration: :data:`PUBLIC`, the roles allowed, or None when it declares nothing."""
    value = getattr(view, _ATTRIBUTE, None)
    return value if value == PUBLIC or isinstance(value, frozenset) else None


def undeclared(app: Flask) -> list[str]:
    """Endpoints of ``app``'s URL map with no declared permission (each answers 403 to everybody)."""
    return sorted({rule.endpoint for rule in app.url_map.iter_rules() if required(app, rule.endpoint) is None})


def freeze(app: Flask) -> None:
    """Record every route's declaration; :func:`required` answers from this record."""
    app.extensions[_ATTRIBUTE] = {rule.endpoint: permission_of(app.view_functions.get(rule.endpoint))
                                  for rule in app.url_map.iter_rules()}


def required(app: Flask, endpoint: str) -> frozenset[str] | str | None:
    """What the route ``endpoint`` declared when the app was built (None: nothing, so nobody may use it)."""
    return app.extensions.get(_ATTRIBUTE, {}).get(endpoint)
