"""``site-connector echo``: C-ECHO, to check this connector's receiver or a remote PACS.

A rejected association is explained: which of the called AE title, the calling AE title or the
caller's address was refused (from the A-ASSOCIATE-RJ reason, and for this connector's own receiver
from its allow-lists), and the option that fixes it. Checking the local receiver after
``allowed_ae_titles`` was set works without options: the calling AE title then defaults to the
first allowed title.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import time

from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option, config_from_args, print_json
from connector.config import Config
from connector.pacs.scu import calling_ae as pacs_calling_ae
from connector.pacs.scu import PacsTlsError, client_tls_context

DEFAULT_CALLING_AET = "ECHOSCU"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("echo", help="send a C-ECHO (DICOM ping)",
                       description="Send a C-ECHO. Defaults check this connector's own receiver as configured. "
                       "Exit 0 when the peer answers success, 3 when it cannot be reached or rejects us; a "
                       "rejection is explained (called AE, calling AE or address) with the option that fixes it.")
    add_config_option(p)
    p.add_argument("--pacs", action="store_true",
                   help="check the PACS configured in [pacs] (its host, port and AE title, our calling AE title, "
                   "TLS when [pacs] tls = true); --host/--port/--called-aet/--calling-aet still override")
    p.add_argument("--host", help="peer address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="peer port (default: the configured [dicom] port)")
    p.add_argument("--called-aet", help="peer AE title (default: the configured [dicom] ae_title)")
    p.add_argument("--calling-aet", help="our AE title (default: for this connector's receiver the first of "
                   f"[dicom] allowed_ae_titles when set, else {DEFAULT_CALLING_AET})")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def is_local_receiver(config: Config, host: str, port: int) -> bool:
    """True when (host, port) is this connector's own receiver, as configured."""
    if port != config.dicom.port:
        return False
    if host in ("localhost", config.dicom.host):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    try:  # one of this server's own addresses
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
    return host in own


def explain_rejection(verdict: tuple[int, int, int] | None, *, local: bool, config: Config, calling: str,
                      called: str, host: str) -> str:
    """One sentence: what was refused and the option that fixes it."""
    if verdict is None:
        return "association rejected (no reason received)"
    result, source, diagnostic = verdict
    kind = "transient" if result == 0x02 else "permanent"
    allowed_aets, allowed_hosts = config.dicom.allowed_ae_titles, config.dicom.allowed_hosts
    if source == 0x01 and diagnostic == 0x03:
        if local:
            options = ", ".join(allowed_aets) if allowed_aets else "(none)"
            return (f"calling AE title {calling!r} refused: it is not in [dicom] allowed_ae_titles ({options}); "
                    f"use --calling-aet with one of them, or add {calling!r} to allowed_ae_titles")
        return (f"calling AE title {calling!r} refused by the peer: use --calling-aet with a title the peer knows, "
                f"or ask its administrators to add {calling!r}")
    if source == 0x01 and diagnostic == 0x07:
        return (f"called AE title {called!r} refused: the peer is not {called!r}; use --called-aet with its AE "
                "title" + ("" if not local else " (this connector's is [dicom] ae_title)"))
    if source == 0x01 and diagnostic == 0x02:
        return "application context refused: the peer is not a DICOM application this command can talk to"
    if source == 0x03 or (source == 0x01 and result == 0x02):
        return ("peer busy (too many associations); try again shortly" +
                ("; [dicom] max_associations sets the limit" if local else ""))
    if source == 0x01 and diagnostic == 0x01:
        if local and allowed_hosts:
            return (f"address refused: this computer's address ({host} as seen by the receiver) is not in "
                    f"[dicom] allowed_hosts ({', '.join(allowed_hosts)}); add it, or run echo from an allowed host")
        if local:
            return "association rejected without a reason (the receiver gave none)"
        return ("rejected without a reason: most PACS do this for an address or AE title they do not know; "
                "ask its administrators to add this server's address and the --calling-aet title")
    return f"association rejected ({kind}, source {source}, reason {diagnostic})"


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    tls = None
    if args.pacs:
        if not config.pacs.configured:
            raise CommandError("no PACS configured: set [pacs] host and ae_title", exitcodes.USAGE)
        args.host = args.host or config.pacs.host
        port = args.port or config.pacs.port
        called = args.called_aet or config.pacs.ae_title
        local = False
        calling = args.calling_aet or pacs_calling_ae(config)
        try:
            ctx = client_tls_context(config.pacs)
        except PacsTlsError as exc:
            raise CommandError(str(exc), exitcodes.USAGE) from None
        if ctx is not None:
            tls = (ctx, args.host if config.pacs.tls_check_hostname else None)
    else:
        args.host = args.host or "127.0.0.1"
        port = args.port or config.dicom.port
        called = args.called_aet or config.dicom.ae_title
        local = is_local_receiver(config, args.host, port)
        calling = args.calling_aet or (config.dicom.allowed_ae_titles[0] if local and config.dicom.allowed_ae_titles
                                       else DEFAULT_CALLING_AET)
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = args.timeout
    verdicts: list[tuple[int, int, int]] = []

    def on_acse(event: evt.Event) -> None:
        primitive = getattr(event, "primitive", None)
        if isinstance(primitive, A_ASSOCIATE) and primitive.result not in (None, 0x00):
            verdicts.append((int(primitive.result), int(primitive.result_source or 0), int(primitive.diagnostic or 0)))

    started = time.monotonic()
    assoc = ae.associate(args.host, port, ae_title=called, tls_args=tls, evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)])
    result: dict[str, object] = {"host": args.host, "port": port, "called_aet": called, "calling_aet": calling,
                                 "tls": tls is not None}
    if not assoc.is_established:
        if assoc.is_rejected:
            verdict = verdicts[0] if verdicts else None
            result.update(ok=False, error="association rejected",
                          explanation=explain_rejection(verdict, local=local, config=config, calling=calling,
                                                        called=called, host=args.host))
            if verdict is not None:
                result["reject"] = {"result": verdict[0], "source": verdict[1], "reason": verdict[2]}
        else:
            result.update(ok=False, error="no answer",
                          explanation=f"nothing answered on {args.host}:{port} within {args.timeout:g} s" +
                          (": is the daemon running ('systemctl status site-connector')?" if local else ""))
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
        print(f"C-ECHO {called}@{args.host}:{port} from {calling}: success ({result['seconds']} s)")
    else:
        why = result.get("explanation") or result.get("error") or result.get("status")
        print(f"C-ECHO {called}@{args.host}:{port} from {calling}: FAILED: {why}")
    return exitcodes.OK if result["ok"] else exitcodes.UNAVAILABLE
