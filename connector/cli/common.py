"""Helpers shared by the CLI command modules: config loading and output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from connector.config import Config, ConfigError, load_config, resolve_config_path


class CommandError(Exception):
    """A failure to report as one line on stderr with a specific exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: $SITE_CONNECTOR_CONFIG, else the embedded defaults)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the configuration the user selected; ConfigError propagates to main() (exit 2)."""
    return load_config(resolve_config_path(getattr(args, "config", None)))


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


__all__ = ["CommandError", "ConfigError", "add_config_option", "config_from_args", "print_json"]
