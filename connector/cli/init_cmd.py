"""``site-connector init DIR``: create a site's configuration and folders."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from connector.cli import exitcodes
from connector.cli.common import CommandError
from connector.config import DEFAULT_CONFIG_NAME, ConfigError, load_config, render_template
from connector.store.layout import SiteLayout


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create DIR/connector.toml and the data and key folders",
                       description="Write DIR/connector.toml with commented defaults and create the data and "
                       "key folders (mode 0700). Refuses to overwrite an existing configuration.")
    p.add_argument("dir", metavar="DIR", type=Path, help="installation folder, e.g. /etc/site-connector")
    p.add_argument("--site-id", default="SITE01", help="site code from the registry (default SITE01)")
    p.add_argument("--ae-title", default="SITECONN", help="AE title the PACS will send to (default SITECONN)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    p.add_argument("--registry-url", default="", help="registry base URL (default: none yet)")
    p.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="data folder, relative to DIR unless absolute (default DIR/data)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target: Path = args.dir
    config_path = target / DEFAULT_CONFIG_NAME
    if config_path.exists():
        raise CommandError(f"{config_path} already exists; not overwriting it", exitcodes.FAILURE)
    values: dict[str, dict[str, Any]] = {
        "site": {"id": args.site_id},
        "dicom": {"ae_title": args.ae_title, "port": args.port},
        "storage": {"data_dir": args.data_dir},
        "keys": {"dir": Path("keys")},
    }
    if args.registry_url:
        values["registry"] = {"url": args.registry_url}
    text = render_template(values)
    target.mkdir(parents=True, exist_ok=True)
    tmp = config_path.with_suffix(".toml.part")
    tmp.write_text(text)
    try:
        config = load_config(tmp)  # validate what we are about to install (bad --site-id etc.)
    except ConfigError as exc:
        tmp.unlink()
        raise CommandError(f"invalid value: {exc.key}: {exc.problem}", exitcodes.USAGE) from None
    os.chmod(tmp, 0o640)
    os.replace(tmp, config_path)
    SiteLayout.from_config(config).ensure()
    key_note = _create_keys(config)
    print(f"wrote {config_path}")
    print(f"data folder: {config.storage.data_dir}")
    print(f"key folder:  {config.key_dir}{key_note}")
    print(f"next: site-connector -c {config_path} run")
    return exitcodes.OK


def _create_keys(config: Any) -> str:
    """Create the site key file when the linkage component is installed."""
    try:
        from connector.linkage import create_key_file  # type: ignore[attr-defined]
        from connector.linkage.paths import default_key_path  # type: ignore[attr-defined]
    except ImportError:
        return ""
    path = default_key_path(config)
    if path.exists():
        return f" (key file {path.name} kept)"
    create_key_file(path)
    return f" (created {path.name}, mode 0600: back it up separately)"
