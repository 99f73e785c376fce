"""Start-up checks: every problem an operator can fix is found before anything runs, as one line.

Each check raises :class:`DaemonStartError` whose message says what failed and how to fix it, and
whose ``code`` is the exit code (2: change the configuration, a file or a permission; 1: restarting
may help). The supervisor (:mod:`connector.daemon`) runs them in order, side-effect-free ones first.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl

from connector.config import Config
from connector.store.layout import SiteLayout

log = logging.getLogger(__name__)

EXIT_FAILURE = 1  # as connector.cli.exitcodes: restarting may help (port taken, damaged database)
EXIT_CONFIG = 2  # the operator must change the configuration, a file or a permission first


class DaemonStartError(Exception):
    """The daemon cannot run. ``str()`` is one line: what failed and how to fix it; ``code`` the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def reason_of(exc: BaseException) -> str:
    """A short, value-free reason for an OS or library error (no paths: the caller names the file)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_data_dir(config: Config, layout: SiteLayout) -> None:
    data_dir = config.storage.data_dir
    try:
        layout.ensure()
        for folder in (layout.state_db.parent, layout.partial, layout.incoming,
                       layout.outgoing):
            probe = folder / f".write-test-{os.getpid()}"
            with open(probe, "wb") as fh:
                fh.write(b"\0")
                os.fsync(fh.fileno())
            probe.unlink()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DaemonStartError(f"data folder {data_dir} is full ({reason_of(exc)}): free space on its "
                                   "disk (the spool, quarantine) and start again") from None
        raise DaemonStartError(
            f"data folder {data_dir} is not writable ({reason_of(exc)}): give the service user ownership "
            f"(chown -R site-connector: {data_dir}) or set [storage] data_dir to a writable folder",
            EXIT_CONFIG) from None

def check_keys(config: Config) -> None:
    from connector.linkage import LinkageError, LinkageKeyError

    try:
        check_site_keys(config)
    except LinkageKeyError as exc:  # wrong, missing or unsafe key: fixing it needs the operator
        raise DaemonStartError(f"linkage key problem: {exc} ([keys] dir, [linkage] key_file or "
                               "key_source; 'site-connector linkage check' explains more)", EXIT_CONFIG) from None
    except LinkageError as exc:
        raise DaemonStartError(f"linkage table problem: {exc} ('site-connector linkage check' explains more)",
                               EXIT_FAILURE) from None
    except OSError as exc:
        raise DaemonStartError(f"linkage key or table not readable ({reason_of(exc)}): check [keys] dir and "
                               "[linkage] db_path, and that the service user owns them", EXIT_CONFIG) from None

def check_registry_token(config: Config) -> None:
    """A token file others can read is refused, as the site key is: whoever reads it can push as the site."""
    from connector.push.client import TokenFileUnsafe, check_token_file

    try:
        check_token_file(config.registry)
    except TokenFileUnsafe as exc:
        raise DaemonStartError(str(exc), EXIT_CONFIG) from None

def check_stow(config: Config) -> None:
    """[stow]: its port free, its TLS files loadable, its token file private (as the registry's)."""
    from connector.ingest.stow_auth import TokenFileUnsafe, check_token_file, tls_context

    cfg = config.stow
    try:
        tls_context(cfg)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise DaemonStartError(
            f"STOW-RS TLS files cannot be loaded ({reason_of(exc)}): [stow] tls_cert_file and tls_key_file must "
            "be a PEM certificate and its matching private key (tls_ca_file a PEM CA bundle), readable by "
            "the service user", EXIT_CONFIG) from None
    try:
        check_token_file(cfg)
    except TokenFileUnsafe as exc:
        raise DaemonStartError(str(exc), EXIT_CONFIG) from None
    check_port("STOW-RS", cfg.host, cfg.port, "[stow] port", "[stow] host")

def check_deid(config: Config) -> None:
    """Rule files and the free-text vocabulary load, so a typo stops the start, not each study."""
    from connector.deid.profile import load_profile
    from connector.deid.rulefile import RuleFileError
    from connector.deid.rule_sources import rule_paths, vocabulary_files
    from connector.vocabulary import VocabularyError, load_vocabulary

    try:
        load_profile(rule_paths(config))
    except RuleFileError as exc:
        first = exc.problems[0] if exc.problems else "unreadable"
        raise DaemonStartError(f"de-identification rules have errors: {first} ('site-connector rules check "
                               "FILE' lists them all; [deid] rules)", EXIT_CONFIG) from None
    try:
        load_vocabulary(config.deid.extra_vocabulary, vocabulary_files(config))
    except VocabularyError as exc:
        raise DaemonStartError(f"free-text vocabulary: {exc} ([deid] extra_vocabulary, vocabulary_files)",
                               EXIT_CONFIG) from None

def check_results_model(config: Config) -> None:
    """[results] return_to_pacs sends CAC results into the patient's record: only from a model whose
    manifest says it is validated for clinical use, unless the site overrides it for research use."""
    from connector.infer.errors import ModelError
    from connector.infer.manifest import BUNDLED_MODEL_DIR, load_manifest

    cfg = config
    if not (cfg.results.return_to_pacs and cfg.cac.enabled) or cfg.results.allow_unvalidated_model:
        return
    model_dir = cfg.cac.model_dir or BUNDLED_MODEL_DIR
    try:
        manifest = load_manifest(model_dir)
    except ModelError as exc:
        raise DaemonStartError(f"[results] return_to_pacs: cannot tell whether the CAC model is validated "
                               f"({reason_of(exc)}): fix [cac] model_dir or turn return_to_pacs off",
                               EXIT_CONFIG) from None
    if not manifest.validated_for_clinical_use:
        raise DaemonStartError(
            f"[results] return_to_pacs refused: the CAC model {manifest.name} {manifest.version} is not validated "
            "for clinical use (its manifest says validated_for_clinical_use: false): set [cac] model_dir to a "
            "validated model, turn return_to_pacs off, or, for research use only, set [results] "
            "allow_unvalidated_model = true", EXIT_CONFIG)

def check_dicom_tls(config: Config) -> None:
    from connector.ingest.scp import tls_context

    try:
        tls_context(config.dicom)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise DaemonStartError(
            f"DICOM TLS files cannot be loaded ({reason_of(exc)}): [dicom] tls_cert_file and tls_key_file must "
            "be a PEM certificate and its matching private key (tls_ca_file a PEM CA bundle), readable by "
            "the service user", EXIT_CONFIG) from None

def check_hl7_tls(config: Config) -> None:
    from connector.hl7.listener import tls_context as hl7_tls_context

    try:
        hl7_tls_context(config)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise DaemonStartError(
            f"HL7 TLS files cannot be loaded ({reason_of(exc)}): [hl7] tls_cert_file and tls_key_file must be a "
            "PEM certificate and its private key (tls_ca_file a PEM CA bundle)", EXIT_CONFIG) from None

def check_port(what: str, host: str, port: int, port_key: str, host_key: str) -> None:
    """Bind the port once, alone (no SO_REUSEPORT), so another listener of any kind is found now."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise DaemonStartError(f"{host_key} {host!r} is not an address of this server ({reason_of(exc)}): set "
                               f"{host_key} to one of its addresses, or 0.0.0.0", EXIT_CONFIG) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real listeners: TIME_WAIT is fine
        try:
            sock.bind(address)
            sock.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                who = {"DICOM": "storescp, Orthanc", "HL7": "an MLLP listener"}.get(what, "a web server")
                raise DaemonStartError(
                    f"{what} port {port} is already in use by another program (another site-connector, "
                    f"{who}?): stop it, or set {port_key} to a free port "
                    f"(ss -ltnp 'sport = :{port}' shows who holds it)") from None
            if exc.errno == errno.EACCES:
                raise DaemonStartError(
                    f"{what} port {port} is privileged: grant CAP_NET_BIND_SERVICE (the systemd unit does) "
                    f"or set {port_key} above 1023", EXIT_CONFIG) from None
            raise DaemonStartError(f"cannot listen on {what} {host}:{port} ({reason_of(exc)}): check {host_key} "
                                   f"and {port_key}", EXIT_CONFIG) from None


def check_site_keys(config: Config) -> None:
    """Open (and on a brand-new site, create) the linkage key once, so key problems stop start-up.

    A key file is created only when neither it nor a linkage table exists (first start of the
    embedded default). A missing key with an existing table is an error: a new key could never
    read it.
    """
    from connector.linkage import create_key_file, open_identity_provider
    from connector.linkage.paths import resolved_paths

    paths = resolved_paths(config)
    if config.linkage.key_source == "file" and not paths.key_file.exists() and not paths.db.exists():
        create_key_file(paths.key_file)
        log.warning("created a new site key file; back it up separately from the data",
                    extra={"event": "key_created"})
    open_identity_provider(config).close()
