"""``site-connector registry serve``: run the dev registry (the embedded default push target).

The token is read from ``--token-file``, or created once as ``<data>/token`` (mode 0600); point the
connector's ``[registry] token_file`` at the same file. ``registry stats`` prints what a running
registry holds.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from connector.cli import exitcodes
from connector.cli.common import CommandError, print_json

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("registry", help="the development registry (STOW-RS + JSON API over files and SQLite)",
                       description="A local registry implementing the contract in docs/registry-api.yaml: the "
                       "embedded default push target, and the peer the tests use.")
    rsub = p.add_subparsers(dest="registry_command", metavar="SUBCOMMAND")
    rsub.required = True

    s = rsub.add_parser("serve", help="serve the dev registry until SIGTERM/Ctrl-C",
                        description="Serve the dev registry. Every endpoint needs the bearer token.")
    s.add_argument("--data", metavar="DIR", type=Path, required=True, help="folder for stored instances and records")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8042, help="port (default 8042)")
    s.add_argument("--token-file", metavar="F", type=Path,
                   help="file holding the bearer token (default: <data>/token, created if absent)")
    s.add_argument("--on-duplicate", choices=("accept", "conflict"), default="accept",
                   help="a re-sent instance with the same bytes: count it and answer stored (accept, default), "
                        "or answer 409 like registries that refuse re-sends (conflict)")
    s.add_argument("--no-fsync", action="store_true", help="do not fsync received instances (tests only)")
    s.set_defaults(func=run_serve)

    st = rsub.add_parser("stats", help="counts held by a running dev registry",
                         description="Print instance, study, subject, manifest, result and event counts.")
    st.add_argument("--url", default="http://127.0.0.1:8042", help="registry base URL")
    st.add_argument("--token-file", metavar="F", type=Path, required=True, help="file holding the bearer token")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=run_stats)


def run_serve(args: argparse.Namespace) -> int:
    from connector.logsetup import setup_logging
    from devregistry import RegistryServer, load_or_create_token

    setup_logging("INFO")
    try:
        token, token_path = load_or_create_token(args.data, args.token_file)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read the registry token: {exc}", exitcodes.USAGE) from None
    try:
        server = RegistryServer(args.data, token=token, host=args.host, port=args.port,
                                fsync=not args.no_fsync, on_duplicate=args.on_duplicate)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}", exitcodes.UNAVAILABLE) from None
    done = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start()
    print(f"dev registry listening on {server.url} (data {args.data}, token file {token_path})",
          file=sys.stderr, flush=True)
    log.info("dev registry started", extra={"event": "registry_started", "url": server.url})
    done.wait()
    server.stop()
    log.info("dev registry stopped", extra={"event": "registry_stopped"})
    return exitcodes.OK


def run_stats(args: argparse.Namespace) -> int:
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        raise CommandError(f"cannot read {args.token_file}: {exc.strerror}", exitcodes.USAGE) from None
    try:
        resp = httpx.get(args.url.rstrip("/") + "/api/v1/stats", headers={"Authorization": f"Bearer {token}"},
                         timeout=30)
    except httpx.TransportError as exc:
        raise CommandError(f"registry not reachable at {args.url} ({type(exc).__name__})",
                           exitcodes.UNAVAILABLE) from None
    if resp.status_code != 200:
        raise CommandError(f"registry answered HTTP {resp.status_code}", exitcodes.FAILURE)
    stats = resp.json()
    if args.json:
        print_json(stats)
    else:
        for key in sorted(stats):
            print(f"{key + ':':22s}{stats[key]}")
    return exitcodes.OK
