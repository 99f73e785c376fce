"""The ``[registry]`` configuration section: where to push, how to authenticate, how gently to send.

```toml
[registry]
url = "https://registry.example.org"   # alone, gives <url>/dicomweb for images and <url> for the JSON API
token_file = "/etc/site-connector/registry.token"
upload_window = "19:00-07:00"           # optional: send only in the evening and at night (local time)
bandwidth_limit = 5000000               # optional: bytes per second, all requests together
```

Why one ``url``: the registry team hands out one address; ``dicomweb_url`` and ``api_url`` exist for
registries that split images and JSON across hosts. With every URL empty the connector pushes to
the dev registry on ``http://127.0.0.1:8042`` (``site-connector registry serve``), the embedded
default used by the demo.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting

DEV_REGISTRY_URL = "http://127.0.0.1:8042"
# Bounds on what is read of a registry's answer (issue 24): far above what a conforming registry sends
# (a STOW-RS answer for a 50-instance batch is about 20 kB; a QIDO-RS list of 5,000 instances about 10 MB).
MAX_RESPONSE_BYTES = 1024**2
RECONCILE_MAX_RESPONSE_BYTES = 32 * 1024**2
TOKEN_ENV = "SITE_CONNECTOR_REGISTRY_TOKEN"
COMPRESSIONS = ("none", "gzip")
_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def _valid_url(value: str) -> bool:
    return value == "" or bool(re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value))


@dataclass(frozen=True)
class UploadWindow:
    """A daily local-time window such as 19:00-07:00 (it may cross midnight); empty = always open."""

    start_minute: int
    end_minute: int

    @classmethod
    def parse(cls, text: str) -> UploadWindow | None:
        text = text.strip()
        if not text:
            return None
        m = _WINDOW_RE.match(text)
        if not m:
            raise ValueError("expected HH:MM-HH:MM, e.g. 19:00-07:00")
        start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
        if start == end:
            raise ValueError("start and end must differ (leave empty for always open)")
        return cls(start, end)

    def is_open(self, when: dt.datetime) -> bool:
        minute = when.hour * 60 + when.minute
        if self.start_minute < self.end_minute:
            return self.start_minute <= minute < self.end_minute
        return minute >= self.start_minute or minute < self.end_minute

    def seconds_until_open(self, when: dt.datetime) -> float:
        """0 when open, else seconds until the window next opens."""
        if self.is_open(when):
            return 0.0
        opens = when.replace(hour=self.start_minute // 60, minute=self.start_minute % 60, second=0, microsecond=0)
        if opens <= when:
            opens += dt.timedelta(days=1)
        return (opens - when).total_seconds()


def valid_window(value: str) -> bool:
    """True for an empty window or HH:MM-HH:MM (the upload and backfill windows share the format)."""
    try:
        UploadWindow.parse(value)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class RegistryConfig:
    url: str = setting("", check(_valid_url, "must be an http(s) URL without query, or empty"),
                       doc="registry base URL given by the registry team; empty = dev registry on "
                           + DEV_REGISTRY_URL)
    dicomweb_url: str = setting("", check(_valid_url, "must be an http(s) URL without query, or empty"),
                                doc="STOW-RS base (default <url>/dicomweb)")
    api_url: str = setting("", check(_valid_url, "must be an http(s) URL without query, or empty"),
                           doc="JSON API base (default <url>)")
    token_file: Path | None = setting(None, doc=f"file holding the registry bearer token (mode 0600); "
                                                f"unset = environment variable {TOKEN_ENV}")
    verify_tls: bool = setting(True, doc="verify the registry's TLS certificate; turn off only for a lab test")
    ca_bundle: Path | None = setting(None, doc="PEM CA bundle to verify the registry with (default: system CAs)")
    client_cert: Path | None = setting(None, doc="PEM client certificate for mutual TLS")
    client_key: Path | None = setting(None, doc="PEM private key of client_cert (unset = inside client_cert)")
    batch_max_instances: int = setting(50, check(lambda v: 1 <= v <= 10_000, "must be between 1 and 10000"),
                                       doc="at most this many instances per STOW-RS request")
    batch_max_bytes: int = setting(64 * 1024**2, check(lambda v: v >= 1024**2, "must be at least 1 MiB"),
                                   doc="at most this many bytes per STOW-RS request (a larger single file goes alone)")
    concurrency: int = setting(3, check(lambda v: 1 <= v <= 8, "must be between 1 and 8"),
                               doc="requests in flight at once")
    upload_window: str = setting("", check(valid_window, "must be HH:MM-HH:MM (local time) or empty"),
                                 doc="send only inside this daily local-time window, e.g. \"19:00-07:00\"; "
                                     "empty = any time")
    bandwidth_limit: int = setting(0, check(lambda v: v >= 0, "must be zero or more"),
                                   doc="upload cap in bytes per second over all requests; 0 = no cap")
    compression: str = setting("none", check(lambda v: v in COMPRESSIONS, "must be \"none\" or \"gzip\""),
                               doc="lossless compression of request bodies on the wire (Content-Encoding); "
                                   "\"gzip\" needs a registry that accepts it")
    retention_hours: float = setting(0.0, check(lambda v: v >= 0 or v == -1, "must be zero or more, or -1"),
                                     doc="keep the local de-identified copy this long after the registry "
                                         "acknowledged it; 0 = remove at once, -1 = keep")
    timeout_seconds: float = setting(300.0, check(lambda v: v > 0, "must be positive"),
                                     doc="seconds without progress before a request is abandoned and retried")
    backoff_min_seconds: float = setting(5.0, check(lambda v: v > 0, "must be positive"),
                                         doc="first retry delay; doubles (with jitter) per failure")
    backoff_max_seconds: float = setting(1800.0, check(lambda v: v > 0, "must be positive"),
                                         doc="longest retry delay")
    lease_seconds: float = setting(600.0, check(lambda v: v >= 10, "must be at least 10"),
                                   doc="a job held this long by a worker that stopped renewing it is taken again")
    poll_seconds: float = setting(1.0, check(lambda v: v > 0, "must be positive"),
                                  doc="how often the outbox is looked at when idle")
    reconcile_interval_minutes: float = setting(60.0, check(lambda v: v >= 0, "must be zero or more"),
                                                doc="ask the registry this often what it holds for each pushed "
                                                    "study and re-send what is missing; 0 = off (the "
                                                    "reconcile command still works)")
    reconcile_recheck_days: float = setting(7.0, check(lambda v: v >= 0, "must be zero or more"),
                                            doc="the scheduled reconciliation also checks verified studies again "
                                                "once they were verified this many days ago (a registry can lose "
                                                "data later); 0 = never")
    max_response_bytes: int = setting(MAX_RESPONSE_BYTES, check(lambda v: 64 * 1024 <= v <= 1024**3,
                                                                 "must be between 65536 and 1073741824"),
                                      doc="longest registry answer read to an upload or a JSON API request; "
                                          "a longer one is not read and the job fails with response-too-large "
                                          "(a STOW-RS answer takes about 450 bytes per instance: raise this "
                                          "with batch_max_instances above 2000)")
    reconcile_max_response_bytes: int = setting(RECONCILE_MAX_RESPONSE_BYTES,
                                                check(lambda v: 64 * 1024 <= v <= 1024**3,
                                                      "must be between 65536 and 1073741824"),
                                                doc="longest registry answer read while reconciling (a QIDO-RS "
                                                    "instance list of one series, a stored manifest); a longer "
                                                    "one is not read and the study's reconciliation fails")

    # -- derived values ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return (self.url or DEV_REGISTRY_URL).rstrip("/")

    @property
    def resolved_dicomweb_url(self) -> str:
        """STOW-RS/QIDO-RS base, without trailing slash."""
        return (self.dicomweb_url or self.base_url + "/dicomweb").rstrip("/")

    @property
    def resolved_api_url(self) -> str:
        """JSON API base, without trailing slash (paths start with /api/v1)."""
        return (self.api_url or self.base_url).rstrip("/")

    @property
    def window(self) -> UploadWindow | None:
        return UploadWindow.parse(self.upload_window)

    @property
    def uses_dev_registry(self) -> bool:
        return not (self.url or self.dicomweb_url or self.api_url)
