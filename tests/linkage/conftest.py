"""Shared fixtures: a throw-away site folder with a config file and a key file, synthetic patients."""

from __future__ import annotations

import contextlib
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.cli.main import main as cli_main
from connector.config import Config, load_config
from connector.deid.provider import PatientIdentity
from connector.linkage import LinkageProvider, OpenOptions, create_key_file, open_linkage
from connector.linkage.paths import default_key_path


@dataclass
class Site:
    root: Path
    config_path: Path

    @property
    def config(self) -> Config:
        return load_config(self.config_path, environ={})

    @property
    def data_dir(self) -> Path:
        return self.config.storage.data_dir

    @property
    def key_file(self) -> Path:
        return default_key_path(self.config)

    @property
    def db(self) -> Path:
        return self.data_dir / "linkage" / "linkage.db"

    @property
    def audit_log(self) -> Path:
        return self.data_dir / "linkage" / "audit.log"

    def open(self, **kw: object) -> LinkageProvider:
        return open_linkage(self.config, OpenOptions(**kw))  # type: ignore[arg-type]

    def cli(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        """Run ``site-connector -c CONFIG linkage ARGS`` in-process; (exit code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _stdin(stdin):
            try:
                rc = cli_main(["-c", str(self.config_path), "linkage", *args])
            except SystemExit as exc:  # argparse usage errors
                rc = int(exc.code or 0)
        return rc, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _stdin(text: str) -> Iterator[None]:
    import sys

    old = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = old


def make_site(root: Path, *, extra: str = "", key: bool = True) -> Site:
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "connector.toml"
    config_path.write_text(
        '[site]\nid = "TEST01"\n[storage]\ndata_dir = "data"\n[linkage]\nscrypt_log_n = 14\n' + extra
    )
    site = Site(root, config_path)
    if key:
        create_key_file(site.key_file)
    return site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path / "site")


@pytest.fixture
def provider(site: Site) -> Iterator[LinkageProvider]:
    p = site.open()
    yield p
    p.close()


def fake_patient(n: int | None = None) -> PatientIdentity:
    """A synthetic, clearly fake patient (random unless ``n`` is given)."""
    tag = f"{n:07d}" if n is not None else secrets.token_hex(4).upper()
    return PatientIdentity(
        patient_id=f"SYN{tag}",
        issuer="SYNTH-HOSPITAL",
        name=f"SYNTHFAMILY{tag}^GIVENNAME",
        birth_date="19470312",
        sex="F",
    )
