"""``site-connector run``: the daemon in the foreground (systemd, Docker or a terminal)."""

from __future__ import annotations

import argparse
import sys

from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option, config_from_args
from connector.daemon import Supervisor
from connector.preflight import DaemonStartError
from connector.logsetup import setup_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the daemon in the foreground",
                       description="Run the receiver and the pipeline until SIGTERM or SIGINT. Logs are JSON "
                       "lines on stderr. Without a configuration file the embedded defaults are used: data in "
                       "./site-connector-data, DICOM port 11112, AE title SITECONN.")
    add_config_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_logging(config.logging.level, config.logging.file)
    if config.source == "embedded defaults":
        print(f"site-connector: no configuration file given; using embedded defaults "
              f"(data in {config.storage.data_dir}, AE {config.dicom.ae_title} on port {config.dicom.port})",
              file=sys.stderr)
    daemon = Supervisor(config)
    try:
        daemon.run_forever()
    except DaemonStartError as exc:  # one line: what failed and how to fix it
        raise CommandError(f"cannot start: {exc}", exc.code) from None
    except OSError as exc:  # not foreseen by the start-up checks
        where = f" ({exc.filename})" if exc.filename else ""
        raise CommandError(f"cannot run: {exc.strerror or type(exc).__name__}{where}", exitcodes.FAILURE) from None
    return exitcodes.OK
