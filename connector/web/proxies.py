"""Believe ``X-Forwarded-For`` and ``X-Forwarded-Proto`` from the configured reverse proxies only.

Behind a reverse proxy every request comes from the proxy's address, and the browser's HTTPS
ends at the proxy; the proxy passes the client's address and scheme in those headers. Anyone can
send them, so they are believed only when the peer is one of ``[http] trusted_proxies``, and are
dropped from every other peer.

The parsing is waitress's own (:func:`waitress.proxy_headers.proxy_headers_middleware`, the code
behind its ``trusted_proxy`` / ``trusted_proxy_headers`` settings): from a trusted peer it sets
``REMOTE_ADDR`` to the client's address and ``wsgi.url_scheme`` to the forwarded scheme, believing
only the last hop (``trusted_proxy_count = 1``, the address the proxy itself saw), so a client
cannot smuggle an address in front of it. Why not waitress's settings alone: ``trusted_proxy``
takes one address, and a site may run a pair of proxies or a pool on a subnet. So the server is
started with waitress's header handling off, and this gate picks, per request, waitress's
middleware set up to believe the headers or to drop them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from waitress.proxy_headers import proxy_headers_middleware

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
TRUSTED_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto"})

# create_server() keywords that turn waitress's own (single-address) proxy handling off: the gate does it
WAITRESS_OFF = {"trusted_proxy": None, "clear_untrusted_proxy_headers": False}


def networks(entries: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(e, strict=False) for e in entries]


def is_trusted(peer: str, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(peer.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in trusted)


def proxy_gate(app: WsgiApp, trusted_proxies: Iterable[str]) -> WsgiApp:
    """``app`` behind the forwarded-header rules: believed from ``trusted_proxies``, dropped otherwise."""
    trusted = networks(trusted_proxies)
    believed = proxy_headers_middleware(app, trusted_proxy="*", trusted_proxy_count=1,
                                        trusted_proxy_headers=set(TRUSTED_HEADERS), clear_untrusted=True)
    dropped = proxy_headers_middleware(app, trusted_proxy=None, clear_untrusted=True)

    def gate(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        peer = str(environ.get("REMOTE_ADDR", ""))
        return (believed if trusted and is_trusted(peer, trusted) else dropped)(environ, start_response)

    return gate
