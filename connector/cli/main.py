"""Entry point of the ``site-connector`` command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from connector import __version__
from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option
from connector.config import ConfigError
from connector.store.layout import PRIVATE_UMASK

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
    "connector.cli.reconcile_cmd",
    "connector.cli.study_cmd",
    "connector.cli.backfill_cmd",
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


EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool ended by SIGPIPE (e.g. `yes | head -1`)


def _quiet_broken_pipe() -> int:
    """The reader went away (``site-connector status | head -1``): stop quietly, like other Unix tools.

    stdout is pointed at /dev/null so that the interpreter's final flush cannot complain either.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, --version or a usage error: their output may meet a closed pipe too
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _quiet_broken_pipe()
        raise
    except BrokenPipeError:
        return _quiet_broken_pipe()
    # Every command may write PHI (spool, state DB, logs, results, exports): owner-only, whatever the
    # shell's umask. Restored afterwards for callers that run main() in their own process (tests).
    previous_umask = os.umask(PRIVATE_UMASK)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe can still be handled, not at interpreter exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except ConfigError as exc:
        print(f"site-connector: configuration error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except CommandError as exc:
        print(f"site-connector: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    finally:
        os.umask(previous_umask)


if __name__ == "__main__":
    raise SystemExit(main())
