"""Typed configuration: one TOML file, validated at start-up, overridable from the environment.

Why this shape: hospital IT edits one file and sometimes injects values from a container or a
systemd drop-in. Both paths go through the same typed dataclasses, and any bad value produces a
single line that names the source (file or environment variable), the key and the problem, so the
daemon never starts half-configured.

Each section is a frozen dataclass of plain values in :mod:`connector.settings` (a leaf: it imports no
stage package); the root :class:`Config` here composes them and loads them. Code that needs values
derived from several sections (the linkage files, the rule files, our AE title towards the PACS)
finds them where it is used. Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.settings.backfill import BackfillConfig
from connector.settings.cac import CacConfig, ResultsConfig
from connector.settings.core import (
    AssembleConfig,
    DicomConfig,
    DropFolderConfig,
    KeysConfig,
    LoggingConfig,
    ServiceConfig,
    SiteConfig,
    StorageConfig,
)
from connector.settings.deid import DeidConfig
from connector.settings.fhir import FhirConfig
from connector.settings.followup import FollowupConfig
from connector.settings.hl7 import Hl7Config
from connector.settings.http import HttpConfig
from connector.settings.linkage import LinkageConfig
from connector.settings.pacs import PacsConfig
from connector.settings.pacs import cross_check as _pacs_cross_check
from connector.settings.registry import RegistryConfig
from connector.settings.stow import StowConfig
from connector.settings.stow import cross_check as _stow_cross_check

ENV_PREFIX = "SITE_CONNECTOR__"
ENV_CONFIG_FILE = "SITE_CONNECTOR_CONFIG"
DEFAULT_CONFIG_NAME = "connector.toml"


class ConfigError(Exception):
    """A configuration value is missing or wrong. ``str()`` is the one line shown to the operator."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


@dataclass(frozen=True)
class Config:
    site: SiteConfig = field(default_factory=SiteConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    pacs: PacsConfig = field(default_factory=PacsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    assemble: AssembleConfig = field(default_factory=AssembleConfig)
    dropfolder: DropFolderConfig = field(default_factory=DropFolderConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    linkage: LinkageConfig = field(default_factory=LinkageConfig)
    deid: DeidConfig = field(default_factory=DeidConfig)
    cac: CacConfig = field(default_factory=CacConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    followup: FollowupConfig = field(default_factory=FollowupConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    hl7: Hl7Config = field(default_factory=Hl7Config)
    fhir: FhirConfig = field(default_factory=FhirConfig)
    stow: StowConfig = field(default_factory=StowConfig)
    source: str = field(default="embedded defaults", compare=False)

    @property
    def key_dir(self) -> Path:
        return self.keys.dir if self.keys.dir is not None else self.storage.data_dir / "keys"


# ---------------------------------------------------------------------------------------------
# Loading


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _coerce(tp: Any, raw: Any, from_env: bool) -> Any:
    """Turn a TOML or environment value into ``tp``; raise ValueError with a readable reason."""
    optional, tp = _is_optional(tp)
    if optional and (raw is None or (isinstance(raw, str) and raw == "")):
        return None
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if from_env and isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON list, e.g. '[\"A\", \"B\"]' ({exc.msg})") from None
        if not isinstance(raw, list):
            raise ValueError(f"expected a list, got {type(raw).__name__}")
        return [_coerce(item_tp, item, False) for item in raw]
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str) and raw.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return raw.lower() in {"1", "true", "yes", "on"}
        raise ValueError(f"expected true or false, got {raw!r}")
    if tp is int:
        if isinstance(raw, bool):
            raise ValueError(f"expected an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if from_env and isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
            return int(raw)
        raise ValueError(f"expected an integer, got {raw!r}")
    if tp is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if from_env and isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {raw!r}")
    if tp is str:
        if isinstance(raw, str):
            return raw
        raise ValueError(f"expected a string, got {raw!r}")
    if tp is Path:
        if isinstance(raw, str) and raw:
            return Path(raw).expanduser()
        raise ValueError(f"expected a path string, got {raw!r}")
    raise TypeError(f"unsupported config type {tp!r}")  # programming error, not operator error


def _build_section(
    cls: type, values: Mapping[str, tuple[Any, str, bool]], section: str, base_dir: Path | None
) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        raw, source, from_env = values[f.name]
        key = f"[{section}] {f.name}"
        try:
            value = _coerce(hints[f.name], raw, from_env)
        except ValueError as exc:
            raise ConfigError(source, key, str(exc)) from None
        if isinstance(value, Path) and not value.is_absolute() and base_dir is not None:
            value = (base_dir / value).resolve()
        check = f.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(source, key, f"{problem} (got {value!r})")
        kwargs[f.name] = value
    section_obj = cls(**kwargs)
    if base_dir is not None:  # relative defaults (e.g. data_dir) also follow the config file
        for f in dataclasses.fields(cls):
            value = getattr(section_obj, f.name)
            if isinstance(value, Path) and not value.is_absolute():
                section_obj = dataclasses.replace(section_obj, **{f.name: (base_dir / value).resolve()})
    return section_obj


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name != "source"}


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (or the embedded defaults when None), then apply ``SITE_CONNECTOR__*`` overrides.

    Raises :class:`ConfigError` with one readable line for any problem.
    """
    environ = os.environ if environ is None else environ
    sections = _section_types()
    gathered: dict[str, dict[str, tuple[Any, str, bool]]] = {name: {} for name in sections}
    base_dir: Path | None = None
    source = "embedded defaults"

    if path is not None:
        path = Path(path).expanduser()
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(source, "file", "not found") from None
        except PermissionError:
            raise ConfigError(source, "file", "not readable (permission denied)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "syntax", str(exc)) from None
        base_dir = path.resolve().parent
        for section, table in data.items():
            if section not in sections:
                raise ConfigError(source, f"[{section}]", f"unknown section (known: {', '.join(sections)})")
            if not isinstance(table, dict):
                raise ConfigError(source, f"[{section}]", "must be a table")
            known = {f.name for f in dataclasses.fields(sections[section])}
            for key, value in table.items():
                if key not in known:
                    raise ConfigError(source, f"[{section}] {key}", f"unknown key (known: {', '.join(sorted(known))})")
                gathered[section][key] = (value, source, False)

    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].split("__")
        env_source = f"environment {name}"
        if len(parts) != 2:
            raise ConfigError(env_source, name, "expected SITE_CONNECTOR__<SECTION>__<KEY>")
        section, key = parts[0].lower(), parts[1].lower()
        if section not in sections:
            raise ConfigError(env_source, f"[{section}]", "unknown section")
        if key not in {f.name for f in dataclasses.fields(sections[section])}:
            raise ConfigError(env_source, f"[{section}] {key}", "unknown key")
        gathered[section][key] = (value, env_source, True)

    built = {
        name: _build_section(cls, gathered[name], name, base_dir if base_dir else Path.cwd())
        for name, cls in sections.items()
    }
    config = Config(**built, source=source)
    _cross_checks(config)
    return config


def _cross_checks(config: Config) -> None:
    tls = (config.dicom.tls_cert_file, config.dicom.tls_key_file)
    if any(tls) and not all(tls):
        raise ConfigError(config.source, "[dicom] tls_cert_file/tls_key_file", "set both or neither")
    pacs_problem = _pacs_cross_check(config.pacs)
    if pacs_problem:
        key, _, problem = pacs_problem.partition(": ")
        raise ConfigError(config.source, f"[pacs] {key}", problem)
    stow_problem = _stow_cross_check(config.stow)
    if stow_problem:
        key, _, problem = stow_problem.partition(": ")
        raise ConfigError(config.source, f"[stow] {key}", problem)
    if config.results.return_to_pacs and not config.pacs.configured:
        raise ConfigError(config.source, "[results] return_to_pacs", "needs [pacs] host and ae_title (where to send)")
    for section in ("hl7", "fhir"):  # a feed's deaths carry this code: one the follow-up import accepts
        if getattr(config, section).source not in config.followup.sources:
            raise ConfigError(config.source, f"[{section}] source", "must be one of [followup] sources")


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The file chosen by ``-c``, else ``$SITE_CONNECTOR_CONFIG``, else None (embedded defaults)."""
    environ = os.environ if environ is None else environ
    if cli_path:
        return Path(cli_path)
    if environ.get(ENV_CONFIG_FILE):
        return Path(environ[ENV_CONFIG_FILE])
    return None


def render_template(values: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A TOML config with every key: chosen ``values`` set, the rest commented out at their defaults.

    Generated from the dataclasses, so ``init``'s output and ``service/connector.example.toml``
    can never drift from what the loader accepts.
    """
    values = values or {}
    lines = ["# site-connector configuration. Every key is listed; a commented key shows its default.",
             "# Any key can be overridden from the environment: SITE_CONNECTOR__<SECTION>__<KEY>.",
             "# Relative paths are relative to this file's folder.", ""]
    for section, cls in _section_types().items():
        lines.append(f"[{section}]")
        chosen = values.get(section, {})
        for f in dataclasses.fields(cls):
            doc = f.metadata.get("doc") or ""
            if doc:
                lines.append(f"# {doc}")
            if f.name in chosen:
                lines.append(f"{f.name} = {_toml_value(chosen[f.name])}")
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                shown = "" if default is None else _toml_value(default)
                lines.append(f"# {f.name} = {shown}".rstrip())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
