"""``site-connector echo``: C-ECHO, to check this connector's receiver or a remote PACS."""

from __future__ import annotations

import argparse
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from connector.cli import exitcodes
from connector.cli.common import add_config_option, config_from_args, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("echo", help="send a C-ECHO (DICOM ping)",
                       description="Send a C-ECHO. Defaults check this connector's own receiver as configured. "
                       "Exit 0 when the peer answers success, 3 when it cannot be reached or rejects us.")
    add_config_option(p)
    p.add_argument("--host", default="127.0.0.1", help="peer address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="peer port (default: the configured [dicom] port)")
    p.add_argument("--called-aet", help="peer AE title (default: the configured [dicom] ae_title)")
    p.add_argument("--calling-aet", default="ECHOSCU", help="our AE title (default ECHOSCU)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    port = args.port or config.dicom.port
    called = args.called_aet or config.dicom.ae_title
    ae = AE(ae_title=args.calling_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = args.timeout
    started = time.monotonic()
    assoc = ae.associate(args.host, port, ae_title=called)
    result: dict[str, object] = {"host": args.host, "port": port, "called_aet": called}
    if not assoc.is_established:
        result.update(ok=False, error="association rejected" if assoc.is_rejected else "no answer")
    else:
        status = assoc.send_c_echo()
        assoc.release()
        code = getattr(status, "Status", None)
        result.update(ok=code == 0x0000, status=None if code is None else f"0x{code:04X}")
        if code is None:
            result["error"] = "no response"
    result["seconds"] = round(time.monotonic() - started, 3)
    if args.json:
        print_json(result)
    elif result["ok"]:
        print(f"C-ECHO {called}@{args.host}:{port}: success ({result['seconds']} s)")
    else:
        print(f"C-ECHO {called}@{args.host}:{port}: FAILED ({result.get('error') or result.get('status')})")
    return exitcodes.OK if result["ok"] else exitcodes.UNAVAILABLE
