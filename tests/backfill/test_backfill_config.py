"""[pacs] and [backfill] sections: defaults, validation with one readable line, TLS combinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import ConfigError, load_config
from connector.pacs.scu import calling_ae, client_tls_context, move_destination


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):
    path = tmp_path / "connector.toml"
    path.write_text(text)
    return load_config(path, environ=environ or {})


def test_defaults_no_pacs_and_a_night_window() -> None:
    cfg = load_config(None, environ={})
    assert not cfg.pacs.configured and cfg.pacs.retrieve == "move"
    assert cfg.backfill.window == "20:00-06:00" and cfg.backfill.max_concurrent == 2 and not cfg.backfill.daily
    assert calling_ae(cfg) == cfg.dicom.ae_title == move_destination(cfg)
    assert client_tls_context(cfg.pacs) is None
    assert cfg.pacs.range_queries and cfg.pacs.max_results == 500  # adaptive range query by default
    assert (cfg.backfill.series_threshold, cfg.backfill.series_in_flight) == (1000, 2)


def test_pacs_and_backfill_sections_load(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[dicom]\nae_title = "US"\n[pacs]\nhost = "10.0.0.5"\nport = 4242\nae_title = "PACS1"\n'
                'retrieve = "get"\ncalling_ae_title = "USQR"\n[backfill]\nwindow = "21:30-05:00"\nmax_concurrent = 4\n'
                'instances_per_minute = 600\ndaily = true\nmodalities = ["PT", "CT"]\ndescription = "cardiac"\n')
    assert cfg.pacs.configured and (cfg.pacs.host, cfg.pacs.port, cfg.pacs.retrieve) == ("10.0.0.5", 4242, "get")
    assert calling_ae(cfg) == "USQR" and move_destination(cfg) == "US"
    assert cfg.backfill.instances_per_minute == 600 and cfg.backfill.modalities == ["PT", "CT"]
    env = {"SITE_CONNECTOR__PACS__RETRIEVE": "move", "SITE_CONNECTOR__BACKFILL__WINDOW": ""}
    cfg = _load(tmp_path, '[pacs]\nhost = "h"\nae_title = "P"\nretrieve = "get"\n', env)
    assert cfg.pacs.retrieve == "move" and cfg.backfill.window == ""


@pytest.mark.parametrize("text, key", [
    ('[pacs]\nretrieve = "copy"\n', "[pacs] retrieve"),
    ('[pacs]\nhost = "h"\n', "[pacs] ae_title"),
    ('[pacs]\nae_title = "A\\\\B"\n', "[pacs] ae_title"),
    ('[pacs]\nport = 0\n', "[pacs] port"),
    ('[pacs]\nmax_results = -1\n', "[pacs] max_results"),
    ('[pacs]\nrange_queries = "no"\n', "[pacs] range_queries"),
    ('[pacs]\nhost = "h"\nae_title = "P"\ntls_cert_file = "c.pem"\ntls = true\n', "[pacs] tls_cert_file/tls_key_file"),
    ('[pacs]\nhost = "h"\nae_title = "P"\ntls_ca_file = "ca.pem"\n', "[pacs] tls"),
    ('[backfill]\nwindow = "8-18"\n', "[backfill] window"),
    ('[backfill]\nmax_concurrent = 0\n', "[backfill] max_concurrent"),
    ('[backfill]\nseries_in_flight = 9\n', "[backfill] series_in_flight"),
    ('[backfill]\nseries_threshold = -1\n', "[backfill] series_threshold"),
    ('[backfill]\ndescription = "("\n', "[backfill] description"),
    ('[backfill]\nmodalities = ["pet scan"]\n', "[backfill] modalities"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert info.value.key == key, str(info.value)


def test_tls_context_verifies_the_pacs(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[pacs]\nhost = "pacs.example"\nae_title = "P"\ntls = true\n')
    ctx = client_tls_context(cfg.pacs)
    assert ctx is not None and ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"


def test_unloadable_tls_files_are_one_readable_error(tmp_path: Path) -> None:
    from connector.pacs.scu import PacsTlsError

    cfg = _load(tmp_path, '[pacs]\nhost = "h"\nae_title = "P"\ntls = true\ntls_ca_file = "missing.pem"\n')
    with pytest.raises(PacsTlsError, match=r"\[pacs\] tls_ca_file cannot be loaded \(No such file"):
        client_tls_context(cfg.pacs)
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    cfg = _load(tmp_path, '[pacs]\nhost = "h"\nae_title = "P"\ntls = true\ntls_cert_file = "bad.pem"\n'
                'tls_key_file = "bad.pem"\n')
    with pytest.raises(PacsTlsError, match="tls_cert_file/tls_key_file cannot be loaded"):
        client_tls_context(cfg.pacs)
