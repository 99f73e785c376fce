"""Entry point of the ``site-connector`` command."""

from __future__ import annotations

import argparse
import importlib
import sys

from connector import __version__
from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option
from connector.config import ConfigError

# Each module registers its sub-commands. Add a line here to add a command group.
COMMAND_MODULES = [
    "connector.cli.init_cmd",
    "connector.cli.run_cmd",
    "connector.cli.status_cmd",
    "connector.cli.echo_cmd",
    "connector.cli.demo_cmd",
    "connector.cli.linkage_cmd",
    "connector.cli.cac_cmd",
    "connector.cli.deid_cmd",
    "connector.cli.registry_cmd",
    "connector.cli.web_cmd",
    "connector.cli.followup_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="site-connector",
        description="Receive DICOM from the hospital PACS, de-identify it, score coronary calcium and "
        "push it to the research registry.",
        epilog="Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error, 3 peer unavailable.",
    )
    parser.add_argument("--version", action="version", version=f"site-connector {__version__}")
    add_config_option(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"site-connector: configuration error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except CommandError as exc:
        print(f"site-connector: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
